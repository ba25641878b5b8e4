using MoFO.Data;
using MoFO.Models;

namespace MoFO.Evaluation;

/// <summary>Per-item outcome: the log-likelihood of every choice, and the predictions by acc and acc_norm.</summary>
public sealed record McItemResult(string Id, string Group, int Gold, int Predicted, int PredictedNorm, IReadOnlyList<double> LogLikelihoods)
{
    /// <summary>The request as the model saw it: the context (with its shots) and each choice's continuation.</summary>
    public string Context { get; init; } = "";
    public IReadOnlyList<string> Continuations { get; init; } = [];
    /// <summary>Whether each continuation is the model's greedy continuation of the context.</summary>
    public IReadOnlyList<bool> IsGreedy { get; init; } = [];
    public bool Correct => Predicted == Gold;
    public bool CorrectNorm => PredictedNorm == Gold;
}

/// <summary>The outcome of a multiple-choice task: accuracy, length-normalized accuracy, and the chance level.</summary>
public sealed record McSummary(string Task, int Shots, double Acc, double AccNorm, double Chance, IReadOnlyList<McItemResult> Items)
{
    public int Count => Items.Count;

    /// <summary>Standard error of the accuracy (binomial), as lm-evaluation-harness reports it.</summary>
    public double AccStderr => Count > 1 ? Math.Sqrt(Acc * (1 - Acc) / (Count - 1)) : double.NaN;

    /// <summary>Accuracy per group (e.g. MMLU subject).</summary>
    public IReadOnlyDictionary<string, double> AccByGroup =>
        Items.GroupBy(i => i.Group).ToDictionary(g => g.Key, g => g.Average(i => i.Correct ? 1.0 : 0.0));
}

/// <summary>How few-shot examples are chosen for an item.</summary>
public enum FewShotSampler
{
    /// <summary>The first k items of the pool (lm-evaluation-harness's <c>first_n</c>, used by MMLU with its dev split).</summary>
    FirstN,
    /// <summary>k items drawn from the pool with a fixed seed, never the item itself.</summary>
    Seeded,
}

/// <summary>
/// Multiple choice by log-likelihood, following lm-evaluation-harness: the context is
/// <c>description + Σ(shot.context + targetDelimiter + shot.gold + fewShotDelimiter) + item.context</c>, every choice
/// is scored as the continuation <c>targetDelimiter + choice</c>; <c>acc</c> takes the argmax of the log-likelihoods,
/// <c>acc_norm</c> the argmax of log-likelihood divided by the choice's length in characters. Requests are sorted by
/// length (longest first) before they go to the model in batches, and mapped back.
/// </summary>
public sealed class MultipleChoiceEvaluator
{
    public string TargetDelimiter { get; init; } = " ";
    public string FewShotDelimiter { get; init; } = "\n\n";
    public int Shots { get; init; }
    public FewShotSampler Sampler { get; init; } = FewShotSampler.Seeded;
    public int Seed { get; init; } = 1234;
    /// <summary>Requests per call to the model (progress is reported between calls).</summary>
    public int ChunkSize { get; init; } = 256;

    /// <summary>The few-shot examples of an item, drawn from its pool (its group's pool when pools are per group).</summary>
    public IReadOnlyList<McItem> ShotsFor(McItem item, IReadOnlyList<McItem> pool)
    {
        if (Shots <= 0) return [];
        var candidates = pool.Where(p => p.Id != item.Id).ToList();
        if (candidates.Count < Shots)
            throw new ArgumentException($"{Shots}-shot evaluation needs {Shots} examples besides the item, but the few-shot pool of '{item.Group}' has {candidates.Count}");
        if (Sampler == FewShotSampler.FirstN) return candidates.Take(Shots).ToList();
        // a function of the seed and the item alone, the same in every process (HashCode.Combine is randomized per process)
        var rng = new Random(unchecked(Seed * 1_000_003 + StableHash(item.Id)));
        return candidates.OrderBy(_ => rng.Next()).Take(Shots).ToList();
    }

    /// <summary>The full context string for an item given its shots.</summary>
    public string BuildContext(McItem item, IReadOnlyList<McItem> shots)
    {
        var sb = new System.Text.StringBuilder(item.Description);
        foreach (var s in shots) sb.Append(s.Context).Append(TargetDelimiter).Append(s.GoldChoice).Append(FewShotDelimiter);
        sb.Append(item.Context);
        return sb.ToString();
    }

