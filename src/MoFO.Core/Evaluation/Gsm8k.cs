using System.Text.RegularExpressions;
using MoFO.Data;
using MoFO.Models;

namespace MoFO.Evaluation;

/// <summary>One scored generation: the raw text, both extractions and whether each matches.</summary>
public sealed record Gsm8kItemResult(string Id, string Generation, string Strict, string Flexible, string Target, bool StrictCorrect, bool FlexibleCorrect)
{
    /// <summary>The document (question and full answer) and the prompt the model was given (with its shots).</summary>
    public string Question { get; init; } = "";
    public string Answer { get; init; } = "";
    public string Prompt { get; init; } = "";
}

public sealed record Gsm8kSummary(int Shots, double StrictMatch, double FlexibleMatch, IReadOnlyList<Gsm8kItemResult> Items);

/// <summary>
/// GSM8K as lm-evaluation-harness's <c>gsm8k</c> task: items "Question: {question}\nAnswer:", few-shot examples
/// "Question: …\nAnswer: {full answer}" separated by "\n\n", greedy generation until "Question:", "&lt;/s&gt;" or
/// "&lt;|im_end|&gt;"; two filters — strict (first match of <c>#### (\-?[0-9\.\,]+)</c>) and flexible (last match
/// of <c>(-?[$0-9.,]{2,})|(-?[0-9]+)</c>) — and exact match after removing ",", "$", everything up to "#### ", and a
/// trailing "." from both sides (case-insensitive). A generation with no match extracts "[invalid]".
/// The 5 shots are drawn from the train split with a fixed seed (the same shots for every item; lm-evaluation-harness
/// draws with Python's RNG, so its shot set differs).
/// </summary>
public static partial class Gsm8k
{
    public const string Invalid = "[invalid]";
    public static readonly string[] StopStrings = ["Question:", "</s>", "<|im_end|>"];

    [GeneratedRegex(@"#### (\-?[0-9\.\,]+)")] private static partial Regex StrictRegex();
    [GeneratedRegex(@"(-?[$0-9.,]{2,})|(-?[0-9]+)")] private static partial Regex FlexibleRegex();
    [GeneratedRegex(@"(?s).*#### ")] private static partial Regex UpToHashes();
    [GeneratedRegex(@"\.$")] private static partial Regex TrailingPeriod();

    /// <summary>The prompt for an item after the given shots.</summary>
    public static string Prompt(Gsm8kItem item, IReadOnlyList<Gsm8kItem> shots) =>
        string.Concat(shots.Select(s => Gsm8kData.FormatQuestion(s.Question) + " " + s.Answer + "\n\n")) + Gsm8kData.FormatQuestion(item.Question);

    /// <summary>k examples of the pool drawn with a fixed seed.</summary>
    public static List<Gsm8kItem> Shots(IReadOnlyList<Gsm8kItem> pool, int k, int seed = 1234)
    {
        if (k > pool.Count) throw new ArgumentException($"{k} shots requested but the few-shot pool has {pool.Count} examples");
        var rng = new Random(seed);
        return Enumerable.Range(0, pool.Count).OrderBy(_ => rng.Next()).Take(k).Select(i => pool[i]).ToList();
    }

    /// <summary>Strict filter: the first "#### number".</summary>
    public static string ExtractStrict(string generation)
    {
        var m = StrictRegex().Match(generation);
        return m.Success ? m.Groups[1].Value.Trim() : Invalid;
    }

    /// <summary>Flexible filter: the last number-like match (the first non-empty group of that match).</summary>
    public static string ExtractFlexible(string generation)
    {
        var ms = FlexibleRegex().Matches(generation);
        if (ms.Count == 0) return Invalid;
        var m = ms[^1];
        var g = m.Groups[1].Success && m.Groups[1].Value.Length > 0 ? m.Groups[1].Value : m.Groups[2].Value;
        return g.Length > 0 ? g.Trim() : Invalid;
    }

    /// <summary>The harness's normalization before exact match: drop ",", "$", everything up to "#### ", a trailing ".".</summary>
    public static string Normalize(string s)
    {
        s = s.Replace(",", "").Replace("$", "");
        s = UpToHashes().Replace(s, "");
        s = TrailingPeriod().Replace(s, "");
        return s.Trim();
    }

    public static bool Matches(string extracted, string target) =>
        extracted != Invalid && string.Equals(Normalize(extracted), Normalize(target), StringComparison.OrdinalIgnoreCase);

    public static Gsm8kItemResult Score(Gsm8kItem item, string generation)
    {
        var strict = ExtractStrict(generation);
        var flexible = ExtractFlexible(generation);
        var target = Normalize(item.Answer);   // the reference number, normalized as the harness does
        return new Gsm8kItemResult(item.Id, generation, strict, flexible, target, Matches(strict, target), Matches(flexible, target));
    }

    /// <summary>Generates greedily for every item and scores both filters.</summary>
    public static Gsm8kSummary Evaluate(ILanguageModel model, IReadOnlyList<Gsm8kItem> test, IReadOnlyList<Gsm8kItem> train,
                                        int shots = 5, int maxNewTokens = 256, int batch = 8, ConsoleProgress? progress = null)
    {
        var fewShot = shots > 0 ? Shots(train, shots) : [];
        var options = new GenerationOptions(MaxNewTokens: maxNewTokens, Temperature: 0, StopStrings: StopStrings);
        var results = new List<Gsm8kItemResult>(test.Count);
        for (int i = 0; i < test.Count; i += batch)
        {
            var chunk = test.Skip(i).Take(batch).ToList();
            var gens = model.Generate(chunk.Select(it => Prompt(it, fewShot)).ToList(), options);
            for (int j = 0; j < chunk.Count; j++)
                results.Add(Score(chunk[j], gens[j]) with { Question = chunk[j].Question, Answer = chunk[j].Answer, Prompt = Prompt(chunk[j], fewShot) });
            progress?.Advance(chunk.Count);
        }
        return new Gsm8kSummary(shots,
            results.Count == 0 ? double.NaN : results.Average(r => r.StrictCorrect ? 1.0 : 0.0),
            results.Count == 0 ? double.NaN : results.Average(r => r.FlexibleCorrect ? 1.0 : 0.0),
            results);
    }
}
