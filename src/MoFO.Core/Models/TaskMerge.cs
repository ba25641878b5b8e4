using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>How <see cref="TaskMerge"/> combines the task vectors τᵢ = θᵢ − θ_base.</summary>
public enum MergeMethod
{
    /// <summary>Task arithmetic (Ilharco et al. 2023): Σ wᵢ·τᵢ.</summary>
    TaskArithmetic,
    /// <summary>TIES (Yadav et al. 2023): trim each τᵢ to its top-d by magnitude, elect a sign per entry by the sign of
    /// Σ wᵢ·τ̂ᵢ, and average the weighted entries that agree with it (the disjoint mean).</summary>
    Ties,
    /// <summary>DARE (Yu et al. 2024) with a linear combination: each entry of each τᵢ kept with probability d and
    /// rescaled by 1/d, then Σ wᵢ·τ̃ᵢ.</summary>
    Dare,
    /// <summary>DARE's drop and rescale, then TIES's sign election and disjoint mean.</summary>
    DareTies,
}

/// <summary>A merge: the rule, each task's weight (null: 1 each), the density d (the fraction of each task vector that
/// TIES keeps by magnitude and DARE keeps at random) and DARE's seed.</summary>
public sealed record MergeOptions(MergeMethod Method, IReadOnlyList<double>? Weights = null, double Density = MergeOptions.DefaultDensity, long Seed = 0)
{
    /// <summary>TIES's top-20% (Yadav et al. 2023, k = 20, the value PEFT's merging guide uses). PEFT requires a density
    /// and mergekit's default of 1 turns trimming and dropping off, so neither gives one worth copying.</summary>
    public const double DefaultDensity = 0.2;

    /// <summary>Whether the rule uses the density (TIES and DARE; not task arithmetic).</summary>
    public bool UsesDensity => Method != MergeMethod.TaskArithmetic;

    /// <summary>The weight of each of <paramref name="tasks"/> task vectors, checked.</summary>
    public double[] WeightsFor(int tasks)
    {
        if (tasks < 1) throw new OptionException("Tuned", "Tuned (none): no fine-tuned model given (a merge needs at least one)");
        if (Weights is null) return Enumerable.Repeat(1.0, tasks).ToArray();
        if (Weights.Count != tasks)
            throw new OptionException("Weights", $"Weights {string.Join(",", Weights)}: {Weights.Count} weight{(Weights.Count == 1 ? "" : "s")} for {tasks} fine-tuned model{(tasks == 1 ? "" : "s")} (give one per model, in their order)");
        foreach (var w in Weights)
            if (!double.IsFinite(w)) throw new OptionException("Weights", $"Weights {w}: expected finite numbers");
        return Weights.ToArray();
    }

    /// <summary>Checks the options for <paramref name="tasks"/> fine-tuned models.</summary>
    public void Check(int tasks)
    {
        WeightsFor(tasks);
        if (UsesDensity && !(Density > 0 && Density <= 1))
            throw new OptionException("Density", $"Density {Density}: expected 0 < d ≤ 1 (the fraction of each task vector kept)");
    }
}

/// <summary>
/// Model merging by task vectors: τᵢ = θᵢ − θ_base for fine-tunes θᵢ of one base, combined into one τ and added to the
/// base, θ = θ_base + τ — task arithmetic, TIES and DARE (<see cref="MergeMethod"/>). Every tensor of the state dict
/// (embeddings, norms and the head included) is merged by the same rule, per tensor (TIES's top-d is each tensor's);
/// the arithmetic is float32 and the result is stored in the base model's dtype. The rules are pure functions of
/// float32 tensors; <see cref="Write"/> merges model folders.
/// </summary>
public static class TaskMerge
{
    /// <summary>Σ wᵢ·τᵢ.</summary>
    public static Tensor TaskArithmetic(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights)
    {
        CheckTasks(taus, weights);
        using var scope = NewDisposeScope();
        var sum = zeros_like(taus[0]);
        for (int i = 0; i < taus.Count; i++) sum.add_(taus[i], alpha: weights[i]);
        return sum.MoveToOuterDisposeScope();
    }

    /// <summary>The number of entries of <paramref name="numel"/> that density <paramref name="density"/> keeps:
    /// ⌊d·n⌋ (as PEFT and mergekit count; a small tensor can keep none).</summary>
    public static long Kept(long numel, double density) => Math.Min(numel, (long)Math.Floor(density * numel + 1e-9));

