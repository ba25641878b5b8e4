using System.Text.Json;
using MoFO.Checkpoints;
using MoFO.Data;
using MoFO.Evaluation;
using MoFO.Models;

namespace MoFO.Training;

/// <summary>A forgetting budget that a watch found exceeded: the measure, its rise over the base, the limit, the step.</summary>
public sealed record BudgetStop(string Measure, double Rise, double Limit, int Step, int KeptStep);

/// <summary>One point of a run's watch curve (<see cref="ForgettingWatch.Curve"/>): the step (0: the base), the training
/// loss of that step (NaN at step 0), the held-out loss on the probe set (the first <see cref="ForgettingWatch.ProbeExamples"/>
/// held-out examples: the learning side; null without held-out examples), the watched
/// measures and their rise over the base (for accuracies, the change in points: negative is a drop).</summary>
public sealed record WatchPoint(int Step, double TrainLoss, double? HeldOutLoss, IReadOnlyDictionary<string, double> Values,
                                IReadOnlyDictionary<string, double> Rise);

/// <summary>
/// Forgetting measured while a run trains (<see cref="TrainingOptions.WatchForgetting"/>), every
/// <see cref="TrainingOptions.WatchEvery"/> steps and at the end: <c>pretrain-proxy</c> (the mean token NLL on samples of
/// the base model, as the forgetting report measures it), <c>kl-to-base</c> (the mean KL from the base at the answer
/// positions of a probe set — the first <see cref="ProbeExamples"/> held-out examples — against the base's
/// log-probabilities computed once at the start and kept on disk, so that a full fine-tune holds no second model) and
/// <c>distance</c> (the L2 distance from the base weights). What it needs of the base is written under the run folder's
/// <c>watch/</c> at the start (the samples, the base log-probabilities, the base values), so that a resumed run compares
/// with the same base. Under a <see cref="TrainingOptions.ForgettingBudget"/> the weights of the last watch within the
/// budget are kept there too (<c>watch/within.safetensors</c>, the base's at the start): when a watch finds a rise above
/// the budget, the run stops and those weights become the run's model.
/// </summary>
public sealed class ForgettingWatch
{
    /// <summary>The measures a run can watch: these, and a benchmark's first N items (<see cref="Benchmarks"/>, written
    /// <c>arc-easy:100</c>).</summary>
    public static IReadOnlyList<string> Measures { get; } = ["pretrain-proxy", "kl-to-base", "distance"];

    /// <summary>The benchmarks whose first N test items a watch can score (zero-shot, acc_norm in points of accuracy, as
    /// <c>mofo eval</c> scores them): <c>arc-easy:N</c>, <c>arc-challenge:N</c>.</summary>
    public static IReadOnlyDictionary<string, Asset> Benchmarks { get; } = new Dictionary<string, Asset>
    {
        ["arc-easy"] = DataRoot.Assets.ArcEasy,
        ["arc-challenge"] = DataRoot.Assets.ArcChallenge,
    };

    /// <summary>What a run may watch, in words (for errors and help).</summary>
    public static string Described => $"{string.Join(", ", Measures)}, or {string.Join(", ", Benchmarks.Keys.Select(b => b + ":N"))} (the first N items)";

    /// <summary>Whether <paramref name="name"/> is a measure a run can watch.</summary>
    public static bool IsMeasure(string name) => Measures.Contains(name) || Benchmark(name) is not null;

    /// <summary>An accuracy (higher is better: its budget is the drop allowed, X ≤ 0) rather than a loss or a distance.</summary>
    public static bool HigherIsBetter(string name) => Benchmark(name) is not null;

    static (string Name, int Items)? Benchmark(string name)
    {
        var parts = name.Split(':');
        return parts.Length == 2 && Benchmarks.ContainsKey(parts[0]) && int.TryParse(parts[1], out var n) && n >= 1 ? (parts[0], n) : null;
    }

    /// <summary>The key of the held-out loss on the probe set (the first <see cref="ProbeExamples"/> held-out examples):
    /// the learning side of the watch's curve, beside the measures at each watch (<see cref="StepMetrics.Forgetting"/>) and
    /// in <c>watch/base.json</c> for the base. Not a measure of forgetting: no budget reads it.</summary>
    public const string HeldOutKey = "held-out-loss";

    /// <summary>Held-out examples in the probe set (the KL's, and the held-out loss's at each watch).</summary>
    public const int ProbeExamples = 64;

