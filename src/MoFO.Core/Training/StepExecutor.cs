using MoFO.Checkpoints;
using MoFO.Data;
using MoFO.Distributed;
using MoFO.Models;
using MoFO.Optim;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Training;

/// <summary>The forward and backward pass of one micro-batch (examples <paramref name="first"/>… of step
/// <paramref name="step"/>'s global batch), its loss divided by the step's token count; returns its summed token loss.</summary>
public delegate double MicroBatchPass(IReadOnlyList<TokenizedExample> examples, long tokens, int step, int first);

/// <summary>What a step executor works with: the model, the trained set, the optimizer and loss terms of the method,
/// the run's options and collective, the micro-batch pass, and the trainer's hooks.</summary>
public sealed record StepContext(CausalLMModule Module, TrainedSet Trained, BlockOptimizer Optimizer, IReadOnlyList<ILossTerm> Terms,
                                 TrainingOptions Options, ICollective Collective, MicroBatchPass Pass, Action<string>? OnPhase,
                                 Action<IReadOnlyList<Parameter>>? Projection);

/// <summary>What one step did: the summed token loss of the global batch, the gradient norm, whether the update was
/// skipped (and why), and the entries updated over all ranks.</summary>
public sealed record StepOutcome(double LossSum, double Norm, bool Skipped, string? Warning, long Updated);

/// <summary>
/// How a step runs, chosen once per run (<see cref="For"/>): the whole gradient and then one optimizer step, on one
/// process or over the ranks of a data-parallel job (<see cref="GradientStep"/>), or each tensor stepped inside the
/// backward pass as soon as its gradient is complete (<see cref="BackwardStep"/>). It also writes the optimizer's state
/// into a checkpoint (rank 0 gathers the other ranks' shards).
/// </summary>
public abstract class StepExecutor
{
    protected StepExecutor(StepContext context) => C = context;

    protected StepContext C { get; }

    /// <summary>The optimizer the executor steps.</summary>
    public BlockOptimizer Optimizer => C.Optimizer;

    /// <summary>The executor of a run: the step in the backward when the options ask for it (one process, no gradient
    /// projection), else the whole-gradient step over the run's collective.</summary>
    public static StepExecutor For(StepContext c)
    {
        var o = c.Options;
        if (c.Collective.Size > 1)
        {
            if (o.StepInBackward)
                throw new OptionException(nameof(TrainingOptions.StepInBackward), $"StepInBackward runs in a single process; this run has {c.Collective.Size} ranks (their gradients are summed after the backward pass)");
            if (o.BatchSize < c.Collective.Size)
                throw new OptionException(nameof(TrainingOptions.BatchSize), $"BatchSize {o.BatchSize} is smaller than the {c.Collective.Size} ranks: every rank needs a share of each global batch");
        }
        if (!o.StepInBackward) return new GradientStep(c);
        if (c.Projection is not null)
            throw new OptionException(nameof(TrainingOptions.StepInBackward), "StepInBackward cannot run with a gradient projection (GEM): it needs every gradient before the step");
        return new BackwardStep(c);
    }

    /// <summary>Runs step <paramref name="step"/> on its global batch (<paramref name="tokens"/> predicted tokens).</summary>
    public abstract StepOutcome Step(int step, IReadOnlyList<TokenizedExample> batch, long tokens);

    /// <summary>Writes the optimizer's state to <paramref name="file"/> (rank 0; the other ranks call <see cref="ServeState"/>).</summary>
    public virtual void WriteState(string file) => SafeTensors.Save(file, C.Optimizer.StateWrites());

    /// <summary>On a rank other than 0, while rank 0 writes a checkpoint: sends this rank's state as rank 0 asks for it.</summary>
    public virtual void ServeState(int step) { }

    /// <summary>The loss terms' gradients (L1/L2 toward θ0), each in a scope of its own.</summary>
    protected void TermsBackward()
    {
        foreach (var term in C.Terms)
        {
            using var scope = NewDisposeScope();
            term.Loss().backward();
        }
    }

    /// <summary>Entries updated by the last step on this process.</summary>
    protected long UpdatedHere() => C.Optimizer.Blocks.Sum(b => b.LastUpdated);

    /// <summary>Elements per slice when a gradient's norm is accumulated in float64 (no full-size float64 copy).</summary>
    const long NormSlice = 1 << 20;

