namespace MoFO.Data;

/// <summary>A GSM8K problem: the question and the full worked answer ending in "#### number".</summary>
public sealed record Gsm8kItem(string Id, string Question, string Answer);

/// <summary>GSM8K's records (jsonl with "question" and "answer") and its question format ("Question: …\nAnswer:"), for
/// fine-tuning on its train split and for the harness (<c>Evaluation.Gsm8k</c>).</summary>
public static class Gsm8kData
{
    /// <summary>The problems of a GSM8K jsonl file; an answer without "#### " is an error naming the file and line.</summary>
    public static List<Gsm8kItem> Read(string path)
    {
        var items = new List<Gsm8kItem>();
        foreach (var l in JsonLines.Read(path))
        {
            var q = l.String("question");
            var a = l.String("answer");
            if (!a.Contains("#### ")) throw l.Error("field \"answer\" must end with \"#### <number>\"");
            items.Add(new Gsm8kItem($"{Path.GetFileNameWithoutExtension(path)}/{l.Line}", q, a));
        }
        return items;
    }

    /// <summary>The harness's question prompt.</summary>
    public static string FormatQuestion(string question) => $"Question: {question}\nAnswer:";
}
