namespace MoFO.Training;

public enum Schedule { Constant, Linear, Cosine }

/// <summary>
/// Everything a fine-tuning run is, apart from the model and the data. Defaults: <see cref="Defaults"/> (the MoFO
/// authors' scripts). Give either <see cref="Epochs"/> or <see cref="Steps"/>.
/// </summary>
public sealed record TrainingOptions
{
    /// <summary>The optimizer member, its update fraction and the loss terms (<see cref="Methods"/>).</summary>
    public MethodSpec Method { get; init; } = new();
    public double LearningRate { get; init; } = Defaults.LearningRate;
    public double WeightDecay { get; init; } = Defaults.WeightDecay;
    public Schedule Schedule { get; init; } = Defaults.Schedule;
    public double WarmupRatio { get; init; } = Defaults.WarmupRatio;
    /// <summary>Epochs over the data; ignored when <see cref="Steps"/> is set.</summary>
    public int Epochs { get; init; } = Defaults.Epochs;
    /// <summary>Optimizer steps; overrides <see cref="Epochs"/>.</summary>
    public int? Steps { get; init; }
    /// <summary>Examples (or packed rows) per optimizer step.</summary>
    public int BatchSize { get; init; } = Defaults.BatchSize;
    /// <summary>Examples per forward/backward pass; the gradient is accumulated over BatchSize / MicroBatchSize passes.
    /// 0 (the default) means the whole batch at once.</summary>
    public int MicroBatchSize { get; init; }

    /// <summary>The micro-batch size in effect.</summary>
    public int MicroBatch => MicroBatchSize > 0 ? MicroBatchSize : BatchSize;
    public int MaxLength { get; init; } = Defaults.MaxLength;
    public bool Pack { get; init; }
    /// <summary>Gradient clipping by global norm; 0 disables it.</summary>
    public double MaxGradNorm { get; init; } = Defaults.MaxGradNorm;
    public long Seed { get; init; } = Defaults.Seed;
    /// <summary>Write a checkpoint every this many steps (0: only at the end and on interruption).</summary>
    public int SaveEvery { get; init; }
    /// <summary>Evaluate the held-out loss every this many steps (0: only at the end).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Measure the distance from the base weights every this many steps (0: every step for models below
    /// <see cref="Defaults.SmallModel"/> parameters, whose copy of θ0 is in memory; every 50 steps for larger ones, read from
    /// the base checkpoint on disk). The last step is always measured.</summary>
    public int DistanceEvery { get; init; }
    /// <summary>Stop after this many consecutive steps with a non-finite loss or gradient.</summary>
    public int MaxBadSteps { get; init; } = Defaults.MaxBadSteps;
    public bool ShowProgress { get; init; } = true;
    /// <summary>The dtype of weights, gradients and activations; the model must be loaded in it (the loss and the
    /// optimizer moments stay float32).</summary>
    public Precision Precision { get; init; } = Precision.Float32;
    /// <summary>bfloat16 runs: how the float32 update reaches the bfloat16 weights (stochastic rounding by default; float32
    /// master weights, or round-to-nearest for comparisons).</summary>
    public MoFO.Optim.BFloat16Update BFloat16Update { get; init; } = MoFO.Optim.BFloat16Update.StochasticRounding;

    /// <summary>How the optimizer keeps its moments: float32 (default), or blockwise 8-bit (≈ a byte per entry and moment
    /// instead of 4; <see cref="MoFO.Optim.QuantizedMoment"/>).</summary>
    public MoFO.Optim.MomentStorage OptimizerState { get; init; } = MoFO.Optim.MomentStorage.Float32;

    /// <summary>Forgetting measures to watch during training (<see cref="ForgettingWatch.Measures"/>: pretrain-proxy,
    /// kl-to-base, distance); empty: none.</summary>
    public IReadOnlyList<string> WatchForgetting { get; init; } = [];
    /// <summary>Watch every this many steps (and at the end).</summary>
    public int WatchEvery { get; init; } = Defaults.WatchEvery;
    /// <summary>The largest rise over the base allowed per watched measure; a watch that finds more stops the run and keeps
    /// the weights of the last watch within the budget (<see cref="ForgettingWatch"/>). Empty: no budget.</summary>
    public IReadOnlyDictionary<string, double> ForgettingBudget { get; init; } = new Dictionary<string, double>();