    /// <summary>Σ g² of one gradient in float64, read in slices of <see cref="NormSlice"/> elements.</summary>
    protected static double SquaredNorm(Tensor g)
    {
        using var _ = no_grad();
        double sq = 0;
        using var flat = g.contiguous().view(-1);
        long n = flat.numel();
        for (long i = 0; i < n; i += NormSlice)
        {
            using var scope = NewDisposeScope();
            var g64 = (n <= NormSlice ? flat : flat.narrow(0, i, Math.Min(NormSlice, n - i))).to(ScalarType.Float64);
            sq += (g64 * g64).sum().item<double>();
        }
        return sq;
    }
}

/// <summary>
/// The whole gradient, then one optimizer step: the micro-batches of this rank's share of the global batch accumulate
/// their gradients; the loss terms add theirs (once, on rank 0); in a data-parallel job each gradient is summed into the
/// rank that owns its tensor (<see cref="DataParallel"/>, ZeRO-1/2 by whole tensors; with one rank every exchange is the
/// identity); a gradient projection (GEM) may rewrite the gradients; the norm is summed per tensor in the optimizer's
/// order (bit for bit the single process's), a non-finite one skips the step, a large one is clipped; the owners step
/// and broadcast their tensors.
/// </summary>
public sealed class GradientStep : StepExecutor
{
    readonly DataParallel _dp;

    public GradientStep(StepContext c) : base(c) => _dp = new DataParallel(c.Collective, c.Optimizer);

    /// <summary>Whether this step sums each decoder layer's gradients into their owners in the last micro-batch's backward
    /// (and frees the rest) rather than after it: <see cref="Reduction.InBackward"/>.</summary>
    bool ReducesInBackward(int batchCount) =>
        Reduction.InBackward(C.Collective.Size, C.Options.GradientCheckpointing, C.Trained.GradientsPerLayer, batchCount) && C.Projection is null;

    public override StepOutcome Step(int step, IReadOnlyList<TokenizedExample> batch, long tokens)
    {
        var o = C.Options;
        bool root = C.Collective.Rank == 0;
        var (first, count) = _dp.ShareOf(batch.Count);
        var share = batch.Skip(first).Take(count).ToList();
        _dp.Collective.Activity(step + 1, "forward and backward");
        bool inBackward = ReducesInBackward(batch.Count);
        // the loss terms' gradients once per step: on rank 0, before the sum over ranks
        if (inBackward && root) TermsBackward();
        double lossSum = 0;
        for (int m = 0; m < share.Count; m += o.MicroBatch)
        {
            // the hook is taken by the forward pass's checkpointed layers, so it is set before the forward
            if (inBackward && m + o.MicroBatch >= share.Count) C.Module.AfterLayerBackward = layer => _dp.ReduceNow(layer.parameters());
            try { lossSum += C.Pass(share.Skip(m).Take(o.MicroBatch).ToList(), tokens, step, first + m); }
            finally { C.Module.AfterLayerBackward = null; }
        }
        if (root && !inBackward) TermsBackward();
        _dp.Collective.Activity(step + 1, "summing gradients");
        _dp.ReduceGradients(toAll: C.Projection is not null);
        C.Projection?.Invoke(C.Trained.Tensors);
        _dp.DropUnowned();
        var (norm, summedLoss) = Norm(lossSum);
        if (!double.IsFinite(summedLoss) || !double.IsFinite(norm))
        {
            C.Optimizer.zero_grad();
            return new StepOutcome(summedLoss, norm, true, $"non-finite {(double.IsFinite(summedLoss) ? "gradient norm" : "loss")}; the step is skipped", 0);
        }
        if (o.MaxGradNorm > 0 && norm > o.MaxGradNorm) ScaleGrads(o.MaxGradNorm / (norm + 1e-6));
        C.OnPhase?.Invoke("step");
        C.Optimizer.step();
        _dp.Collective.Activity(step + 1, "broadcasting weights");
        _dp.BroadcastParameters();
        return new StepOutcome(summedLoss, norm, false, null, (long)C.Collective.Sum(UpdatedHere()));
    }

    /// <summary>The gradient norm and the global batch's summed loss. Each tensor's Σg² is taken where its gradient is
    /// (its owner; zeros elsewhere: exact), summed over the ranks per tensor together with the loss, then added in the
    /// optimizer's order: the norm and the clipping factor are the single process's bit for bit.</summary>
    (double Norm, double LossSum) Norm(double lossSum)
    {
        var trained = C.Trained.Tensors;
        var perTensor = new double[trained.Count + 1];
        for (int i = 0; i < trained.Count; i++)
        {
            using var g = trained[i].grad;
            if (g is not null) perTensor[i] = SquaredNorm(g);
        }
        perTensor[^1] = lossSum;
        perTensor = C.Collective.Sum(perTensor);
        double sq = 0;
        for (int i = 0; i < perTensor.Length - 1; i++) sq += perTensor[i];
        return (Math.Sqrt(sq), perTensor[^1]);
    }

