using System.Text.Json;
using MoFO.Data;
using MoFO.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Training;

/// <summary>One task of a continual-learning stream (TRACE: a task folder with train/eval/test splits).</summary>
public sealed record ContinualTask(string Name, IReadOnlyList<TrainingExample> Train, IReadOnlyList<TrainingExample> Test, int Epochs = 1);

/// <summary>How a task's performance R[t, i] is measured.</summary>
public enum TaskMetric
{
    /// <summary>Greedy generation; exact match of the trimmed answer.</summary>
    Accuracy,
    /// <summary>exp(−mean NLL of the answer tokens): the geometric-mean probability of the answer, in (0, 1].</summary>
    AnswerLikelihood,
}

/// <summary>The accuracy matrix of a stream and its summaries.</summary>
/// <param name="R">R[t][i]: performance on task i after training on tasks 0..t (NaN for i &gt; t).</param>
public sealed record ContinualResult(IReadOnlyList<string> Tasks, double[][] R)
{
    /// <summary>Overall performance: mean_i R[T, i] over all tasks after the last one.</summary>
    public double OP => ContinualMetrics.OP(R);
    /// <summary>Backward transfer: mean_{i&lt;T} (R[T, i] − R[i, i]).</summary>
    public double BWT => ContinualMetrics.BWT(R);
}

/// <summary>A stream's result as written to <c>continual.json</c> (or <c>mtl.json</c>): R with null for the tasks not yet
/// trained, OP, BWT (null for MTL), the method and the strategy. Written and read by this one type.</summary>
public sealed record ContinualSummary(string Method, TaskMetric Metric, IReadOnlyList<string> Tasks, double?[][] R, double OP, double? BWT,
                                      int ReplayPerTask, int GemMemoryPerTask)
{
    public static ContinualSummary Of(ContinualResult r, string method, TaskMetric metric, int replay, int gem) =>
        new(method, metric, r.Tasks, r.R.Select(row => row.Select(v => double.IsNaN(v) ? (double?)null : v).ToArray()).ToArray(),
            r.OP, r.R.Length > 1 ? r.BWT : null, replay, gem);

    /// <summary>The matrix with NaN for the missing entries.</summary>
    public ContinualResult Result => new(Tasks, R.Select(row => row.Select(v => v ?? double.NaN).ToArray()).ToArray());

    public void Write(string file) => AtomicFile.WriteAllText(file, JsonSerializer.Serialize(this, RunFolder.Json));

    public static ContinualSummary Read(string file)
    {
        try
        {
            return JsonSerializer.Deserialize<ContinualSummary>(File.ReadAllText(file), RunFolder.Json)
                   ?? throw new DataFormatException(file, null, "empty continual summary");
        }
        catch (JsonException e) { throw new DataFormatException(file, null, $"not a continual summary ({e.Message})", e); }
    }
}

public static class ContinualMetrics
{
    public static double OP(double[][] r)
    {
        if (r.Length == 0) throw new ArgumentException("OP of an empty stream");
        var last = r[^1];
        return Enumerable.Range(0, r.Length).Average(i => last[i]);
    }

    public static double BWT(double[][] r)
    {
        int T = r.Length;
        if (T < 2) return 0;
        return Enumerable.Range(0, T - 1).Average(i => r[T - 1][i] - r[i][i]);
    }
}

/// <summary>
/// Trains a model on a task stream in sequence (a fresh optimizer per task, the task's own epochs), evaluating every
/// task seen so far after each one; with <see cref="ReplayPerTask"/>, that many seeded samples of every earlier task
/// are mixed into each later task's training data; with <see cref="Gem"/>, each step's gradient is projected so that
/// it does not increase the loss on a memory of every earlier task. <see cref="RunMultiTask"/> trains once on all
/// tasks mixed (MTL, the upper bound).
/// </summary>
public sealed class ContinualRunner
{
    public required CausalLM Model { get; init; }
    public required IReadOnlyList<ContinualTask> Tasks { get; init; }
    public required TrainingOptions Options { get; init; }
    public required string OutputDir { get; init; }
    public TaskMetric Metric { get; init; } = TaskMetric.Accuracy;
    public int ReplayPerTask { get; init; }
    /// <summary>Memory examples per earlier task for GEM; 0 disables GEM.</summary>
    public int GemMemoryPerTask { get; init; }
    public bool Gem => GemMemoryPerTask > 0;
    /// <summary>Evaluate on at most this many test examples per task.</summary>
    public int? EvalLimit { get; init; }
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>A folder for TensorBoard event files: one subfolder per task (null: none).</summary>
    public string? TensorBoardDir { get; init; }