    /// <summary>bfloat16 runs with float32 master weights in the optimizer.</summary>
    public bool MasterWeights => Precision == Precision.BFloat16 && BFloat16Update == MoFO.Optim.BFloat16Update.MasterWeights;
    /// <summary>Recompute each decoder layer's activations in the backward pass instead of keeping them.</summary>
    public bool GradientCheckpointing { get; init; }
    /// <summary>Step each decoder layer's tensors as soon as the backward pass has completed their gradients, and free
    /// those gradients at once (the gradients of the whole model are never resident together). MoFO's selection is per
    /// tensor, so the result equals the plain step's (randomized BCD draws its subsets in the stepping order). Needs
    /// <see cref="GradientCheckpointing"/> (which runs each layer's backward as a unit), one micro-batch per step (no
    /// accumulation) and no global-norm clipping (<see cref="MaxGradNorm"/> = 0: the global norm is known only after every
    /// tensor has stepped). A tensor whose gradient is not finite is not updated, and the step counts as a bad one.</summary>
    public bool StepInBackward { get; init; }
    /// <summary>Keep a bit per entry to report the fraction of entries ever updated; null: only for models below
    /// <see cref="Defaults.SmallModel"/> parameters.</summary>
    public bool? TrackTouched { get; init; }

    /// <summary>Checks every field; an <see cref="OptionException"/> names the first bad one and its value.</summary>
    public void Validate()
    {
        void Check(bool ok, string field, string what) { if (!ok) throw new OptionException(field, what); }
        Check(LearningRate >= 0 && double.IsFinite(LearningRate), nameof(LearningRate), $"LearningRate {LearningRate}: must be a finite number ≥ 0");
        Methods.Validate(Method);
        Check(BatchSize >= 1, nameof(BatchSize), $"BatchSize {BatchSize}: must be at least 1");
        Check(MicroBatchSize >= 0 && BatchSize % MicroBatch == 0, nameof(MicroBatchSize), $"MicroBatchSize {MicroBatchSize}: must divide BatchSize {BatchSize}");
        Check(Steps is null || Steps >= 1, nameof(Steps), $"Steps {Steps}: must be at least 1");
        Check(Epochs >= 1, nameof(Epochs), $"Epochs {Epochs}: must be at least 1");
        Check(MaxLength >= 2, nameof(MaxLength), $"MaxLength {MaxLength}: must be at least 2");
        Check(WarmupRatio >= 0 && WarmupRatio < 1, nameof(WarmupRatio), $"WarmupRatio {WarmupRatio}: must lie in [0, 1)");
        Check(MaxGradNorm >= 0, nameof(MaxGradNorm), $"MaxGradNorm {MaxGradNorm}: must be ≥ 0");
        Check(WeightDecay >= 0, nameof(WeightDecay), $"WeightDecay {WeightDecay}: must be ≥ 0");
        Check(SaveEvery >= 0, nameof(SaveEvery), $"SaveEvery {SaveEvery}: must be ≥ 0");
        Check(EvalEvery >= 0, nameof(EvalEvery), $"EvalEvery {EvalEvery}: must be ≥ 0");
        Check(DistanceEvery >= 0, nameof(DistanceEvery), $"DistanceEvery {DistanceEvery}: must be ≥ 0");
        if (StepInBackward)
        {
            Check(GradientCheckpointing, nameof(StepInBackward), "StepInBackward needs GradientCheckpointing (each layer's backward then runs as a unit)");
            Check(AccumulationSteps == 1, nameof(StepInBackward), $"StepInBackward needs one micro-batch per step (MicroBatchSize {MicroBatchSize}, BatchSize {BatchSize}): accumulated gradients must be complete before a tensor steps");
            Check(MaxGradNorm == 0, nameof(StepInBackward), $"StepInBackward needs MaxGradNorm = 0 (it is {MaxGradNorm}): global-norm clipping needs every gradient before any tensor steps");
        }
        Check(MaxBadSteps >= 1, nameof(MaxBadSteps), $"MaxBadSteps {MaxBadSteps}: must be at least 1");
        foreach (var m in WatchForgetting)
            Check(ForgettingWatch.IsMeasure(m), nameof(WatchForgetting), $"WatchForgetting {m}: unknown (expected {ForgettingWatch.Described})");
        Check(WatchEvery >= 1, nameof(WatchEvery), $"WatchEvery {WatchEvery}: must be at least 1");
        foreach (var (m, limit) in ForgettingBudget)
        {
            Check(WatchForgetting.Contains(m), nameof(ForgettingBudget), $"ForgettingBudget {m}: the measure is not watched (add it to WatchForgetting)");
            if (ForgettingWatch.HigherIsBetter(m))
                Check(limit <= 0 && double.IsFinite(limit), nameof(ForgettingBudget), $"ForgettingBudget {m}={limit}: an accuracy's budget is the drop allowed, in points: a number ≤ 0 (e.g. -2)");
            else
                Check(limit >= 0 && double.IsFinite(limit), nameof(ForgettingBudget), $"ForgettingBudget {m}={limit}: the allowed rise must be a finite number ≥ 0");
        }
    }

