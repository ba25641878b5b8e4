using System.Diagnostics;
using System.Text.Json;
using MoFO.Checkpoints;
using MoFO.Data;
using MoFO.Distributed;
using MoFO.Models;
using MoFO.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Training;

/// <summary>The run stopped because the loss or the gradient stayed non-finite.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);

/// <summary>
/// Fine-tunes a causal LM with any member of the optimizer family (<see cref="TrainingOptions"/>): micro-batches with
/// gradient accumulation to the global batch (the loss is the mean over all trained tokens of the global batch), an
/// LR schedule, gradient clipping, non-finite detection (the step is skipped with a warning; the run stops after
/// several in a row), a JSONL metrics log, periodic and final checkpoints written atomically, and resume that
/// continues bit-identically on CPU (model, optimizer state, step; the data order is a function of seed and epoch,
/// and the schedule a function of the step). Output folder layout: <c>metrics.jsonl</c>, <c>checkpoint/</c>
/// (model.safetensors, optimizer.safetensors, trainer_state.json), <c>model/</c> (the final HF folder),
/// <c>train_summary.json</c>. All data is read and tokenized before anything is written.
/// </summary>
public sealed class Trainer
{
    readonly CausalLM _lm;
    readonly TrainingOptions _o;
    readonly string _out;
    readonly List<TokenizedExample> _rows;
    readonly List<TokenizedExample> _eval;
    readonly int _dropped;

    /// <summary>Called after every step (tests use it to simulate a crash).</summary>
    public Action<StepMetrics>? OnStep { get; set; }

    /// <summary>Called as a step enters each phase: "forward", "backward", "step", and "checkpoint", "final" (the
    /// memory benchmark measures the peak of each).</summary>
    public Action<string>? OnPhase { get; set; }

    /// <summary>Called with the trained tensors after the backward pass of a step, before clipping and the optimizer step:
    /// may rewrite their gradients (GEM projects them here). In a data-parallel run it sees the gradients summed over all
    /// ranks.</summary>
    public Action<IReadOnlyList<TorchSharp.Modules.Parameter>>? AfterBackward { get; set; }

    /// <summary>The ranks this run is spread over: by default the process's job (<see cref="Job.World"/>: MPI under an MPI
    /// launcher, else a single process). With more than one rank each takes its share of every global batch, the
    /// optimizer state is sharded by whole tensors (<see cref="DataParallel"/>), and rank 0 alone writes the run folder.</summary>
    public ICollective? Collective { get; set; }

    ICollective Comm => Collective ??= Job.World;

    /// <summary>A folder for TensorBoard event files (null: none): per step the loss, learning rate, gradient norm, updated
    /// fraction and tokens/s, the distance from the base when it is measured, the held-out loss when it is computed
    /// (tags <c>train/…</c>, <c>eval/loss</c>). Rank 0 alone writes.</summary>
    public string? TensorBoardDir { get; set; }

    public Trainer(CausalLM model, IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample>? eval, TrainingOptions options, string outputDir)
    {
        options.Validate();
        var expected = options.Precision == Precision.BFloat16 ? ScalarType.BFloat16 : ScalarType.Float32;
        if (model.Module.DType != expected)
            throw new OptionException(nameof(TrainingOptions.Precision),
                $"Precision {options.Precision}: the model's weights are {model.Module.DType}; load it in {expected} (ModelLoader.Load(path, dtype: {expected}))");
        _lm = model;
        _o = options;
        _out = Path.GetFullPath(outputDir);
        var tokenized = train.Select(e => Tokenized.Encode(e, model.Tokenizer, options.MaxLength)).ToList();
        _dropped = tokenized.RemoveAll(t => PredictedTokens(t) == 0);
        if (tokenized.Count == 0)
            throw new ArgumentException($"no training example keeps a trained token within max length {options.MaxLength} (all {train.Count} dropped)");
        _rows = options.Pack ? Tokenized.Pack(tokenized, options.MaxLength) : tokenized;
        _eval = (eval ?? []).Select(e => Tokenized.Encode(e, model.Tokenizer, options.MaxLength)).Where(t => PredictedTokens(t) > 0).ToList();
    }

    public int Examples => _rows.Count;
    public int StepsPerEpoch => (_rows.Count + _o.BatchSize - 1) / _o.BatchSize;
    public int TotalSteps => _o.Steps ?? StepsPerEpoch * _o.Epochs;
    public string CheckpointDir => Path.Combine(_out, "checkpoint");
    public string MetricsFile => Path.Combine(_out, "metrics.jsonl");