    /// <summary>Scores every item. <paramref name="poolFor"/> gives the few-shot pool of an item (ignored at 0 shots).</summary>
    public McSummary Evaluate(ILanguageModel model, string task, IReadOnlyList<McItem> items,
                              Func<McItem, IReadOnlyList<McItem>>? poolFor = null, ConsoleProgress? progress = null)
    {
        var requests = new List<(int Item, int Choice, LogLikelihoodRequest Request)>();
        for (int i = 0; i < items.Count; i++)
        {
            var item = items[i];
            if (item.Choices.Count == 0) throw new ArgumentException($"{task}: item {item.Id} has no choices");
            if (item.Gold < 0 || item.Gold >= item.Choices.Count)
                throw new ArgumentException($"{task}: item {item.Id} has gold index {item.Gold} outside its {item.Choices.Count} choices");
            var shots = Shots > 0 ? ShotsFor(item, poolFor?.Invoke(item) ?? items) : [];
            var context = BuildContext(item, shots);
            for (int c = 0; c < item.Choices.Count; c++)
                requests.Add((i, c, new LogLikelihoodRequest(context, TargetDelimiter + item.Choices[c])));
        }
        // Longest first, so that the model's batches hold sequences of similar length.
        var order = Enumerable.Range(0, requests.Count)
            .OrderByDescending(r => requests[r].Request.Context.Length + requests[r].Request.Continuation.Length)
            .ThenBy(r => r)
            .ToArray();
        var ll = new double[requests.Count];
        var greedy = new bool[requests.Count];
        for (int start = 0; start < order.Length; start += ChunkSize)
        {
            var chunk = order.Skip(start).Take(ChunkSize).ToArray();
            var results = model.LogLikelihoods(chunk.Select(r => requests[r].Request).ToList());
            if (results.Count != chunk.Length)
                throw new InvalidOperationException($"{model.Name} returned {results.Count} log-likelihoods for {chunk.Length} requests");
            for (int j = 0; j < chunk.Length; j++) { ll[chunk[j]] = results[j].LogLikelihood; greedy[chunk[j]] = results[j].IsGreedy; }
            progress?.Advance(chunk.Length);
        }
        var perItem = new List<McItemResult>(items.Count);
        int k = 0;
        for (int i = 0; i < items.Count; i++)
        {
            var item = items[i];
            var lls = new double[item.Choices.Count];
            var greedyOf = new bool[item.Choices.Count];
            int first = k;
            for (int c = 0; c < lls.Length; c++) { greedyOf[c] = greedy[k]; lls[c] = ll[k++]; }
            int pred = ArgMax(lls);
            int predNorm = ArgMax(lls.Select((v, c) => v / Math.Max(1, item.Choices[c].Length)).ToArray());
            perItem.Add(new McItemResult(item.Id, item.Group, item.Gold, pred, predNorm, lls)
            {
                Context = requests[first].Request.Context,
                Continuations = Enumerable.Range(first, lls.Length).Select(r => requests[r].Request.Continuation).ToList(),
                IsGreedy = greedyOf,
            });
        }
        return new McSummary(task, Shots,
            perItem.Count == 0 ? double.NaN : perItem.Average(r => r.Correct ? 1.0 : 0.0),
            perItem.Count == 0 ? double.NaN : perItem.Average(r => r.CorrectNorm ? 1.0 : 0.0),
            items.Count == 0 ? double.NaN : items.Average(i => 1.0 / i.Choices.Count),
            perItem);
    }

    /// <summary>The number of model requests for the items (for progress totals).</summary>
    public static int RequestCount(IEnumerable<McItem> items) => items.Sum(i => i.Choices.Count);

    /// <summary>Index of the first maximum (numpy's argmax rule).</summary>
    public static int ArgMax(IReadOnlyList<double> values)
    {
        int best = 0;
        for (int i = 1; i < values.Count; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    static int StableHash(string s)
    {
        unchecked
        {
            int h = (int)2166136261;
            foreach (var ch in s) h = (h ^ ch) * 16777619;
            return h;
        }
    }
}