    public ContinualResult Run()
    {
        if (Tasks.Count == 0) throw new ArgumentException("a continual stream needs at least one task");
        int T = Tasks.Count;
        var r = Enumerable.Range(0, T).Select(_ => Enumerable.Repeat(double.NaN, T).ToArray()).ToArray();
        for (int t = 0; t < T; t++)
        {
            var task = Tasks[t];
            var train = TrainingSetFor(t);
            var options = Options with { Epochs = task.Epochs, Steps = null };
            var trainer = new Trainer(Model, train, null, options, Path.Combine(OutputDir, $"task{t + 1}-{Sanitize(task.Name)}"))
            {
                TensorBoardDir = TensorBoardDir is null ? null : Path.Combine(TensorBoardDir, $"task{t + 1}-{Sanitize(task.Name)}"),
            };
            GemProjection? gem = null;
            if (Gem && t > 0)
            {
                var memories = Enumerable.Range(0, t).Select(i => (IReadOnlyList<TrainingExample>)DataOrder.Epoch(Tasks[i].Train.Count, Options.Seed, 2000 + i)
                    .Take(GemMemoryPerTask).Select(k => Tasks[i].Train[k]).ToList()).ToList();
                gem = new GemProjection(Model, memories, options.MaxLength);
                trainer.AfterBackward = gem.Project;
                LastGem = gem;
            }
            trainer.Run();
            for (int i = 0; i <= t; i++) r[t][i] = Evaluate(Tasks[i]);
            Console.Error.WriteLine($"continual: after task {t + 1} ({task.Name}): " + string.Join(", ", Enumerable.Range(0, t + 1).Select(i => $"{Tasks[i].Name} {r[t][i]:F4}"))
                + (gem is null ? "" : $"; GEM projected {gem.Projections} of {gem.Steps} steps"));
        }
        var result = new ContinualResult(Tasks.Select(x => x.Name).ToList(), r);
        Write(result, "continual.json");
        return result;
    }

    /// <summary>The training data of task t: its own examples, then the replayed samples of every earlier task.</summary>
    public List<TrainingExample> TrainingSetFor(int t)
    {
        var train = new List<TrainingExample>(Tasks[t].Train);
        if (ReplayPerTask > 0)
            for (int i = 0; i < t; i++)
                train.AddRange(DataOrder.Epoch(Tasks[i].Train.Count, Options.Seed, 1000 + i).Take(ReplayPerTask).Select(k => Tasks[i].Train[k]));
        return train;
    }

    /// <summary>The GEM projections of the last task trained (null before GEM ran).</summary>
    public GemProjection? LastGem { get; private set; }

    /// <summary>MTL: one run on all tasks' training data mixed (epochs: the largest of the tasks'), evaluated on all.</summary>
    public ContinualResult RunMultiTask()
    {
        var all = Tasks.SelectMany(x => x.Train).ToList();
        var options = Options with { Epochs = Tasks.Max(x => x.Epochs), Steps = null };
        new Trainer(Model, all, null, options, Path.Combine(OutputDir, "mtl")).Run();
        var row = Tasks.Select(Evaluate).ToArray();
        var result = new ContinualResult(Tasks.Select(x => x.Name).ToList(), [row]);
        Write(result, "mtl.json");
        return result;
    }

    /// <summary>Writes the summary (rank 0 alone in a data-parallel job; every rank computes the same result).</summary>
    void Write(ContinualResult result, string file)
    {
        if (Distributed.Job.IsRoot) WriteSummary(result, file);
    }

    void WriteSummary(ContinualResult result, string file)
        => ContinualSummary.Of(result, Options.Method.ToString(), Metric, ReplayPerTask, GemMemoryPerTask).Write(Path.Combine(OutputDir, file));

    /// <summary>R[·, i] for one task under the chosen metric.</summary>
    public double Evaluate(ContinualTask task)
    {
        var test = EvalLimit is int n ? task.Test.Take(n).ToList() : task.Test.ToList();
        if (test.Count == 0) throw new ArgumentException($"task {task.Name} has no test examples");
        Model.Module.eval();
        try
        {
            if (Metric == TaskMetric.Accuracy)
            {
                var gens = Model.Generate(test.Select(e => e.Prompt).ToList(), new GenerationOptions(MaxNewTokens, 0));
                return test.Zip(gens).Average(p => Normalize(p.Second) == Normalize(p.First.Completion) ? 1.0 : 0.0);
            }
            var lls = Model.LogLikelihoods(test.Select(e => new LogLikelihoodRequest(e.Prompt, e.Completion)).ToList());
            return lls.Average(l => Math.Exp(l.LogLikelihood / Math.Max(1, l.TokenCount)));
        }
        finally { Model.Module.train(); }
    }