    /// <summary>Labels that a position predicts: positions t ≥ 1 whose label is not ignored.</summary>
    static int PredictedTokens(TokenizedExample t) => t.Labels.Skip(1).Count(l => l != Tokenized.Ignore);

    /// <summary>The examples of a step: a slice of its epoch's seeded permutation.</summary>
    public IReadOnlyList<TokenizedExample> BatchOf(int step, out int epoch)
    {
        epoch = step / StepsPerEpoch;
        int pos = step % StepsPerEpoch;
        var order = DataOrder.Epoch(_rows.Count, _o.Seed, epoch);
        return order.Skip(pos * _o.BatchSize).Take(_o.BatchSize).Select(i => _rows[i]).ToList();
    }

    /// <summary>Sum of token cross-entropies of a batch and the number of predicted tokens. When the batch's logits would
    /// exceed <see cref="ChunkedLoss.ChunkEntries"/> entries, the output layer and the loss run over chunks of the
    /// predicting positions (<see cref="ChunkedLoss"/>): the full logits never exist at once.</summary>
    static (Tensor Sum, long Count) LossSum(CausalLM lm, Batch b)
    {
        long vocab = lm.Module.Config.VocabSize;
        if (ChunkedLoss.Needed(b.InputIds.shape[0] * (b.InputIds.shape[1] - 1), vocab))
        {
            var device = lm.Module.Device;
            var hidden = lm.Module.Hidden(b.InputIds.to(device), b.AttentionMask.to(device));
            return ChunkedLoss.Sum(lm.Module.Head, hidden, b.Labels, ChunkedLoss.TokensPerChunk(vocab), Tokenized.Ignore);
        }
        var logits = lm.Logits(b.InputIds, b.AttentionMask);
        var v = logits.shape[^1];
        var shifted = logits[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32);
        var labels = b.Labels[.., 1..].reshape(-1).to(logits.device);
        var count = labels.ne(Tokenized.Ignore).sum().item<long>();
        var sum = nn.functional.cross_entropy(shifted, labels, ignore_index: Tokenized.Ignore, reduction: nn.Reduction.Sum);
        return (sum, count);
    }

    /// <summary>Mean token loss on the held-out examples (the first <paramref name="first"/> of them when given).</summary>
    public double EvalLoss(int? first = null)
    {
        var eval = first is int n && n < _eval.Count ? _eval.Take(n).ToList() : _eval;
        if (eval.Count == 0) return double.NaN;
        using var _ = no_grad();
        using var mode = _lm.Module.EvalMode();
        double sum = 0; long count = 0;
        int pad = _lm.Tokenizer.EosId ?? 0;
        var comm = Comm;
        for (int i = 0, j = 0; i < eval.Count; i += _o.MicroBatch, j++)
        {
            if (j % comm.Size != comm.Rank) continue;
            using var scope = NewDisposeScope();
            using var b = Tokenized.Pad(eval.Skip(i).Take(_o.MicroBatch).ToList(), pad);
            var (s, c) = LossSum(_lm, b);
            sum += s.item<float>(); count += c;
        }
        if (comm.Size > 1)
        {
            var all = comm.Sum(sum, count);
            (sum, count) = (all[0], (long)all[1]);
        }
        return sum / Math.Max(1, count);
    }

    /// <summary>Trains: chooses what is trained (<see cref="TrainedSet"/>) and how a step runs (<see cref="StepExecutor"/>)
    /// once, then loops over the steps; writes the final checkpoint, the fine-tuned model and the summary.</summary>
    public TrainResult Run(bool resume = false, CancellationToken cancel = default)
    {
        var module = _lm.Module;
        module.GradientCheckpointing = _o.GradientCheckpointing;
        module.train();
        using var trained = TrainedSet.Attach(_lm, _o.Method, _o.Seed);
        var (opt, terms) = Methods.Create(trained, _o);
        try
        {
            var exec = StepExecutor.For(new StepContext(module, trained, opt, terms, _o, Comm, Pass(trained), OnPhase, AfterBackward));
            return Loop(trained, opt, terms, exec, resume, cancel);
        }
        finally
        {
            opt.Dispose();
            foreach (var t in terms) (t as IDisposable)?.Dispose();
        }
    }

