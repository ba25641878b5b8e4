using MoFO.Data;

namespace MoFO.Evaluation;

/// <summary>ARC-Easy / ARC-Challenge as in lm-evaluation-harness: "Question: {stem}\nAnswer:", the continuations are
/// the choice texts; gold is the choice whose label equals <c>answerKey</c> (labels are letters or digits).</summary>
public static class Arc
{
    public static List<McItem> Read(string path)
    {
        var items = new List<McItem>();
        foreach (var l in JsonLines.Read(path))
        {
            var id = l.Has("id") ? l.String("id") : $"line{l.Line}";
            var question = l.Field("question");
            if (question.ValueKind != System.Text.Json.JsonValueKind.Object || !question.TryGetProperty("stem", out var stem) || !question.TryGetProperty("choices", out var choices))
                throw l.Error("field \"question\" must be an object with \"stem\" and \"choices\"");
            var texts = new List<string>();
            var labels = new List<string>();
            foreach (var c in choices.EnumerateArray())
            {
                if (!c.TryGetProperty("text", out var t) || !c.TryGetProperty("label", out var lab))
                    throw l.Error("each choice needs \"text\" and \"label\"");
                texts.Add(t.GetString() ?? "");
                labels.Add(lab.ValueKind == System.Text.Json.JsonValueKind.Number ? lab.GetRawText() : lab.GetString() ?? "");
            }
            var key = l.Field("answerKey");
            var answer = key.ValueKind == System.Text.Json.JsonValueKind.Number ? key.GetRawText() : key.GetString() ?? "";
            int gold = labels.IndexOf(answer);
            if (gold < 0) throw l.Error($"answerKey '{answer}' is not one of the labels {string.Join(",", labels)}");
            items.Add(new McItem(id, $"Question: {stem.GetString()}\nAnswer:", texts, gold));
        }
        return items;
    }
}