    /// <summary>The base-model samples of the pretrain proxy (the forgetting report's tiny-scale defaults).</summary>
    public static Forgetting.SampleSpec Samples { get; } = new();

    readonly CausalLM _lm;
    readonly TrainingOptions _o;
    readonly string _dir;
    readonly Func<double> _distance;
    readonly IReadOnlyList<string> _samples;
    readonly List<TokenizedExample> _probe;
    readonly Dictionary<string, double> _base;

    ForgettingWatch(CausalLM lm, TrainingOptions o, string dir, Func<double> distance, IReadOnlyList<string> samples,
                    List<TokenizedExample> probe, Dictionary<string, double> baseValues)
    {
        _lm = lm; _o = o; _dir = dir; _distance = distance; _samples = samples; _probe = probe; _base = baseValues;
    }

    static string SamplesFile(string dir) => Path.Combine(dir, "base_samples.jsonl");
    static string BaseFile(string dir) => Path.Combine(dir, "base.json");
    static string KlFile(string dir) => Path.Combine(dir, "kl_base.safetensors");
    /// <summary>The weights of the last watch within the budget.</summary>
    public string WithinFile => Path.Combine(_dir, "within.safetensors");
    string WithinStepFile => Path.Combine(_dir, "within.json");

    /// <summary>The base values of the watched measures (at step 0), and the base's held-out loss (<see cref="HeldOutKey"/>)
    /// when the run has held-out examples.</summary>
    public IReadOnlyDictionary<string, double> Base => _base;

    /// <summary>
    /// The watch of a run (null when the run watches nothing); <paramref name="heldOut"/>: the run's held-out examples as
    /// the trainer tokenized them (the KL probe set is the first <see cref="ProbeExamples"/>). On a fresh start (the model is the base) it measures the
    /// base and writes what later watches compare with under <c>runDir/watch/</c> (rank 0 writes, the other ranks read
    /// after <paramref name="barrier"/>); on a resume it reads them back.
    /// </summary>
    public static ForgettingWatch? Open(CausalLM lm, TrainedSet trained, TrainingOptions o, IReadOnlyList<TokenizedExample> heldOut, string runDir,
                                        bool fresh, Func<double> distance, bool root, Action barrier, double? baseHeldOutLoss = null)
    {
        if (o.WatchForgetting.Count == 0) return null;
        var dir = Path.Combine(runDir, "watch");
        var watched = o.WatchForgetting;
        var probe = !watched.Contains("kl-to-base") ? new List<TokenizedExample>()
            : heldOut.Count == 0 ? throw new OptionException(nameof(TrainingOptions.WatchForgetting), "WatchForgetting kl-to-base needs held-out examples (its probe set)")
            : heldOut.Take(ProbeExamples).ToList();
        if (fresh && root)
        {
            Directory.CreateDirectory(dir);
            var samples = watched.Contains("pretrain-proxy") ? Forgetting.BaseSamples(lm, Samples) : [];
            Forgetting.WriteSamples(SamplesFile(dir), samples);
            if (probe.Count > 0) KlToBase.SaveBase(lm, probe, KlFile(dir));
            var w = new ForgettingWatch(lm, o, dir, distance, samples, probe, new());
            foreach (var (k, v) in w.MeasureNow()) w._base[k] = v;
            if (baseHeldOutLoss is double h) w._base[HeldOutKey] = h;
            AtomicFile.WriteAllText(BaseFile(dir), JsonSerializer.Serialize(w._base));
            if (o.ForgettingBudget.Count > 0) w.KeepWithin(0, trained);
        }
        barrier();
        foreach (var f in new[] { BaseFile(dir), SamplesFile(dir) })
            if (!File.Exists(f)) throw new RunFolderException($"{f}: missing — the forgetting watch's record of the base (was the run started without --watch-forgetting?)");
        var baseValues = JsonSerializer.Deserialize<Dictionary<string, double>>(File.ReadAllText(BaseFile(dir)))!;
        var texts = Forgetting.ReadSamples(SamplesFile(dir));
        return new ForgettingWatch(lm, o, dir, distance, texts, probe, baseValues);
    }

    /// <summary>Whether the watch measures after <paramref name="step"/> (1-based) of <paramref name="total"/>.</summary>
    public bool Due(int step, int total) => step % _o.WatchEvery == 0 || step == total;