    /// <summary>The training loop, then the run's end (<see cref="Finish"/>).</summary>
    TrainResult Loop(TrainedSet trained, BlockOptimizer opt, IReadOnlyList<ILossTerm> terms, StepExecutor exec, bool resume, CancellationToken cancel)
    {
        bool root = Comm.Rank == 0;
        // the distance from the base weights (the trained set's measure: adapters' update, θ0 in memory, or the base on disk)
        using var baseDistance = trained.Distance(terms);
        int distanceEvery = _o.DistanceEvery > 0 ? _o.DistanceEvery : baseDistance.EveryStep ? 1 : 50;
        int start = Start(trained, exec, resume);
        // what the member chose before training (Spectrum's spectrum.json)
        if (root) foreach (var (name, text) in opt.RunFiles()) AtomicFile.WriteAllText(Path.Combine(_out, name), text);
        // the watch's curve: the held-out loss of the base on the probe set (every rank computes it), then at each watch
        double? baseHeldOut = start == 0 && _o.WatchForgetting.Count > 0 && _eval.Count > 0 ? EvalLoss(ForgettingWatch.ProbeExamples) : null;
        var watch = ForgettingWatch.Open(_lm, trained, _o, _eval, _out, start == 0, () => baseDistance.L2(), root, () => Comm.Sum(0.0), baseHeldOut);
        BudgetStop? budgetStop = null;
        int total = TotalSteps;
        int warmup = (int)Math.Ceiling(_o.WarmupRatio * total);
        long numel = opt.Blocks.Sum(b => b.Numel);
        var clock = Stopwatch.StartNew();
        using var progress = root && _o.ShowProgress && ConsoleProgress.Enabled ? new ConsoleProgress("train", total, "steps") : null;
        progress?.Advance(start);
        int bad = 0;
        double? lastLoss = null;
        // a fresh run starts at the base weights (distance 0); a resumed one is measured again at its next interval
        double distance = baseDistance.EveryStep ? baseDistance.L2() : start == 0 ? 0.0 : double.NaN;
        bool interrupted = false;
        int step = start;
        using var log = root ? new StreamWriter(MetricsFile, append: true) : null;
        var board = root && TensorBoardDir is not null ? TensorBoard.Open(TensorBoardDir) : null;
        double lastElapsed = clock.Elapsed.TotalSeconds;
        for (; step < total; step++)
        {
            var lr = LrSchedule.At(_o.Schedule, _o.LearningRate, step, total, warmup);
            opt.LearningRate = lr;
            opt.zero_grad();
            var batch = BatchOf(step, out var epoch);
            long tokens = batch.Sum(t => (long)PredictedTokens(t));
            var r = exec.Step(step, batch, tokens);
            double loss = r.LossSum / tokens;
            bad = r.Skipped ? bad + 1 : 0;
            if (r.Skipped) Console.Error.WriteLine($"warning: step {step + 1}: {r.Warning} ({bad} in a row)");
            else lastLoss = loss;
            bool measure = root && ((step + 1) % distanceEvery == 0 || step + 1 == total || (cancel.IsCancellationRequested && step + 1 < total));
            double? stepDistance = measure ? distance = baseDistance.L2() : null;
            double? evalLoss = _o.EvalEvery > 0 && (step + 1) % _o.EvalEvery == 0 ? EvalLoss() : null;
            var (forgetting, watchSeconds, stop) = Watch(watch, trained, step + 1, total);
            var metrics = new StepMetrics(step + 1, epoch, loss, lr, r.Norm, stepDistance, r.Skipped ? 0 : (double)r.Updated / numel, tokens,
                                          clock.Elapsed.TotalSeconds, r.Skipped, evalLoss, forgetting, watchSeconds);
            log?.WriteLine(RunFolder.MetricsLine(metrics));
            log?.Flush();
            if (board is not null)
            {
                var now = clock.Elapsed.TotalSeconds;
                TensorBoard.Write(board, metrics, tokens / Math.Max(1e-9, now - lastElapsed));
                lastElapsed = now;
            }
            if (bad >= _o.MaxBadSteps)
            {
                SaveCheckpoint(trained, exec, step);
                throw new TrainingDivergedException($"{bad} consecutive steps with a non-finite loss or gradient (last at step {step + 1}); the run stopped. A checkpoint of step {step} is in {CheckpointDir}. Lower the learning rate.");
            }
            if (progress is not null) { progress.Status = $"loss {loss:F4}, lr {lr:G3}"; progress.Advance(); }
            if (_o.SaveEvery > 0 && (step + 1) % _o.SaveEvery == 0 && step + 1 < total) SaveCheckpoint(trained, exec, step + 1);
            OnStep?.Invoke(metrics);
            if (stop is not null)
            {
                budgetStop = stop;
                step++;
                break;
            }
            // a cancellation on any rank stops every rank after the same step
            if (Comm.Sum(cancel.IsCancellationRequested ? 1 : 0) > 0 && step + 1 < total)
            {
                interrupted = true;
                step++;
                break;
            }
        }
        log?.Dispose();
        return Finish(trained, opt, exec, step, total, interrupted, lastLoss, distance, clock, budgetStop, watch);
    }

