using System.IO.Compression;
using System.Text;

namespace MoFO.Data;

/// <summary>
/// Text data files read as strict UTF-8: a byte sequence that is not UTF-8 is a <see cref="DataFormatException"/>
/// naming the file, the line and the byte offset — never a silent U+FFFD in the training text. A UTF-8 byte-order mark
/// is skipped; ".gz" files are decompressed.
/// </summary>
public static class TextFiles
{
    static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>A reader of the file (decompressed when it ends in ".gz") that throws <see cref="DecoderFallbackException"/>
    /// on bytes that are not UTF-8; <see cref="Guard{T}"/> turns that into an error naming the line.</summary>
    public static StreamReader OpenText(string path)
    {
        Stream s = File.OpenRead(path);
        if (path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)) s = new GZipStream(s, CompressionMode.Decompress);
        return new StreamReader(s, Strict, detectEncodingFromByteOrderMarks: false);
    }

    public static string ReadAllText(string path) => Guard(path, () => { using var r = OpenText(path); return StripBom(r.ReadToEnd()); });

    public static string[] ReadAllLines(string path) => Guard(path, () =>
    {
        using var r = OpenText(path);
        var lines = new List<string>();
        string? line;
        while ((line = r.ReadLine()) is not null) lines.Add(lines.Count == 0 ? StripBom(line) : line);
        return lines.ToArray();
    });

    static string StripBom(string s) => s.Length > 0 && s[0] == '\uFEFF' ? s[1..] : s;

    /// <summary>Runs a read; a decoding failure becomes a <see cref="DataFormatException"/> at the first invalid byte's line
    /// (found by scanning the bytes: a reader decodes ahead of the line it returns).</summary>
    public static T Guard<T>(string path, Func<T> read)
    {
        try { return read(); }
        catch (DecoderFallbackException e) { throw InvalidUtf8(path, e); }
    }

    /// <summary>The error for a file that is not valid UTF-8: its first invalid byte's line and offset.</summary>
    public static DataFormatException InvalidUtf8(string path, Exception? inner = null)
    {
        byte[] bytes;
        using (var s = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase)
                   ? (Stream)new GZipStream(File.OpenRead(path), CompressionMode.Decompress) : File.OpenRead(path))
        using (var m = new MemoryStream())
        {
            s.CopyTo(m);
            bytes = m.ToArray();
        }
        int line = 1;
        var span = bytes.AsSpan();
        for (int i = 0; i < span.Length;)
        {
            var status = Rune.DecodeFromUtf8(span[i..], out _, out int used);
            if (status != System.Buffers.OperationStatus.Done)
                return new DataFormatException(path, line, $"not valid UTF-8 (byte 0x{span[i]:X2} at offset {i}); re-encode the file as UTF-8", inner);
            if (span[i] == (byte)'\n') line++;
            i += used;
        }
        return new DataFormatException(path, null, "not valid UTF-8; re-encode the file as UTF-8", inner);
    }
}
