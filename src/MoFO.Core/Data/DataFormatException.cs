namespace MoFO.Data;

/// <summary>Malformed input data: the message names the file, the line (when known), and what was expected.</summary>
public sealed class DataFormatException : FormatException
{
    public string File { get; }
    public int? Line { get; }

    public DataFormatException(string file, int? line, string problem, Exception? inner = null)
        : base(line is null ? $"{file}: {problem}" : $"{file}:{line}: {problem}", inner)
    {
        File = file;
        Line = line;
    }
}