    /// <summary>TIES's trim: τ with all but its ⌊d·n⌋ largest-magnitude entries set to 0 (ties at the threshold are
    /// broken by <c>topk</c>).</summary>
    public static Tensor Trim(Tensor tau, double density)
    {
        CheckDensity(density);
        using var scope = NewDisposeScope();
        var flat = tau.flatten();
        var k = Kept(flat.numel(), density);
        var kept = zeros_like(flat);
        if (k > 0)
        {
            var idx = flat.abs().topk(checked((int)k)).indexes;
            kept.index_copy_(0, idx, flat.index_select(0, idx));
        }
        return kept.view(tau.shape).MoveToOuterDisposeScope();
    }

    /// <summary>DARE's drop and rescale: each entry kept with probability d (a uniform draw from
    /// <paramref name="generator"/> below d) and multiplied by 1/d, the rest set to 0 — unbiased, E[τ̃] = τ.</summary>
    public static Tensor Drop(Tensor tau, double density, Generator generator)
    {
        CheckDensity(density);
        using var scope = NewDisposeScope();
        var u = rand(tau.shape, ScalarType.Float32, CPU, generator: generator).to(tau.device);
        var keep = u.lt(density);
        return tau.mul(keep).div_(density).MoveToOuterDisposeScope();
    }

    /// <summary>TIES's elect and disjoint mean of (already trimmed or dropped) task vectors: each weighted, wᵢ·τᵢ; the
    /// elected sign per entry is that of Σᵢ wᵢ·τᵢ (+ where the sum is 0: PEFT's "total" method, mergekit's "sum"); the
    /// result is the mean of the weighted entries with that sign, over as many tasks as have one (PEFT's
    /// <c>disjoint_merge</c>; 0 where none has).</summary>
    public static Tensor ElectAndMean(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights)
    {
        CheckTasks(taus, weights);
        using var scope = NewDisposeScope();
        var weighted = stack(taus.Select((t, i) => t.mul(weights[i])).ToArray());
        var elected = where(weighted.sum(0L).ge(0), 1.0f, -1.0f);
        var agree = weighted.sign().eq(elected.unsqueeze(0));
        var sum = weighted.mul(agree).sum(0L);
        var count = agree.sum(0L, type: ScalarType.Float32).clamp_min(1);
        return sum.div_(count).MoveToOuterDisposeScope();
    }

    /// <summary>TIES: <see cref="Trim"/> each τᵢ to density d, then <see cref="ElectAndMean"/>.</summary>
    public static Tensor Ties(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights, double density)
    {
        using var scope = NewDisposeScope();
        return ElectAndMean(taus.Select(t => Trim(t, density)).ToList(), weights).MoveToOuterDisposeScope();
    }

    /// <summary>DARE (linear): <see cref="Drop"/> each τᵢ (in order, from one generator), then Σ wᵢ·τ̃ᵢ.</summary>
    public static Tensor Dare(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights, double density, Generator generator)
    {
        using var scope = NewDisposeScope();
        return TaskArithmetic(taus.Select(t => Drop(t, density, generator)).ToList(), weights).MoveToOuterDisposeScope();
    }

    /// <summary>DARE-TIES: <see cref="Drop"/> each τᵢ, then <see cref="ElectAndMean"/>.</summary>
    public static Tensor DareTies(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights, double density, Generator generator)
    {
        using var scope = NewDisposeScope();
        return ElectAndMean(taus.Select(t => Drop(t, density, generator)).ToList(), weights).MoveToOuterDisposeScope();
    }

    /// <summary>The merged task vector by <paramref name="o"/>'s rule (DARE's draws from <paramref name="generator"/>).</summary>
    public static Tensor Combine(MergeOptions o, IReadOnlyList<Tensor> taus, Generator generator)
    {
        var w = o.WeightsFor(taus.Count);
        return o.Method switch
        {
            MergeMethod.TaskArithmetic => TaskArithmetic(taus, w),
            MergeMethod.Ties => Ties(taus, w, o.Density),
            MergeMethod.Dare => Dare(taus, w, o.Density, generator),
            MergeMethod.DareTies => DareTies(taus, w, o.Density, generator),
            _ => throw new ArgumentOutOfRangeException(nameof(o), o.Method, "unknown merge method"),
        };
    }

    static void CheckDensity(double density)
    {
        if (!(density > 0 && density <= 1))
            throw new OptionException("Density", $"Density {density}: expected 0 < d ≤ 1 (the fraction of each task vector kept)");
    }

    static void CheckTasks(IReadOnlyList<Tensor> taus, IReadOnlyList<double> weights)
    {
        if (taus.Count == 0) throw new ArgumentException("no task vectors", nameof(taus));
        if (weights.Count != taus.Count) throw new ArgumentException($"{weights.Count} weights for {taus.Count} task vectors", nameof(weights));
        foreach (var t in taus)
            if (!t.shape.SequenceEqual(taus[0].shape))
                throw new ArgumentException($"task vectors of shapes [{string.Join(", ", taus[0].shape)}] and [{string.Join(", ", t.shape)}]", nameof(taus));
    }

