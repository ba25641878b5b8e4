namespace MoFO.Data;

/// <summary>Malformed input data: the message names the file, the line (when known), and what was expected.</summary>
public sealed class DataFormatException : FormatException, IRemedy
{
    public string File { get; }
    public int? Line { get; }

    /// <summary>The option that would avoid the error (e.g. <c>skipEmpty</c>), or null.</summary>
    public string? Remedy { get; set; }

    /// <summary>Sets <see cref="Remedy"/> and returns this exception (for throw expressions).</summary>
    public DataFormatException WithRemedy(string remedy) { Remedy = remedy; return this; }

    public DataFormatException(string file, int? line, string problem, Exception? inner = null)
        : base(line is null ? $"{file}: {problem}" : $"{file}:{line}: {problem}", inner)
    {
        File = file;
        Line = line;
    }
}