    /// <summary>The forgetting watch after <paramref name="step"/> (1-based), when due: rank 0 measures (every rank holds
    /// the same weights) and decides for all whether a budget is exceeded; within the budget its weights are kept. Returns
    /// the measures, the seconds the watch took and the budget stop (null: go on). The measures include the watch's
    /// learning side, the held-out loss on the probe set (<see cref="ForgettingWatch.HeldOutKey"/>; every rank computes it).</summary>
    (IReadOnlyDictionary<string, double>? Values, double? Seconds, BudgetStop? Stop) Watch(ForgettingWatch? watch, TrainedSet trained, int step, int total)
    {
        if (watch is null || !watch.Due(step, total)) return (null, null, null);
        var clock = Stopwatch.StartNew();
        double? heldOut = _eval.Count > 0 ? EvalLoss(ForgettingWatch.ProbeExamples) : null;
        bool root = Comm.Rank == 0;
        var values = root ? watch.MeasureNow() : null;
        if (values is not null && heldOut is double h) values[ForgettingWatch.HeldOutKey] = h;
        var exceeded = values is null ? null : watch.Exceeded(values);
        if (Comm.Sum(exceeded is null ? 0 : 1) > 0)
        {
            var (m, rise, limit) = exceeded ?? ("", double.NaN, double.NaN);
            if (root) Console.Error.WriteLine($"forgetting budget: {m} rose by {rise:G4} over the base by step {step} (budget {limit:G4}); the run stops and keeps the model of step {watch.KeptStep}");
            return (values, clock.Elapsed.TotalSeconds, new BudgetStop(m, rise, limit, step, watch.KeptStep));
        }
        if (root && _o.ForgettingBudget.Count > 0) watch.KeepWithin(step, trained);
        return (values, clock.Elapsed.TotalSeconds, null);
    }

    /// <summary>The step a run starts at: 0, or a resumed checkpoint's (whose trained tensors and optimizer state are read
    /// back). Creates the run folder and keeps the metrics of the steps before the start.</summary>
    int Start(TrainedSet trained, StepExecutor exec, bool resume)
    {
        int start = 0;
        var stateFile = Path.Combine(CheckpointDir, "trainer_state.json");
        bool root = Comm.Rank == 0;
        if (resume)
        {
            if (root && !File.Exists(stateFile) && Directory.Exists(CheckpointDir + ".old")) Directory.Move(CheckpointDir + ".old", CheckpointDir);
            Comm.Sum(0.0); // the other ranks look for the checkpoint after rank 0 has put it back
            if (!File.Exists(stateFile)) throw new RunFolderException($"{stateFile}: no checkpoint to resume from in {_out}");
            start = LoadCheckpoint(trained, exec);
        }
        else if (File.Exists(stateFile))
            throw new RunFolderException($"{_out} already holds a checkpoint: resume it (resume = true) or choose another output folder", remedy: "Resume");
        if (root)
        {
            Directory.CreateDirectory(_out);
            TruncateMetrics(start);
        }
        return start;
    }

    /// <summary>The run's end: the last checkpoint; unless interrupted, the held-out loss and the fine-tuned model (the
    /// trained set finishes: adapters merged) written atomically into <c>model/</c>; the summary.</summary>
    TrainResult Finish(TrainedSet trained, BlockOptimizer opt, StepExecutor exec, int step, int total, bool interrupted,
                       double? lastLoss, double distance, Stopwatch clock, BudgetStop? budget, ForgettingWatch? watch)
    {
        bool root = Comm.Rank == 0;
        OnPhase?.Invoke("checkpoint");
        SaveCheckpoint(trained, exec, step);
        // a budget stop leaves with the weights of the last watch within the budget
        if (budget is not null) trained.LoadCheckpoint(watch!.WithinFile);
        string? modelDir = null;
        double? evalLoss = null;
        if (!interrupted)
        {
            evalLoss = _eval.Count > 0 ? EvalLoss() : null;
            modelDir = Path.Combine(_out, "model");
        }
        var touchedFraction = trained.TouchedFraction(opt, Comm);
        // the in-memory model leaves the run as the fine-tuned one
        trained.Finish();
        if (modelDir is not null && root)
        {
            var tmp = Path.Combine(_out, $".model-{Guid.NewGuid():N}");
            OnPhase?.Invoke("final");
            trained.WriteModel(_lm, tmp);
            if (Directory.Exists(modelDir)) Directory.Delete(modelDir, true);
            Directory.Move(tmp, modelDir);
        }
        var result = new TrainResult(_o.Method.ToString(), _o, step, total, interrupted, lastLoss, evalLoss, distance, _rows.Count, _dropped,
                                     touchedFraction, clock.Elapsed.TotalSeconds, _out, modelDir, MemoryPlanner.PeakResident(),
                                     budget is null ? null : "forgetting budget", budget);
        if (root) new RunFolder(_out).WriteSummary(result);
        return result;
    }

