using System.Text.Json;
using MoFO.Data;

namespace MoFO.Evaluation;

/// <summary>
/// A user's multiple-choice task as jsonl, one item a line: the context in <c>question</c> (or <c>context</c>,
/// <c>query</c>), the choices in <c>choices</c> (array of strings), and the answer in <c>answer</c> (or <c>label</c>,
/// <c>gold</c>) as a 0-based index, a letter A, B, … or the text of the correct choice. The context is used verbatim;
/// each choice is scored after a single space.
/// </summary>
public static class McJsonl
{
    static string? First(JsonLine l, params string[] names) =>
        names.FirstOrDefault(l.Has);

    public static List<McItem> Read(string path)
    {
        var items = new List<McItem>();
        foreach (var l in JsonLines.Read(path))
        {
            var ctxField = First(l, "question", "context", "query") ?? throw l.Error("missing the context: expected a string field \"question\", \"context\" or \"query\"");
            var context = l.String(ctxField);
            var ch = l.Field("choices");
            if (ch.ValueKind != JsonValueKind.Array || ch.GetArrayLength() < 2 || ch.EnumerateArray().Any(c => c.ValueKind != JsonValueKind.String))
                throw l.Error("field \"choices\" must be an array of at least two strings");
            var choices = ch.EnumerateArray().Select(c => c.GetString()!).ToList();
            var ansField = First(l, "answer", "label", "gold") ?? throw l.Error("missing the answer: expected \"answer\", \"label\" or \"gold\"");
            var a = l.Field(ansField);
            int gold = a.ValueKind switch
            {
                JsonValueKind.Number => a.GetInt32(),
                JsonValueKind.String when a.GetString()!.Length == 1 && char.IsAsciiLetterUpper(a.GetString()![0]) => a.GetString()![0] - 'A',
                JsonValueKind.String => choices.IndexOf(a.GetString()!),
                _ => -1,
            };
            if (gold < 0 || gold >= choices.Count)
                throw l.Error($"\"{ansField}\" = {a.GetRawText()} names no choice (expected an index 0..{choices.Count - 1}, a letter, or a choice's text)");
            var id = l.Has("id") ? l.Field("id").ToString() : $"line{l.Line}";
            items.Add(new McItem(id, context, choices, gold));
        }
        return items;
    }
}