    /// <summary>The config fields that may differ between checkpoints of one architecture: the dtype and the special
    /// token ids.</summary>
    static readonly HashSet<string> Incidental = ["torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id"];

    /// <summary>Refuses fine-tunes that are not of the base's architecture: other tensors (those named), another shape
    /// or a non-floating tensor (the tensor named), or another config (the first differing field named), with both
    /// models' files.</summary>
    public static void CheckCompatible(CausalLM baseModel, CausalLM tuned)
    {
        string Where(CausalLM m) => m.SourcePath ?? m.Name;
        var sb = baseModel.Module.StateDict();
        var st = tuned.Module.StateDict();
        var onlyTuned = st.Keys.Where(k => !sb.ContainsKey(k)).ToList();
        var onlyBase = sb.Keys.Where(k => !st.ContainsKey(k)).ToList();
        if (onlyTuned.Count > 0 || onlyBase.Count > 0)
            throw new CheckpointException($"{Where(baseModel)} and {Where(tuned)} hold different tensors (only in the fine-tune: {string.Join(", ", onlyTuned.Take(5))}; only in the base: {string.Join(", ", onlyBase.Take(5))}): they are not one architecture");
        foreach (var (name, w0) in sb)
        {
            var w = st[name];
            if (!w0.shape.SequenceEqual(w.shape))
                throw new CheckpointException($"{name}: shape [{string.Join(", ", w0.shape)}] in {Where(baseModel)}, [{string.Join(", ", w.shape)}] in {Where(tuned)}: the models must have one shape");
            if (!w0.is_floating_point() || !w.is_floating_point())
                throw new CheckpointException($"{name}: {w0.dtype} in {Where(baseModel)}, {w.dtype} in {Where(tuned)}: only floating-point tensors can be merged");
        }
        // the same tensors can still compute another function (rope_theta, rms_norm_eps, the activation)
        JsonObject a = baseModel.Module.Config.ToJson(), b = tuned.Module.Config.ToJson();
        foreach (var key in a.Select(kv => kv.Key).Union(b.Select(kv => kv.Key)))
        {
            if (Incidental.Contains(key)) continue;
            var x = a[key]?.ToJsonString() ?? "(none)";
            var y = b[key]?.ToJsonString() ?? "(none)";
            if (x != y)
                throw new CheckpointException($"{key}: {x} in {Where(baseModel)}, {y} in {Where(tuned)}: the fine-tuned models must have the base's architecture");
        }
    }

    /// <summary>Merges the fine-tunes into <paramref name="baseModel"/>'s weights in place, tensor by tensor in the
    /// base's state-dict order: θ = θ_base + combine(θᵢ − θ_base) in float32, stored in the base's dtype. DARE's draws
    /// come from one CPU generator seeded with <see cref="MergeOptions.Seed"/>, tensor by tensor and task by task in
    /// that order, so a merge is reproducible.</summary>
    public static void Merge(CausalLM baseModel, IReadOnlyList<CausalLM> tuned, MergeOptions o)
    {
        o.Check(tuned.Count);
        foreach (var t in tuned) CheckCompatible(baseModel, t);
        var dicts = tuned.Select(t => t.Module.StateDict()).ToList();
        using var noGrad = no_grad();
        using var generator = new Generator((ulong)o.Seed);
        foreach (var (name, w0) in baseModel.Module.StateDict())
        {
            using var scope = NewDisposeScope();
            var b = w0.to(ScalarType.Float32);
            var taus = dicts.Select(d => d[name].to(ScalarType.Float32, w0.device).sub(b)).ToList();
            w0.copy_(b.add(Combine(o, taus, generator)));
        }
    }

    /// <summary>Loads the base and the fine-tunes, merges (<see cref="Merge"/>) and writes the result as an HF folder
    /// (the base's dtype, config and tokenizer) to <paramref name="output"/> (new or empty). Every model is held in
    /// memory at once (n + 1 models).</summary>
    public static void Write(string basePath, IReadOnlyList<string> tunedPaths, MergeOptions o, string output, Device? device = null)
    {
        o.Check(tunedPaths.Count);
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new OptionException("Output", $"Output {output}: the folder is not empty (choose a new folder)");
        device ??= CPU;
        using var baseModel = ModelLoader.Load(basePath, null, device);
        var tuned = new List<CausalLM>();
        try
        {
            foreach (var p in tunedPaths) tuned.Add(ModelLoader.Load(p, null, device));
            Merge(baseModel, tuned, o);
        }
        finally { foreach (var t in tuned) t.Dispose(); }
        HfFolder.SaveAtomically(baseModel, output);
    }
}