    static string Normalize(string s) => s.Trim().TrimEnd('.').Trim();
    static string Sanitize(string s) => string.Concat(s.Select(c => char.IsLetterOrDigit(c) || c == '-' || c == '_' ? c : '_'));
}

/// <summary>
/// GEM (Lopez-Paz and Ranzato, 2017): before each step, the gradient g of the current task is compared with the
/// gradients g_k of the loss on a memory of every earlier task; if any g·g_k &lt; 0, g is replaced by the closest
/// vector (in L2) whose inner product with every g_k is non-negative. One constraint has the closed form
/// g − (g·g_k / g_k·g_k) g_k; several are solved as GEM's small dual QP (min ½vᵀGGᵀv + (Gg)ᵀv, v ≥ 0; g' = g + Gᵀv)
/// by coordinate descent.
/// </summary>
public sealed class GemProjection
{
    readonly CausalLM _lm;
    readonly List<List<TokenizedExample>> _memories;
    public int Steps { get; private set; }
    public int Projections { get; private set; }
    /// <summary>The smallest cosine between a gradient that was applied and a stored memory gradient, over all steps
    /// (≥ 0 up to rounding when the projection works).</summary>
    public double MinCosine { get; private set; } = double.PositiveInfinity;

    public GemProjection(CausalLM lm, IReadOnlyList<IReadOnlyList<TrainingExample>> memories, int maxLength)
    {
        _lm = lm;
        _memories = memories.Select(m => m.Select(e => Tokenized.Encode(e, lm.Tokenizer, maxLength)).ToList()).ToList();
    }

    /// <summary>Projects the gradients of the trained tensors (the trained set's: <see cref="TrainedSet.Tensors"/>).</summary>
    public void Project(IReadOnlyList<TorchSharp.Modules.Parameter> ps)
    {
        Steps++;
        using var scope = NewDisposeScope();
        var g = Flatten(ps);
        var stored = new List<Tensor>();
        foreach (var mem in _memories)
        {
            foreach (var p in ps) p.grad?.zero_();
            using (var b = Tokenized.Pad(mem, _lm.Tokenizer.EosId ?? 0))
            {
                using var inner = NewDisposeScope();
                _lm.Loss(b.InputIds, b.Labels, b.AttentionMask).backward();
            }
            stored.Add(Flatten(ps));
        }
        var projected = ProjectVector(g, stored, out bool changed);
        if (changed) Projections++;
        foreach (var st in stored)
        {
            var denom = Math.Sqrt(projected.dot(projected).item<double>() * st.dot(st).item<double>());
            if (denom > 0) MinCosine = Math.Min(MinCosine, projected.dot(st).item<double>() / denom);
        }
        // Write the (projected) gradient back.
        using var _ = no_grad();
        long offset = 0;
        foreach (var p in ps)
        {
            var n = p.numel();
            p.grad!.copy_(projected.narrow(0, offset, n).view_as(p.grad).to(p.grad.dtype));
            offset += n;
        }
    }

    static Tensor Flatten(IEnumerable<TorchSharp.Modules.Parameter> ps) =>
        cat(ps.Select(p => (p.grad ?? zeros_like(p)).detach().reshape(-1).to(ScalarType.Float64)).ToList(), 0);

    /// <summary>The GEM projection of g against the stored gradients; <paramref name="changed"/> tells whether any
    /// constraint was violated.</summary>
    public static Tensor ProjectVector(Tensor g, IReadOnlyList<Tensor> stored, out bool changed)
    {
        changed = false;
        if (stored.Count == 0) return g;
        var dots = stored.Select(s => g.dot(s).item<double>()).ToArray();
        if (dots.All(d => d >= 0)) return g;
        changed = true;
        if (stored.Count == 1)
        {
            var s = stored[0];
            return g - s * (dots[0] / Math.Max(s.dot(s).item<double>(), 1e-30));
        }
        int K = stored.Count;
        var G = stack(stored.ToList(), 0);                     // [K, n]
        var q = G.matmul(G.t()).data<double>().ToArray();      // K×K
        var p = dots;                                          // G g
        var v = new double[K];
        for (int iter = 0; iter < 1000; iter++)
        {
            double maxDelta = 0;
            for (int k = 0; k < K; k++)
            {
                double grad = p[k];
                for (int j = 0; j < K; j++) grad += q[k * K + j] * v[j];
                double qkk = Math.Max(q[k * K + k], 1e-30);
                double nv = Math.Max(0, v[k] - grad / qkk);
                maxDelta = Math.Max(maxDelta, Math.Abs(nv - v[k]));
                v[k] = nv;
            }
            if (maxDelta < 1e-12) break;
        }
        return g + G.t().matmul(tensor(v, ScalarType.Float64));
    }
}