    /// <summary>The forward and backward pass of one micro-batch, its loss scaled by the step's token count; returns the
    /// micro-batch's summed token loss. The trained set is told the micro-batch's seed first (adapter dropout: a function
    /// of the run's seed, the step and the micro-batch's first example, so that a resume and every rank layout draw the
    /// same masks).</summary>
    MicroBatchPass Pass(TrainedSet trained) => (examples, tokens, step, first) =>
    {
        using var scope = NewDisposeScope();
        trained.BeginMicroBatch(unchecked((_o.Seed * 1_000_003L + step) * 65_537L + first));
        using var b = Tokenized.Pad(examples.ToList(), _lm.Tokenizer.EosId ?? 0);
        OnPhase?.Invoke("forward");
        var (sum, _) = LossSum(_lm, b);
        OnPhase?.Invoke("backward");
        using (Scalar denominator = ((double)tokens).ToScalar()) (sum / denominator).backward();
        return sum.item<float>();
    };

    /// <summary>Identity of the run: a resume must use the same settings.</summary>
    string Fingerprint() => JsonSerializer.Serialize(_o with { ShowProgress = true, SaveEvery = 0, EvalEvery = 0, DistanceEvery = 0 }, FingerprintJson) + $"|rows={_rows.Count}";

    static readonly JsonSerializerOptions FingerprintJson = new(RunFolder.Json) { WriteIndented = false };

    /// <summary>Writes the checkpoint atomically: the trained tensors, the optimizer state and the step. In a data-parallel
    /// run every rank calls it: rank 0 writes, gathering the optimizer state of the tensors other ranks own one tensor at a
    /// time, and the others serve their shards.</summary>
    void SaveCheckpoint(TrainedSet trained, StepExecutor exec, int step)
    {
        if (Comm.Rank != 0)
        {
            exec.ServeState(step);
            return;
        }
        Directory.CreateDirectory(_out);
        var tmp = Path.Combine(_out, $".checkpoint-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        // both streamed tensor by tensor from the model's and the optimizer's own memory (no copy of the state)
        SafeTensors.Save(Path.Combine(tmp, trained.CheckpointFile), trained.CheckpointTensors());
        exec.WriteState(Path.Combine(tmp, "optimizer.safetensors"));
        AtomicFile.WriteAllText(Path.Combine(tmp, "trainer_state.json"), JsonSerializer.Serialize(new TrainerState(step, Fingerprint())));
        var old = CheckpointDir + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(CheckpointDir)) Directory.Move(CheckpointDir, old);
        Directory.Move(tmp, CheckpointDir);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    sealed record TrainerState(int Step, string Fingerprint);

    int LoadCheckpoint(TrainedSet trained, StepExecutor exec)
    {
        var stateFile = Path.Combine(CheckpointDir, "trainer_state.json");
        var state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(stateFile))
            ?? throw new CheckpointException($"{stateFile}: empty trainer state");
        if (state.Fingerprint != Fingerprint())
            throw new RunFolderException($"{stateFile}: the checkpoint was written by a run with other settings or data; resume with the same options (checkpoint: {state.Fingerprint}; now: {Fingerprint()})");
        trained.LoadCheckpoint(Path.Combine(CheckpointDir, trained.CheckpointFile));
        // the optimizer state is read one tensor at a time (never a second copy of the moments)
        using (var file = SafeTensorFile.Open(Path.Combine(CheckpointDir, "optimizer.safetensors")))
        using (var saved = new StreamedTensors(file))
            exec.Optimizer.load_state_dict(saved);
        return state.Step;
    }

    /// <summary>Keeps the metrics lines of steps up to <paramref name="step"/> (a resume rewrites the rest).</summary>
    void TruncateMetrics(int step)
    {
        if (!File.Exists(MetricsFile)) return;
        var keep = File.ReadAllLines(MetricsFile).Where(l =>
        {
            using var d = JsonDocument.Parse(l);
            return d.RootElement.GetProperty("step").GetInt32() <= step;
        }).ToList();
        AtomicFile.WriteAllLines(MetricsFile, keep);
    }
}
