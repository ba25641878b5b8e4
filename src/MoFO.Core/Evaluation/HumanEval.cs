using System.Collections.Concurrent;
using System.Text.Json;
using MoFO.Data;
using MoFO.Models;

namespace MoFO.Evaluation;

public sealed record HumanEvalProblem(string TaskId, string Prompt, string CanonicalSolution, string Test, string EntryPoint);

/// <summary>One completion to score (the human-eval samples format: <c>{task_id, completion}</c>).</summary>
public sealed record HumanEvalSample(string TaskId, string Completion);

/// <summary>The verdict on one sample.</summary>
public sealed record HumanEvalSampleResult(string TaskId, string Completion, bool Passed, string Result, double Seconds);

public sealed record HumanEvalSummary(IReadOnlyDictionary<int, double> PassAtK, int Problems, int Samples, IReadOnlyList<HumanEvalSampleResult> Results);

/// <summary>
/// HumanEval (Chen et al., 2021): sampling completions, executing <c>prompt + completion + "\n" + test + "\n" +
/// "check(entry_point)"</c> in the <see cref="PythonSandbox"/>, and the unbiased pass@k.
/// </summary>
public static class HumanEval
{
    /// <summary>Stop sequences of the original evaluation.</summary>
    public static readonly string[] StopStrings = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

    public static List<HumanEvalProblem> ReadProblems(string path)
    {
        var list = new List<HumanEvalProblem>();
        foreach (var l in JsonLines.Read(path))
            list.Add(new HumanEvalProblem(l.String("task_id"), l.String("prompt"), l.String("canonical_solution"), l.String("test"), l.String("entry_point")));
        if (list.Count == 0) throw new DataFormatException(path, null, "no problems");
        return list;
    }

    /// <summary>Reads a samples file; every task_id must name a problem.</summary>
    public static List<HumanEvalSample> ReadSamples(string path, IReadOnlyDictionary<string, HumanEvalProblem> problems)
    {
        var list = new List<HumanEvalSample>();
        foreach (var l in JsonLines.Read(path))
        {
            var id = l.String("task_id");
            if (!problems.ContainsKey(id)) throw l.Error($"task_id \"{id}\" is not a problem of the benchmark");
            list.Add(new HumanEvalSample(id, l.String("completion")));
        }
        if (list.Count == 0) throw new DataFormatException(path, null, "no samples");
        return list;
    }

    /// <summary>The program that checks one completion.</summary>
    public static string Program(HumanEvalProblem p, string completion) =>
        p.Prompt + completion + "\n" + p.Test + "\n" + $"check({p.EntryPoint})" + "\n";

    /// <summary>Executes every sample in parallel workers and computes pass@k for each k that every problem's sample
    /// count allows.</summary>
    public static HumanEvalSummary Score(IReadOnlyList<HumanEvalSample> samples, IReadOnlyDictionary<string, HumanEvalProblem> problems,
                                         PythonSandbox sandbox, IReadOnlyList<int> ks, int workers = 0, ConsoleProgress? progress = null)
    {
        if (workers <= 0) workers = Environment.ProcessorCount;
        var results = new HumanEvalSampleResult[samples.Count];
        var slots = new ConcurrentBag<int>(Enumerable.Range(0, workers));
        Parallel.For(0, samples.Count, new ParallelOptions { MaxDegreeOfParallelism = workers }, i =>
        {
            if (!slots.TryTake(out var slot)) slot = workers + i;
            try
            {
                var s = samples[i];
                var r = sandbox.Run(Program(problems[s.TaskId], s.Completion), slot);
                results[i] = new HumanEvalSampleResult(s.TaskId, s.Completion, r.Passed, r.Describe(), r.Elapsed.TotalSeconds);
            }
            finally
            {
                slots.Add(slot);
                progress?.Advance();
            }
        });
        var perProblem = results.GroupBy(r => r.TaskId).Select(g => (N: g.Count(), C: g.Count(r => r.Passed))).ToList();
        int minN = perProblem.Min(p => p.N);
        var passAt = new SortedDictionary<int, double>();
        foreach (var k in ks.Distinct().OrderBy(k => k))
        {
            if (k < 1) throw new ArgumentException($"k = {k}: pass@k needs k ≥ 1");
            if (k <= minN) passAt[k] = PassAtK.Mean(perProblem, k);
        }
        return new HumanEvalSummary(passAt, perProblem.Count, results.Length, results);
    }

    /// <summary>Samples n completions per problem from the model (seeded: sample j of a problem uses seed + j).</summary>
    public static List<HumanEvalSample> Generate(ILanguageModel model, IReadOnlyList<HumanEvalProblem> problems, int n,
                                                double temperature, double topP, int maxNewTokens, long seed, ConsoleProgress? progress = null)
    {
        if (n < 1) throw new ArgumentException($"samples per problem must be at least 1, got {n}");
        var samples = new List<HumanEvalSample>();
        foreach (var p in problems)
        {
            for (int j = 0; j < n; j++)
            {
                var options = new GenerationOptions(maxNewTokens, temperature, topP, seed + j, StopStrings);
                samples.Add(new HumanEvalSample(p.TaskId, model.Generate([p.Prompt], options)[0]));
                if (temperature == 0 && n > 1)
                {
                    // Greedy decoding gives the same completion every time.
                    for (int r = j + 1; r < n; r++) samples.Add(samples[^1] with { });
                    break;
                }
            }
            progress?.Advance();
        }
        return samples;
    }

    /// <summary>Writes per-sample results as jsonl (<c>{task_id, completion, passed, result}</c>), atomically.</summary>
    public static void WriteResults(string path, IEnumerable<HumanEvalSampleResult> results)
    {
        AtomicFile.WriteAllLines(path, results.Select(r => JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["task_id"] = r.TaskId, ["completion"] = r.Completion, ["passed"] = r.Passed, ["result"] = r.Result,
        })));
    }
}
