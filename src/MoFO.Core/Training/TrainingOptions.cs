namespace MoFO.Training;

/// <summary>The fine-tuning methods of the paper: the optimizer family and the regularized baselines.</summary>
public enum Method { MoFO, AdamW, Lion, HFT, L1, L2, GradBCD, RandomBCD }

public enum Schedule { Constant, Linear, Cosine }

/// <summary>
/// Everything a fine-tuning run is, apart from the model and the data. Defaults follow the MoFO authors' scripts
/// (lr 2e-5, cosine, no warmup, no weight decay, α = 15 %); the paper's regularization strengths are λ1 = 1e-6 and
/// λ2 = 1e-3. Give either <see cref="Epochs"/> or <see cref="Steps"/>.
/// </summary>
public sealed record TrainingOptions
{
    public Method Method { get; init; } = Method.MoFO;
    public double Alpha { get; init; } = 0.15;
    public double LearningRate { get; init; } = 2e-5;
    public double WeightDecay { get; init; }
    public Schedule Schedule { get; init; } = Schedule.Cosine;
    public double WarmupRatio { get; init; }
    /// <summary>Epochs over the data; ignored when <see cref="Steps"/> is set.</summary>
    public int Epochs { get; init; } = 1;
    /// <summary>Optimizer steps; overrides <see cref="Epochs"/>.</summary>
    public int? Steps { get; init; }
    /// <summary>Examples (or packed rows) per optimizer step.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Examples per forward/backward pass; the gradient is accumulated over BatchSize / MicroBatchSize passes.
    /// 0 (the default) means the whole batch at once.</summary>
    public int MicroBatchSize { get; init; }

    /// <summary>The micro-batch size in effect.</summary>
    public int MicroBatch => MicroBatchSize > 0 ? MicroBatchSize : BatchSize;
    public int MaxLength { get; init; } = 512;
    public bool Pack { get; init; }
    /// <summary>Gradient clipping by global norm; 0 disables it.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public double L1Lambda { get; init; } = 1e-6;
    public double L2Lambda { get; init; } = 1e-3;
    public long Seed { get; init; } = 42;
    /// <summary>Write a checkpoint every this many steps (0: only at the end and on interruption).</summary>
    public int SaveEvery { get; init; }
    /// <summary>Evaluate the held-out loss every this many steps (0: only at the end).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Stop after this many consecutive steps with a non-finite loss or gradient.</summary>
    public int MaxBadSteps { get; init; } = 5;
    public bool ShowProgress { get; init; } = true;

    public void Validate()
    {
        void Check(bool ok, string what) { if (!ok) throw new ArgumentException(what); }
        Check(LearningRate >= 0 && double.IsFinite(LearningRate), $"learning rate {LearningRate}: must be a finite number ≥ 0");
        Check(Alpha > 0 && Alpha <= 1, $"alpha {Alpha}: must lie in (0, 1]");
        Check(BatchSize >= 1, $"batch size {BatchSize}: must be at least 1");
        Check(MicroBatchSize >= 0 && BatchSize % MicroBatch == 0, $"micro-batch size {MicroBatchSize}: must divide the batch size {BatchSize}");
        Check(Steps is null || Steps >= 1, $"steps {Steps}: must be at least 1");
        Check(Epochs >= 1, $"epochs {Epochs}: must be at least 1");
        Check(MaxLength >= 2, $"max length {MaxLength}: must be at least 2");
        Check(WarmupRatio >= 0 && WarmupRatio < 1, $"warmup ratio {WarmupRatio}: must lie in [0, 1)");
        Check(MaxGradNorm >= 0, $"max grad norm {MaxGradNorm}: must be ≥ 0");
        Check(WeightDecay >= 0, $"weight decay {WeightDecay}: must be ≥ 0");
        Check(SaveEvery >= 0 && EvalEvery >= 0, "save/eval intervals must be ≥ 0");
        Check(MaxBadSteps >= 1, $"max bad steps {MaxBadSteps}: must be at least 1");
    }

    public int AccumulationSteps => BatchSize / MicroBatch;

    /// <summary>The defaults (for F# record-copy expressions).</summary>
    public static TrainingOptions Default { get; } = new();

    public static Method ParseMethod(string name) => name.ToLowerInvariant() switch
    {
        "mofo" => Method.MoFO,
        "adamw" or "adam" or "full-ft" => Method.AdamW,
        "lion" => Method.Lion,
        "hft" => Method.HFT,
        "l1" => Method.L1,
        "l2" => Method.L2,
        "grad-bcd" => Method.GradBCD,
        "random-bcd" => Method.RandomBCD,
        _ => throw new ArgumentException($"--method {name}: unknown (expected mofo, adamw, lion, hft, l1, l2, grad-bcd or random-bcd)"),
    };

    public static Schedule ParseSchedule(string name) => name.ToLowerInvariant() switch
    {
        "constant" => Schedule.Constant,
        "linear" => Schedule.Linear,
        "cosine" => Schedule.Cosine,
        _ => throw new ArgumentException($"--schedule {name}: unknown (expected constant, linear or cosine)"),
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