    void ScaleGrads(double factor)
    {
        using var _ = no_grad();
        // An explicit Scalar held for the whole call: TorchSharp may finalize an implicit one (double → Scalar) while
        // the native call still reads it (seen as "toDouble" check failures when trainings run on several threads).
        using Scalar s = factor.ToScalar();
        foreach (var p in C.Trained.Tensors)
        {
            using var g = p.grad;
            g?.mul_(s);
        }
    }

    /// <summary>Rank 0 writes every rank's state, gathered one tensor at a time (a single process writes its own).</summary>
    public override void WriteState(string file)
    {
        try { SafeTensors.Save(file, _dp.GatherState(C.Optimizer.StateWrites())); }
        finally { _dp.EndGather(); }
    }

    public override void ServeState(int step)
    {
        _dp.Collective.Activity(step, "serving the checkpoint");
        _dp.ServeState(C.Optimizer.StateWrites());
    }
}

/// <summary>
/// The step inside the backward pass (one process): the loss terms' gradients first, so that each tensor's gradient is
/// complete when its layer's checkpointed backward ends; then each decoder layer's tensors step and free their
/// gradients right there (when the trained set's gradients are complete per layer), the rest after the backward. The
/// result equals the plain step's for every member (MoFO's selection is per tensor); there is no clipping (the norm is
/// known only at the end), and a tensor whose gradient is not finite is left as it was.
/// </summary>
public sealed class BackwardStep(StepContext c) : StepExecutor(c)
{
    public override StepOutcome Step(int step, IReadOnlyList<TokenizedExample> batch, long tokens)
    {
        var opt = C.Optimizer;
        TermsBackward();
        double sq = 0;
        bool nonFinite = false;
        opt.BeginPartialStep();
        void StepAndFree(Tensor p)
        {
            using var g = p.grad;
            if (g is null) return;
            var s = SquaredNorm(g);
            sq += s;
            if (double.IsFinite(s)) opt.StepParameter(p); else nonFinite = true;
            p.grad = null;
        }
        if (C.Trained.GradientsPerLayer) C.Module.AfterLayerBackward = layer => { foreach (var p in layer.parameters()) StepAndFree(p); };
        double lossSum;
        try { lossSum = C.Pass(batch, tokens, step, 0); }
        finally { C.Module.AfterLayerBackward = null; }
        C.OnPhase?.Invoke("step");
        foreach (var p in C.Trained.Tensors) StepAndFree(p);
        opt.FinishStep();
        double norm = Math.Sqrt(sq);
        bool skipped = !double.IsFinite(lossSum) || !double.IsFinite(norm) || nonFinite;
        var warning = skipped ? $"non-finite {(double.IsFinite(lossSum) ? "gradient" : "loss")}; the tensors with a non-finite gradient were not updated" : null;
        return new StepOutcome(lossSum, norm, skipped, warning, UpdatedHere());
    }
}

/// <summary>The one rule for what a data-parallel step sums in the backward pass, asked by the step and by the plan.</summary>
public static class Reduction
{
    /// <summary>Whether a data-parallel step sums each decoder layer's gradients into their owners in the last
    /// micro-batch's backward: with several ranks, gradient checkpointing (whose recomputation runs a layer's backward
    /// as a unit), a trained set whose gradients are complete per layer, and at least one example per rank (an epoch's
    /// last, smaller batch sums after the backward). A gradient projection (GEM), which needs every gradient on every
    /// rank, also sums after it.</summary>
    public static bool InBackward(int ranks, bool checkpointing, bool gradientsPerLayer, int batchCount) =>
        ranks > 1 && checkpointing && gradientsPerLayer && batchCount >= ranks;

    /// <summary>Whether that frees every gradient a rank does not own (ZeRO-2), as the plan counts it: the sum in the
    /// backward of a step whose share per rank is one micro-batch, so that no earlier micro-batch keeps full gradients.</summary>
    public static bool FreesGradients(int ranks, bool checkpointing, bool gradientsPerLayer, int batchSize, int microBatch) =>
        InBackward(ranks, checkpointing, gradientsPerLayer, batchSize) && (batchSize + ranks - 1) / ranks <= microBatch;
}
