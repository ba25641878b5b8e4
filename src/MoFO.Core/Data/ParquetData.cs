using Parquet;
using Parquet.Serialization;

namespace MoFO.Data;

/// <summary>
/// Reads fine-tuning data from parquet, as HuggingFace datasets ship it: flat string columns (prompt/completion,
/// instruction/input/output, question/answer) or a Tulu <c>messages</c> column (a list of {role, content}).
/// </summary>
public static class ParquetData
{
    public sealed class MessageRow
    {
        public List<Message>? messages { get; set; }
    }

    public sealed class Message
    {
        public string? role { get; set; }
        public string? content { get; set; }
    }

    /// <summary>The string columns of every row, by column name (missing values as null).</summary>
    public static List<Dictionary<string, string?>> ReadStringColumns(string path)
    {
        using var stream = File.OpenRead(path);
        try
        {
            var reader = ParquetReader.CreateAsync(stream).GetAwaiter().GetResult();
            using var dispose = new AsyncDisposer(reader);
            var fields = reader.Schema.GetDataFields().Where(f => (f.ClrType == typeof(string) || f.ClrType == typeof(ReadOnlyMemory<char>)) && !f.IsArray && !f.Path.ToString()!.Contains('/') && !f.Path.ToString()!.Contains('.')).ToArray();
            var rows = new List<Dictionary<string, string?>>();
            for (int g = 0; g < reader.RowGroupCount; g++)
            {
                using var rg = reader.OpenRowGroupReader(g);
                int n = (int)rg.RowCount;
                var columns = fields.Select(f =>
                {
                    var data = new string?[n];
                    rg.ReadAsync(f, data.AsMemory(), null, CancellationToken.None).AsTask().GetAwaiter().GetResult();
                    return (f.Name, Data: data);
                }).ToArray();
                for (int r = 0; r < n; r++)
                    rows.Add(columns.ToDictionary(c => c.Name, c => c.Data[r]));
            }
            return rows;
        }
        catch (Exception e) when (e is not DataFormatException and not IOException)
        {
            throw new DataFormatException(path, null, $"cannot read as parquet: {e.Message}", e);
        }
    }

    /// <summary>The <c>messages</c> column of every row.</summary>
    public static List<List<ChatMessage>> ReadMessages(string path)
    {
        using var stream = File.OpenRead(path);
        IList<MessageRow> rows;
        try { rows = ParquetSerializer.DeserializeAsync<MessageRow>(stream).GetAwaiter().GetResult().Data; }
        catch (Exception e) { throw new DataFormatException(path, null, $"cannot read a \"messages\" column (a list of {{role, content}}): {e.Message}", e); }
        return rows.Select((r, i) => (r.messages ?? throw new DataFormatException(path, null, $"row {i}: no \"messages\""))
            .Select(m => new ChatMessage(m.role ?? throw new DataFormatException(path, null, $"row {i}: a message without \"role\""),
                                         m.content ?? throw new DataFormatException(path, null, $"row {i}: a message without \"content\"")))
            .ToList()).ToList();
    }

    sealed class AsyncDisposer(IAsyncDisposable inner) : IDisposable
    {
        public void Dispose() => inner.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    /// <summary>A string field of a row; a clear error naming the row and the columns that exist when it is missing.</summary>
    public static string Field(Dictionary<string, string?> row, string path, int index, params string[] names)
    {
        foreach (var n in names)
            if (row.TryGetValue(n, out var v) && v is not null) return v;
        throw new DataFormatException(path, null, $"row {index}: no string column {string.Join(" or ", names.Select(n => $"\"{n}\""))} (columns: {string.Join(", ", row.Keys)})");
    }
}
