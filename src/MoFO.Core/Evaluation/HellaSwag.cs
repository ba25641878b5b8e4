using System.Text.Json;
using System.Text.RegularExpressions;
using MoFO.Data;

namespace MoFO.Evaluation;

/// <summary>HellaSwag in its public jsonl format (<c>activity_label, ctx_a, ctx_b, endings, label</c>) with
/// lm-evaluation-harness's preprocessing: the query is <c>preprocess(activity_label + ": " + ctx_a + " " +
/// capitalize(ctx_b))</c>, the choices are the preprocessed endings, scored with acc_norm in the paper.</summary>
public static partial class HellaSwag
{
    [GeneratedRegex(@"\[.*?\]")]
    private static partial Regex Bracketed();

    /// <summary>strip; " [title]" → ". "; drop "[...]"; "  " → " " (once, as the harness does).</summary>
    public static string Preprocess(string text)
    {
        text = text.Trim();
        text = text.Replace(" [title]", ". ");
        text = Bracketed().Replace(text, "");
        text = text.Replace("  ", " ");
        return text;
    }

    /// <summary>Python's <c>str.capitalize</c>: the first character upper-case, the rest lower-case.</summary>
    public static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    public static List<McItem> Read(string path)
    {
        var items = new List<McItem>();
        foreach (var l in JsonLines.Read(path))
        {
            var ctx = l.String("ctx_a") + " " + Capitalize(l.String("ctx_b"));
            var query = Preprocess(l.String("activity_label") + ": " + ctx);
            var endings = l.Field("endings");
            if (endings.ValueKind != JsonValueKind.Array) throw l.Error("field \"endings\" must be an array of strings");
            var choices = endings.EnumerateArray().Select(e => Preprocess(e.GetString() ?? "")).ToList();
            var label = l.Field("label");
            int gold = label.ValueKind == JsonValueKind.Number ? label.GetInt32()
                : int.TryParse(label.GetString(), out var g) ? g : throw l.Error($"label '{label}' must be an integer index");
            if (gold < 0 || gold >= choices.Count) throw l.Error($"label {gold} outside the {choices.Count} endings");
            var id = l.Has("ind") ? l.Field("ind").ToString() : $"line{l.Line}";
            items.Add(new McItem(id, query, choices, gold));
        }
        return items;
    }
}
