using System.IO.Compression;
using System.Text.Json;

namespace MoFO.Data;

/// <summary>One parsed line of a JSON-lines file, with where it came from (for error messages).</summary>
public readonly record struct JsonLine(string File, int Line, JsonElement Value)
{
    /// <summary>A string field; a clear error naming file, line and field when it is missing or not a string.</summary>
    public string String(string field)
    {
        if (Value.ValueKind != JsonValueKind.Object || !Value.TryGetProperty(field, out var v))
            throw Error($"missing field \"{field}\" (expected a JSON object with a string field \"{field}\")");
        if (v.ValueKind != JsonValueKind.String) throw Error($"field \"{field}\" must be a string, got {v.ValueKind}");
        return v.GetString()!;
    }

    /// <summary>A field of any kind; a clear error when it is missing.</summary>
    public JsonElement Field(string field)
    {
        if (Value.ValueKind != JsonValueKind.Object || !Value.TryGetProperty(field, out var v))
            throw Error($"missing field \"{field}\"");
        return v;
    }

    public bool Has(string field) => Value.ValueKind == JsonValueKind.Object && Value.TryGetProperty(field, out _);

    public DataFormatException Error(string problem) => new(File, Line, problem);
}

/// <summary>Reads JSON-lines files (plain or gzip-compressed, by the ".gz" suffix), skipping blank lines.</summary>
public static class JsonLines
{
    public static IEnumerable<JsonLine> Read(string path)
    {
        if (!System.IO.File.Exists(path)) throw new FileNotFoundException($"{System.IO.Path.GetFullPath(path)}: file not found", path);
        using var stream = OpenText(path);
        int lineNo = 0;
        string? line;
        while ((line = ReadLine(stream, path)) is not null)
        {
            lineNo++;
            if (lineNo == 1) line = line.TrimStart('\uFEFF');   // a UTF-8 byte-order mark
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonElement value;
            try
            {
                using var doc = JsonDocument.Parse(line);
                value = doc.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new DataFormatException(path, lineNo, $"not valid JSON ({e.Message})", e);
            }
            yield return new JsonLine(path, lineNo, value);
        }
    }

    /// <summary>Opens a text file as strict UTF-8, decompressing when the name ends in ".gz" (<see cref="TextFiles"/>).</summary>
    public static StreamReader OpenText(string path) => TextFiles.OpenText(path);

    static string? ReadLine(StreamReader r, string path) => TextFiles.Guard(path, r.ReadLine);
}