    /// <summary>The watched measures of the model as it is now.</summary>
    public Dictionary<string, double> MeasureNow()
    {
        using var mode = _lm.Module.EvalMode();
        using var noGrad = TorchSharp.torch.no_grad();
        var values = new Dictionary<string, double>();
        foreach (var m in _o.WatchForgetting)
            values[m] = m switch
            {
                "pretrain-proxy" => Forgetting.Loss(_lm, _samples).MeanTokenNll,
                "kl-to-base" => _base.Count == 0 ? 0.0 : KlToBase.AgainstSaved(_lm, _probe, KlFile(_dir)).MeanTokenKl,
                "distance" => _distance(),
                _ when Benchmark(m) is var (name, n) => Accuracy(name, n),
                _ => throw new OptionException(nameof(TrainingOptions.WatchForgetting), $"WatchForgetting {m}: unknown (expected {Described})"),
            };
        return values;
    }

    /// <summary>The benchmark items a watch scores, read once per run (not at every watch).</summary>
    readonly Dictionary<(string Name, int Items), List<McItem>> _items = new();

    /// <summary>Zero-shot acc_norm of the first <paramref name="n"/> test items of a benchmark, in points.</summary>
    double Accuracy(string name, int n)
    {
        if (!_items.TryGetValue((name, n), out var items))
            _items[(name, n)] = items = Arc.Read(DataRoot.Require(Benchmarks[name])).Take(n).ToList();
        return 100 * new MultipleChoiceEvaluator().Evaluate(_lm, name.Replace('-', '_'), items).AccNorm;
    }

    /// <summary>Each measure's rise over its base value.</summary>
    public Dictionary<string, double> Rise(IReadOnlyDictionary<string, double> values) =>
        values.ToDictionary(kv => kv.Key, kv => kv.Value - _base.GetValueOrDefault(kv.Key));

    /// <summary>The first budgeted measure whose rise exceeds its limit, or null.</summary>
    public (string Measure, double Rise, double Limit)? Exceeded(IReadOnlyDictionary<string, double> values)
    {
        var rise = Rise(values);
        foreach (var (m, limit) in _o.ForgettingBudget)
            if (rise.TryGetValue(m, out var r) && (HigherIsBetter(m) ? r < limit : r > limit)) return (m, r, limit);
        return null;
    }

    /// <summary>Keeps the model's trained tensors as the last within the budget (rank 0; atomically), with its step.</summary>
    public void KeepWithin(int step, TrainedSet trained)
    {
        SafeTensors.Save(WithinFile, trained.CheckpointTensors());
        AtomicFile.WriteAllText(WithinStepFile, JsonSerializer.Serialize(new { step }));
    }

    /// <summary>
    /// The watch curve of a run folder: learning against forgetting over steps — the base (step 0, from
    /// <c>watch/base.json</c>) and every watch in <c>metrics.jsonl</c>. Empty when the run watched nothing.
    /// </summary>
    public static IReadOnlyList<WatchPoint> Curve(string runDir)
    {
        var baseFile = BaseFile(Path.Combine(runDir, "watch"));
        var metrics = Path.Combine(runDir, "metrics.jsonl");
        if (!File.Exists(baseFile) || !File.Exists(metrics)) return [];
        var all = JsonSerializer.Deserialize<Dictionary<string, double>>(File.ReadAllText(baseFile))
                  ?? throw new RunFolderException($"{baseFile}: not a JSON object of numbers");
        double? heldOut = all.TryGetValue(HeldOutKey, out var h) ? h : null;
        var baseValues = all.Where(kv => kv.Key != HeldOutKey).ToDictionary(kv => kv.Key, kv => kv.Value);
        var points = new List<WatchPoint> { new(0, double.NaN, heldOut, baseValues, baseValues.ToDictionary(kv => kv.Key, _ => 0.0)) };
        foreach (var m in RunFolder.ReadMetrics(metrics))
            if (m.Forgetting is { Count: > 0 } watched)
            {
                var f = watched.Where(kv => kv.Key != HeldOutKey).ToDictionary(kv => kv.Key, kv => kv.Value);
                double? loss = watched.TryGetValue(HeldOutKey, out var v) ? v : null;
                points.Add(new(m.Step, m.Loss, loss, f, f.ToDictionary(kv => kv.Key, kv => kv.Value - baseValues.GetValueOrDefault(kv.Key))));
            }
        return points;
    }

    /// <summary>The step of the weights kept within the budget.</summary>
    public int KeptStep => JsonDocument.Parse(File.ReadAllText(WithinStepFile)).RootElement.GetProperty("step").GetInt32();
}
