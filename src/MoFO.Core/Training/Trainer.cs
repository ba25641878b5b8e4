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

    /// <summary>Called after the backward pass of a step, before clipping and the optimizer step: may rewrite the
    /// gradients (GEM projects them here). In a data-parallel run it sees the gradients summed over all ranks.</summary>
    public Action<CausalLMModule>? AfterBackward { get; set; }

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

    /// <summary>Creates the optimizer and loss terms of the method for the model's parameters (<see cref="Methods.Create"/>).</summary>
    public static (BlockOptimizer Optimizer, IReadOnlyList<ILossTerm> Terms) CreateOptimizer(CausalLMModule module, TrainingOptions o)
        => Methods.Create(module, o);

    /// <summary>Sum of token cross-entropies of a batch and the number of predicted tokens.</summary>
    static (Tensor Sum, long Count) LossSum(CausalLM lm, Batch b)
    {
        var logits = lm.Logits(b.InputIds, b.AttentionMask);
        var v = logits.shape[^1];
        var shifted = logits[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32);
        var labels = b.Labels[.., 1..].reshape(-1).to(logits.device);
        var count = labels.ne(Tokenized.Ignore).sum().item<long>();
        var sum = nn.functional.cross_entropy(shifted, labels, ignore_index: Tokenized.Ignore, reduction: nn.Reduction.Sum);
        return (sum, count);
    }

    /// <summary>Mean token loss on the held-out examples.</summary>
    public double EvalLoss()
    {
        if (_eval.Count == 0) return double.NaN;
        using var _ = no_grad();
        using var mode = _lm.Module.EvalMode();
        double sum = 0; long count = 0;
        int pad = _lm.Tokenizer.EosId ?? 0;
        var comm = Comm;
        for (int i = 0, j = 0; i < _eval.Count; i += _o.MicroBatch, j++)
        {
            if (j % comm.Size != comm.Rank) continue;
            using var scope = NewDisposeScope();
            using var b = Tokenized.Pad(_eval.Skip(i).Take(_o.MicroBatch).ToList(), pad);
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

    public TrainResult Run(bool resume = false, CancellationToken cancel = default)
    {
        var module = _lm.Module;
        module.GradientCheckpointing = _o.GradientCheckpointing;
        module.train();
        var (opt, terms) = CreateOptimizer(module, _o);
        // LoRA: the adapters the optimizer trains (the base frozen); merged into the weights when the run ends
        var lora = LoraAdapters.Of(module);
        var trained = opt.Blocks.Select(b => b.Parameter).ToList();
        var comm = Comm;
        bool root = comm.Rank == 0;
        var dp = comm.Size > 1 ? new DataParallel(comm, opt) : null;
        if (dp is not null)
        {
            if (_o.StepInBackward)
                throw new OptionException(nameof(TrainingOptions.StepInBackward), $"StepInBackward runs in a single process; this run has {comm.Size} ranks (their gradients are summed after the backward pass)");
            if (_o.BatchSize < comm.Size)
                throw new OptionException(nameof(TrainingOptions.BatchSize), $"BatchSize {_o.BatchSize} is smaller than the {comm.Size} ranks: every rank needs a share of each global batch");
        }
        // The distance from the base weights: the L1/L2 terms' copy of θ0, a copy for small models, else the base
        // checkpoint on disk every DistanceEvery steps (BaseDistance).
        using var baseDistance = BaseDistance.For(_lm, terms);
        int distanceEvery = _o.DistanceEvery > 0 ? _o.DistanceEvery : baseDistance.EveryStep ? 1 : 50;
        int start = 0;
        var stateFile = Path.Combine(CheckpointDir, "trainer_state.json");
        if (resume)
        {
            if (root && !File.Exists(stateFile) && Directory.Exists(CheckpointDir + ".old")) Directory.Move(CheckpointDir + ".old", CheckpointDir);
            comm.Sum(0.0); // the other ranks look for the checkpoint after rank 0 has put it back
            if (!File.Exists(stateFile)) throw new RunFolderException($"{stateFile}: no checkpoint to resume from in {_out}");
            start = LoadCheckpoint(opt);
        }
        else if (File.Exists(stateFile))
            throw new RunFolderException($"{_out} already holds a checkpoint: resume it (resume = true) or choose another output folder", remedy: "Resume");
        if (root)
        {
            Directory.CreateDirectory(_out);
            TruncateMetrics(start);
        }
        int total = TotalSteps;
        int warmup = (int)Math.Ceiling(_o.WarmupRatio * total);
        int pad = _lm.Tokenizer.EosId ?? 0;
        var clock = Stopwatch.StartNew();
        using var progress = root && _o.ShowProgress && ConsoleProgress.Enabled ? new ConsoleProgress("train", total, "steps") : null;
        progress?.Advance(start);
        int bad = 0;
        double? lastLoss = null, evalLoss = null;
        // a fresh run starts at the base weights (distance 0); a resumed one is measured again at its next interval
        double distance = baseDistance.EveryStep ? baseDistance.L2() : start == 0 ? 0.0 : double.NaN;
        bool interrupted = false;
        int step = start;
        var log = root ? new StreamWriter(MetricsFile, append: true) : null;
        var board = root && TensorBoardDir is not null ? TensorBoard.Open(TensorBoardDir) : null;
        double lastElapsed = clock.Elapsed.TotalSeconds;
        for (; step < total; step++)
        {
            var lr = LrSchedule.At(_o.Schedule, _o.LearningRate, step, total, warmup);
            opt.LearningRate = lr;
            opt.zero_grad();
            var batch = BatchOf(step, out var epoch);
            long tokens = batch.Sum(t => (long)PredictedTokens(t));
            // this rank's share of the global batch (the loss stays the mean over the global batch's tokens)
            var share = batch;
            int shareStart = 0;
            // with checkpointing, each layer's gradients are summed into their owners in the last micro-batch's backward
            // and freed elsewhere (ZeRO-2); a batch smaller than the ranks (an epoch's last) sums after the backward
            bool reduceInBackward = dp is not null && lora is null && _o.GradientCheckpointing && AfterBackward is null && batch.Count >= comm.Size;
            if (dp is not null)
            {
                var (first, count) = dp.ShareOf(batch.Count);
                share = batch.Skip(first).Take(count).ToList();
                shareStart = first;
                dp.Collective.Activity(step + 1, "forward and backward");
            }
            double lossSum = 0;
            double norm = double.NaN;
            bool stepped = false, nonFiniteTensor = false;
            if (_o.StepInBackward)
            {
                if (AfterBackward is not null) throw new OptionException(nameof(TrainingOptions.StepInBackward), "StepInBackward cannot run with a gradient projection (GEM): it needs every gradient before the step");
                // the loss terms' gradients first, so that each tensor's gradient is complete when its layer's backward ends
                TermsBackward(terms);
                double sq = 0;
                opt.BeginPartialStep();
                void StepAndFree(Tensor p)
                {
                    using var g = p.grad;
                    if (g is null) return;
                    var s = SquaredNorm(g);
                    sq += s;
                    if (double.IsFinite(s)) opt.StepParameter(p); else nonFiniteTensor = true;
                    p.grad = null;
                }
                module.AfterLayerBackward = layer => { foreach (var p in layer.parameters()) StepAndFree(p); };
                try { lossSum += ForwardBackward(batch.ToList(), tokens, pad, DropoutSeed(step, 0)); }
                finally { module.AfterLayerBackward = null; }
                OnPhase?.Invoke("step");
                foreach (var p in trained) StepAndFree(p);
                opt.FinishStep();
                norm = Math.Sqrt(sq);
                stepped = true;
            }
            else
            {
                // the loss terms' gradients once per step (in a data-parallel run on rank 0, before the sum over ranks)
                if (reduceInBackward && root) TermsBackward(terms);
                for (int m = 0; m < share.Count; m += _o.MicroBatch)
                {
                    // the hook is taken by the forward pass's checkpointed layers, so it is set before the forward
                    if (reduceInBackward && m + _o.MicroBatch >= share.Count) module.AfterLayerBackward = layer => dp!.ReduceNow(layer.parameters());
                    try { lossSum += ForwardBackward(share.Skip(m).Take(_o.MicroBatch).ToList(), tokens, pad, DropoutSeed(step, shareStart + m)); }
                    finally { module.AfterLayerBackward = null; }
                }
            }
            if (!stepped)
            {
                if (root && !reduceInBackward) TermsBackward(terms);
                dp?.Collective.Activity(step + 1, "summing gradients");
                dp?.ReduceGradients(toAll: AfterBackward is not null);
                AfterBackward?.Invoke(module);
                dp?.DropUnowned();
                // each tensor's Σg², in a data-parallel run at its owner and summed over the ranks per tensor (zeros
                // elsewhere: exact), then added in the optimizer's order: the norm and the clipping factor are the
                // single process's bit for bit
                var perTensor = SquaredNorms(trained);
                if (dp is not null)
                {
                    perTensor[^1] = lossSum;
                    perTensor = comm.Sum(perTensor);
                    lossSum = perTensor[^1];
                }
                double sq = 0;
                for (int i = 0; i < perTensor.Length - 1; i++) sq += perTensor[i];
                norm = Math.Sqrt(sq);
            }
            double loss = lossSum / tokens;
            bool skipped = !double.IsFinite(loss) || !double.IsFinite(norm) || nonFiniteTensor;
            if (skipped && stepped)
            {
                bad++;
                Console.Error.WriteLine($"warning: step {step + 1}: non-finite {(double.IsFinite(loss) ? "gradient" : "loss")}; the tensors with a non-finite gradient were not updated ({bad} bad steps in a row)");
            }
            else if (stepped)
            {
                bad = 0;
                lastLoss = loss;
            }
            else if (skipped)
            {
                bad++;
                Console.Error.WriteLine($"warning: step {step + 1}: non-finite {(double.IsFinite(loss) ? "gradient norm" : "loss")}; the step is skipped ({bad} in a row)");
                opt.zero_grad();
            }
            else
            {
                bad = 0;
                if (_o.MaxGradNorm > 0 && norm > _o.MaxGradNorm) ScaleGrads(trained, _o.MaxGradNorm / (norm + 1e-6));
                OnPhase?.Invoke("step");
                opt.step();
                dp?.Collective.Activity(step + 1, "broadcasting weights");
                dp?.BroadcastParameters();
                lastLoss = loss;
            }
            long updated = 0, numel = 0;
            foreach (var blk in opt.Blocks) { updated += blk.LastUpdated; numel += blk.Numel; }
            if (dp is not null) updated = (long)comm.Sum(updated);
            bool measure = root && ((step + 1) % distanceEvery == 0 || step + 1 == total || (cancel.IsCancellationRequested && step + 1 < total));
            double? stepDistance = measure ? distance = baseDistance.L2() : null;
            evalLoss = _o.EvalEvery > 0 && (step + 1) % _o.EvalEvery == 0 ? EvalLoss() : null;
            var metrics = new StepMetrics(step + 1, epoch, loss, lr, norm, stepDistance, skipped ? 0 : (double)updated / numel, tokens, clock.Elapsed.TotalSeconds, skipped, evalLoss);
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
                log?.Dispose();
                SaveCheckpoint(opt, step, dp);
                throw new TrainingDivergedException($"{bad} consecutive steps with a non-finite loss or gradient (last at step {step + 1}); the run stopped. A checkpoint of step {step} is in {CheckpointDir}. Lower the learning rate.");
            }
            if (progress is not null) { progress.Status = $"loss {loss:F4}, lr {lr:G3}"; progress.Advance(); }
            if (_o.SaveEvery > 0 && (step + 1) % _o.SaveEvery == 0 && step + 1 < total) SaveCheckpoint(opt, step + 1, dp);
            OnStep?.Invoke(metrics);
            // a cancellation on any rank stops every rank after the same step
            bool cancelled = cancel.IsCancellationRequested;
            if (dp is not null) cancelled = comm.Sum(cancelled ? 1 : 0) > 0;
            if (cancelled && step + 1 < total)
            {
                interrupted = true;
                step++;
                break;
            }
        }
        log?.Dispose();
        OnPhase?.Invoke("checkpoint");
        SaveCheckpoint(opt, step, dp);
        string? modelDir = null;
        if (!interrupted)
        {
            evalLoss = _eval.Count > 0 ? EvalLoss() : null;
            modelDir = Path.Combine(_out, "model");
        }
        double touchedFraction = double.NaN;
        if (lora is not null)
        {
            // the fraction of the model's entries that the merged update changes (B·A is dense in each adapted weight)
            var (changed, all) = lora.ChangedEntries();
            touchedFraction = (double)changed / all;
        }
        // the in-memory model leaves the run as the fine-tuned one: the adapters merged into its weights (the
        // adapters' own tensors stay until they are written beside the merged model)
        lora?.Merge();
        try
        {
            if (modelDir is not null && root)
            {
                var tmp = Path.Combine(_out, $".model-{Guid.NewGuid():N}");
                OnPhase?.Invoke("final");
                HfFolder.Save(_lm, tmp);
                lora?.Save(tmp, _lm.SourcePath);
                if (Directory.Exists(modelDir)) Directory.Delete(modelDir, true);
                Directory.Move(tmp, modelDir);
            }
        }
        finally { lora?.Dispose(); }
        if (lora is null && opt.TrackTouched)
        {
            var (touched, counted) = opt.TouchedCount();
            var sums = comm.Sum(touched, counted);
            touchedFraction = sums[1] == 0 ? 0 : sums[0] / sums[1];
        }
        var result = new TrainResult(_o.Method.ToString(), _o, step, total, interrupted, lastLoss, evalLoss, distance, _rows.Count, _dropped,
                                     touchedFraction, clock.Elapsed.TotalSeconds, _out, modelDir, MemoryPlanner.PeakResident());
        if (root) new RunFolder(_out).WriteSummary(result);
        opt.Dispose();
        foreach (var t in terms) (t as IDisposable)?.Dispose();
        return result;
    }

    /// <summary>Elements per slice when the gradient norm is accumulated in float64 (larger gradients are read in slices
    /// of this size, so that no full-size float64 copy is made).</summary>
    const long NormSlice = 1 << 20;

    /// <summary>The forward and backward pass of one micro-batch, its loss scaled by the step's token count; returns the
    /// micro-batch's summed token loss.</summary>
    double ForwardBackward(List<TokenizedExample> examples, long tokens, int pad, long dropoutSeed)
    {
        using var scope = NewDisposeScope();
        if (LoraAdapters.Of(_lm.Module) is { } lora) lora.DropoutSeed = dropoutSeed;
        using var b = Tokenized.Pad(examples, pad);
        OnPhase?.Invoke("forward");
        var (sum, _) = LossSum(_lm, b);
        OnPhase?.Invoke("backward");
        using (Scalar denominator = ((double)tokens).ToScalar()) (sum / denominator).backward();
        return sum.item<float>();
    }

    /// <summary>The seed of LoRA's dropout masks for the micro-batch that starts at example <paramref name="first"/> of a
    /// step's global batch: a function of the run's seed, the step and the example (a resume and every rank layout draw
    /// the same masks).</summary>
    long DropoutSeed(int step, int first) => unchecked((_o.Seed * 1_000_003L + step) * 65_537L + first);

    static void TermsBackward(IReadOnlyList<ILossTerm> terms)
    {
        foreach (var term in terms)
        {
            using var scope = NewDisposeScope();
            term.Loss().backward();
        }
    }

    /// <summary>Σ g² of each trained tensor's gradient (0 without one), in the optimizer's order, with one more slot at
    /// the end for the caller.</summary>
    static double[] SquaredNorms(IReadOnlyList<Tensor> ps)
    {
        var sq = new double[ps.Count + 1];
        for (int i = 0; i < ps.Count; i++)
        {
            using var g = ps[i].grad;
            if (g is not null) sq[i] = SquaredNorm(g);
        }
        return sq;
    }

    /// <summary>Σ g² of one gradient in float64, read in slices of <see cref="NormSlice"/> elements.</summary>
    static double SquaredNorm(Tensor g)
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

    static void ScaleGrads(IEnumerable<Tensor> trained, double factor)
    {
        using var _ = no_grad();
        // An explicit Scalar held for the whole call: TorchSharp may finalize an implicit one (double → Scalar) while
        // the native call still reads it (seen as "toDouble" check failures when trainings run on several threads).
        using Scalar s = factor.ToScalar();
        foreach (var p in trained)
        {
            using var g = p.grad;
            g?.mul_(s);
        }
    }

    /// <summary>Identity of the run: a resume must use the same settings.</summary>
    string Fingerprint() => JsonSerializer.Serialize(_o with { ShowProgress = true, SaveEvery = 0, EvalEvery = 0, DistanceEvery = 0 }, FingerprintJson) + $"|rows={_rows.Count}";

    static readonly JsonSerializerOptions FingerprintJson = new(RunFolder.Json) { WriteIndented = false };

    /// <summary>Writes the checkpoint atomically. In a data-parallel run every rank calls it: rank 0 writes, gathering the
    /// optimizer state of the tensors other ranks own one tensor at a time, and the others serve their shards.</summary>
    void SaveCheckpoint(BlockOptimizer opt, int step, DataParallel? dp)
    {
        if (dp is not null && dp.Rank != 0)
        {
            dp.Collective.Activity(step, "serving the checkpoint");
            dp.ServeState(opt.StateWrites());
            return;
        }
        Directory.CreateDirectory(_out);
        var tmp = Path.Combine(_out, $".checkpoint-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        // LoRA: the adapters alone (the base is frozen, and read again from the model on resume)
        if (LoraAdapters.Of(_lm.Module) is { } lora) SafeTensors.Save(Path.Combine(tmp, LoraAdapters.WeightsFile), lora.StateDict());
        else SafeTensors.Save(Path.Combine(tmp, "model.safetensors"), _lm.Module.StateDict());
        // both streamed tensor by tensor from the model's and the optimizer's own memory (no copy of the state)
        try { SafeTensors.Save(Path.Combine(tmp, "optimizer.safetensors"), dp?.GatherState(opt.StateWrites()) ?? opt.StateWrites()); }
        finally { dp?.EndGather(); }
        AtomicFile.WriteAllText(Path.Combine(tmp, "trainer_state.json"), JsonSerializer.Serialize(new TrainerState(step, Fingerprint())));
        var old = CheckpointDir + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(CheckpointDir)) Directory.Move(CheckpointDir, old);
        Directory.Move(tmp, CheckpointDir);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    sealed record TrainerState(int Step, string Fingerprint);

    int LoadCheckpoint(BlockOptimizer opt)
    {
        var stateFile = Path.Combine(CheckpointDir, "trainer_state.json");
        var state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(stateFile))
            ?? throw new CheckpointException($"{stateFile}: empty trainer state");
        if (state.Fingerprint != Fingerprint())
            throw new RunFolderException($"{stateFile}: the checkpoint was written by a run with other settings or data; resume with the same options (checkpoint: {state.Fingerprint}; now: {Fingerprint()})");
        if (LoraAdapters.Of(_lm.Module) is { } lora) lora.LoadWeights(Path.Combine(CheckpointDir, LoraAdapters.WeightsFile));
        else _lm.Module.LoadWeights(Path.Combine(CheckpointDir, "model.safetensors"));
        // the optimizer state is read one tensor at a time (never a second copy of the moments)
        using (var file = SafeTensorFile.Open(Path.Combine(CheckpointDir, "optimizer.safetensors")))
        using (var saved = new StreamedTensors(file))
            opt.load_state_dict(saved);
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