    public int AccumulationSteps => BatchSize / MicroBatch;

    /// <summary>A copy with the scale settings (for callers without C#'s <c>with</c>, such as F#).</summary>
    public TrainingOptions WithScale(Precision precision, MoFO.Optim.BFloat16Update update, bool gradientCheckpointing, bool? trackTouched,
                                     bool stepInBackward = false) =>
        this with { Precision = precision, BFloat16Update = update, GradientCheckpointing = gradientCheckpointing, TrackTouched = trackTouched,
                    StepInBackward = stepInBackward };

    /// <summary>A copy with a forgetting watch and budget (for callers without C#'s <c>with</c>, such as F#).</summary>
    public TrainingOptions WithWatch(IReadOnlyList<string> measures, int every, IReadOnlyDictionary<string, double> budget) =>
        this with { WatchForgetting = measures, WatchEvery = every, ForgettingBudget = budget };

    /// <summary>A copy with another moment storage (for callers without C#'s <c>with</c>, such as F#).</summary>
    public TrainingOptions WithOptimizerState(MoFO.Optim.MomentStorage storage) => this with { OptimizerState = storage };

    /// <summary>The defaults (for F# record-copy expressions).</summary>
    public static TrainingOptions Default { get; } = new();

    public static Schedule ParseSchedule(string name) => name.ToLowerInvariant() switch
    {
        "constant" => Schedule.Constant,
        "linear" => Schedule.Linear,
        "cosine" => Schedule.Cosine,
        _ => throw new OptionException(nameof(Schedule), $"Schedule {name}: unknown (expected constant, linear or cosine)"),
    };
}

/// <summary>The learning rate of a step, as HuggingFace's schedulers compute it: during warmup baseLr·step/warmup,
/// then constant, linear decay to 0, or cosine decay to 0 over the remaining steps.</summary>
public static class LrSchedule
{
    /// <param name="schedule">the schedule's shape.</param>
    /// <param name="baseLr">the peak learning rate.</param>
    /// <param name="step">0-based index of the optimizer step about to be taken.</param>
    /// <param name="totalSteps">the run's optimizer steps.</param>
    /// <param name="warmupSteps">steps of linear warmup.</param>
    public static double At(Schedule schedule, double baseLr, int step, int totalSteps, int warmupSteps)
    {
        if (step < warmupSteps) return baseLr * step / Math.Max(1, warmupSteps);
        double progress = (double)(step - warmupSteps) / Math.Max(1, totalSteps - warmupSteps);
        return schedule switch
        {
            Schedule.Constant => baseLr,
            Schedule.Linear => baseLr * Math.Max(0.0, 1 - progress),
            Schedule.Cosine => baseLr * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1.0, progress))),
            _ => throw new ArgumentOutOfRangeException(nameof(schedule)),
        };
    }
}
