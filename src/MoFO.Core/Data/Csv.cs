using System.Text;

namespace MoFO.Data;

/// <summary>An RFC 4180 CSV reader: quoted fields may hold commas, doubled quotes and newlines.</summary>
public static class Csv
{
    /// <summary>The records of a CSV file with the (1-based) line on which each record starts.</summary>
    public static IEnumerable<(int Line, string[] Fields)> Read(string path)
    {
        using var reader = TextFiles.OpenText(path);
        if (TextFiles.Guard(path, reader.Peek) == '\uFEFF') reader.Read();   // a UTF-8 byte-order mark
        var fields = new List<string>();
        var field = new StringBuilder();
        int line = 1, recordLine = 1;
        bool quoted = false, fieldStarted = false, any = false;
        int c;
        while ((c = TextFiles.Guard(path, reader.Read)) >= 0)
        {
            char ch = (char)c;
            if (quoted)
            {
                if (ch == '"')
                {
                    if (TextFiles.Guard(path, reader.Peek) == '"') { reader.Read(); field.Append('"'); }
                    else quoted = false;
                }
                else
                {
                    if (ch == '\n') line++;
                    field.Append(ch);
                }
                continue;
            }
            switch (ch)
            {
                case '"' when !fieldStarted:
                    quoted = true; fieldStarted = true; any = true;
                    break;
                case ',':
                    fields.Add(field.ToString()); field.Clear(); fieldStarted = false; any = true;
                    break;
                case '\r':
                    break;
                case '\n':
                    if (any || field.Length > 0)
                    {
                        fields.Add(field.ToString());
                        yield return (recordLine, fields.ToArray());
                    }
                    fields.Clear(); field.Clear(); fieldStarted = false; any = false;
                    line++; recordLine = line;
                    break;
                default:
                    field.Append(ch); fieldStarted = true; any = true;
                    break;
            }
        }
        if (quoted) throw new DataFormatException(path, recordLine, "unterminated quoted field");
        if (any || field.Length > 0)
        {
            fields.Add(field.ToString());
            yield return (recordLine, fields.ToArray());
        }
    }
}
