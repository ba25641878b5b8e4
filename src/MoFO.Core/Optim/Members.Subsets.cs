using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>The decoder layers of a model, by the names of its tensors: a layer is a distinct index <c>i</c> of a name
/// with <c>.&lt;i&gt;.</c> (<c>model.layers.3.mlp.up_proj.weight</c>: layer 3); a name without one is outside the layers
/// (embeddings, final norm, head).</summary>
public static class DecoderLayers
{
    static readonly Regex LayerIndex = new(@"(^|\.)(\d+)\.", RegexOptions.Compiled);

    /// <summary>The layer index of a tensor's name (null: outside the decoder layers).</summary>
    public static int? Of(string name)
    {
        var m = LayerIndex.Match(name);
        return m.Success ? int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) : null;
    }

    /// <summary>The name after the layer index (<c>self_attn.q_proj.weight</c>), or the whole name outside the layers.</summary>
    public static string After(string name)
    {
        var m = LayerIndex.Match(name);
        return m.Success ? name[(m.Index + m.Length)..] : name;
    }

    /// <summary>The distinct layer indices, ascending.</summary>
    public static IReadOnlyList<int> Indices(IEnumerable<string> names) => names.Select(Of).OfType<int>().Distinct().Order().ToList();

    /// <summary>The tensors of the <paramref name="count"/> largest layers (by entries), and those outside the layers when
    /// <paramref name="outside"/>: what a member that trains that many layers at once holds state for, at most.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Largest(IReadOnlyList<(string Name, long[] Shape)> tensors, int count, bool outside)
    {
        static long Numel(long[] s) => s.Aggregate(1L, (a, b) => a * b);
        var top = tensors.Where(t => Of(t.Name) is not null).GroupBy(t => Of(t.Name)!.Value)
                         .OrderByDescending(g => g.Sum(t => Numel(t.Shape))).Take(count).Select(g => g.Key).ToHashSet();
        return tensors.Where(t => Of(t.Name) is int i ? top.Contains(i) : outside).ToList();
    }
}

/// <summary>
/// LISA (Pan et al. 2024, as LMFlow and Axolotl's <c>lisa_n_layers</c>/<c>lisa_step_interval</c>): the tensors outside the
/// decoder layers (embeddings, final norm, head) are always trained; every <see cref="Interval"/> steps a fresh uniformly
/// random set of <see cref="Layers"/> decoder layers is drawn (seeded; the generator and the set are saved with the state)
/// and trained with AdamW, the other layers frozen. A layer that leaves the set loses its moments (LMFlow); one that comes
/// back starts from zero. The first set is drawn at construction; a new one after each step t with t mod interval = 0.
/// </summary>
public sealed class LISA : MaskedAdam
{
    readonly Generator _gen;
    readonly IReadOnlyList<int> _layers;
    int[] _active;

    public LISA(IEnumerable<ParamGroup> groups, double lr = 2e-5, int layers = 2, int interval = 20, long seed = 0, double beta1 = 0.9,
                double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched)
    {
        if (layers < 1) throw new ArgumentException($"LISA: layers = {layers}; it must be at least 1", nameof(layers));
        if (interval < 1) throw new ArgumentException($"LISA: interval = {interval}; it must be at least 1", nameof(interval));
        (Layers, Interval, Seed) = (layers, interval, seed);
        _gen = new Generator((ulong)seed, CPU);
        _layers = DecoderLayers.Indices(Blocks.Select(b => b.Name));
        _active = Draw();
        Apply();
    }

    public LISA(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> named, double lr = 2e-5, int layers = 2, int interval = 20,
                long seed = 0, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, layers, interval, seed, weight_decay: weight_decay, trackTouched: trackTouched) { }

    public int Layers { get; }
    public int Interval { get; }
    public long Seed { get; }

    /// <summary>The decoder layers trained now (ascending).</summary>
    public IReadOnlyList<int> Active => _active;

    protected override Selection FilteredSelection => Selection.All;

    /// <summary>What the plan counts: the tensors outside the layers and those of the <paramref name="layers"/> largest layers.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Held(IReadOnlyList<(string Name, long[] Shape)> trained, int layers) =>
        DecoderLayers.Largest(trained, layers, outside: true);

    int[] Draw()
    {
        if (_layers.Count <= Layers) return _layers.ToArray();
        using var perm = randperm(_layers.Count, generator: _gen);
        return perm.data<long>().Take(Layers).Select(i => _layers[(int)i]).Order().ToArray();
    }

    void Apply()
    {
        foreach (var b in Blocks) SetFrozen(b, DecoderLayers.Of(b.Name) is int i && !_active.Contains(i));
    }

    protected override void EndStep()
    {
        if (StepCount % Interval != 0) return;
        _active = Draw();
        Apply();
    }

    protected override IEnumerable<(string key, Tensor value)> ExtraState()
    {
        yield return ("lisa.rng", _gen.get_state());
        yield return ("lisa.active", tensor(_active.Select(i => (long)i).ToArray()));
    }

    protected override void LoadExtraState(IReadOnlyDictionary<string, Tensor> state)
    {
        if (!state.TryGetValue("lisa.rng", out var rng)) throw new ArgumentException("optimizer state: the entry 'lisa.rng' (LISA's generator) is missing", nameof(state));
        _gen.set_state(rng);
        if (!state.TryGetValue("lisa.active", out var active)) throw new ArgumentException("optimizer state: the entry 'lisa.active' (LISA's layers) is missing", nameof(state));
        _active = active.data<long>().Select(i => (int)i).ToArray();
        Apply();
    }

    public override void Dispose() { _gen.Dispose(); base.Dispose(); }
}

/// <summary>The order in which BAdam visits its blocks.</summary>
public enum BlockOrder { Random, Ascending, Descending }

/// <summary>
/// BAdam (Luo et al. 2024, as LLaMA-Factory's <c>use_badam</c>, <c>badam_switch_interval</c>): block coordinate descent
/// with Adam over the decoder layers; one layer is trained for <see cref="Interval"/> steps, then the next in
/// <see cref="Order"/> (random: a fresh seeded permutation per pass over the layers, as BAdam's <c>switch_mode</c>
/// random). Adam's moments exist only for the active layer and are dropped at each switch. Tensors outside the decoder
/// layers (embeddings, final norm, head) stay frozen, as BAdam's defaults (<c>include_embedding</c>,
/// <c>include_lm_head</c> off). A model without decoder layers makes each tensor a block.
/// </summary>
public sealed class BAdam : MaskedAdam
{
    readonly Generator _gen;
    readonly int[] _blockOf;
    readonly int _blocks;
    int[] _pass;
    int _position;

    public BAdam(IEnumerable<ParamGroup> groups, double lr = 2e-5, int interval = 50, BlockOrder order = BlockOrder.Random, long seed = 0,
                 double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched)
    {
        if (interval < 1) throw new ArgumentException($"BAdam: interval = {interval}; it must be at least 1", nameof(interval));
        if (!Enum.IsDefined(order)) throw new ArgumentException($"BAdam: order = {(int)order}; not a defined value", nameof(order));
        (Interval, Order, Seed) = (interval, order, seed);
        _gen = new Generator((ulong)seed, CPU);
        var layers = DecoderLayers.Indices(Blocks.Select(b => b.Name)).ToList();
        _blockOf = layers.Count > 0 ? Blocks.Select(b => DecoderLayers.Of(b.Name) is int i ? layers.IndexOf(i) : -1).ToArray()
                                    : Blocks.Select(b => b.Index).ToArray();
        _blocks = layers.Count > 0 ? layers.Count : Blocks.Count;
        _pass = NewPass();
        Apply();
    }

    public BAdam(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> named, double lr = 2e-5, int interval = 50,
                 BlockOrder order = BlockOrder.Random, long seed = 0, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, interval, order, seed, weight_decay: weight_decay, trackTouched: trackTouched) { }

    public int Interval { get; }
    public BlockOrder Order { get; }
    public long Seed { get; }

    /// <summary>The active block: the ordinal of the decoder layer (0 for the first layer), or of the tensor without layers.</summary>
    public int Active => _pass[_position];

    protected override Selection FilteredSelection => Selection.All;

    /// <summary>What the plan counts: the tensors of the largest layer (the largest tensor of a model without layers).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Held(IReadOnlyList<(string Name, long[] Shape)> trained) =>
        trained.Any(t => DecoderLayers.Of(t.Name) is not null) ? DecoderLayers.Largest(trained, 1, outside: false)
            : trained.OrderByDescending(t => t.Shape.Aggregate(1L, (a, b) => a * b)).Take(1).ToList();

    int[] NewPass()
    {
        if (Order == BlockOrder.Ascending) return Enumerable.Range(0, _blocks).ToArray();
        if (Order == BlockOrder.Descending) return Enumerable.Range(0, _blocks).Reverse().ToArray();
        using var perm = randperm(_blocks, generator: _gen);
        return perm.data<long>().Select(i => (int)i).ToArray();
    }

    void Apply()
    {
        foreach (var b in Blocks) SetFrozen(b, _blockOf[b.Index] != Active);
    }

    protected override void EndStep()
    {
        if (StepCount % Interval != 0) return;
        if (++_position == _pass.Length) { _pass = NewPass(); _position = 0; }
        // every switch drops the moments, also when a new pass starts with the block that ended the last one (BAdam
        // starts a fresh optimizer state at each switch)
        foreach (var b in Blocks) SetFrozen(b, true);
        Apply();
    }

    protected override IEnumerable<(string key, Tensor value)> ExtraState()
    {
        yield return ("badam.rng", _gen.get_state());
        yield return ("badam.pass", tensor(_pass.Select(i => (long)i).ToArray()));
        yield return ("badam.position", tensor((long)_position));
    }

    protected override void LoadExtraState(IReadOnlyDictionary<string, Tensor> state)
    {
        Tensor Get(string key) => state.TryGetValue(key, out var t) ? t
            : throw new ArgumentException($"optimizer state: the entry '{key}' (BAdam's block order) is missing", nameof(state));
        _gen.set_state(Get("badam.rng"));
        _pass = Get("badam.pass").data<long>().Select(i => (int)i).ToArray();
        _position = (int)Get("badam.position").item<long>();
        Apply();
    }

    public override void Dispose() { _gen.Dispose(); base.Dispose(); }
}

/// <summary>The signal-to-noise ratio of one module of a model, as Spectrum scores it, and whether it is trained.</summary>
public sealed record SpectrumScore(string Module, string Type, double Snr, bool Trained);

/// <summary>
/// Spectrum (Hartford et al. 2024; the reference <c>spectrum.py</c> of cognitivecomputations/spectrum, Axolotl's
/// <c>spectrum_top_fraction</c>): before training each module's weight W (m×n; a vector as 1×n) is scored by
/// <see cref="Snr"/>; within each module type (the name after the layer index: <c>self_attn.q_proj</c>; outside the
/// layers the module's name) the ⌊fraction·count⌋ modules of highest SNR are trained with AdamW (all their tensors),
/// ties to the earlier module; the 2-D tensors outside the layers (embeddings, head) are always trained, as the
/// reference's list always unfreezes them; everything else is frozen for the run. Norm weights are scored as 1×n
/// matrices as the reference does (SNR 1 each, so the earliest layers' norms win the ties); the final norm, a type of
/// one module, is frozen unless the fraction is 1.
/// </summary>
public sealed class Spectrum : MaskedAdam
{
    public Spectrum(IEnumerable<ParamGroup> groups, double lr = 2e-5, double fraction = 0.25, double beta1 = 0.9, double beta2 = 0.999,
                    double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched)
    {
        if (!(fraction > 0 && fraction <= 1)) throw new ArgumentException($"Spectrum: fraction = {fraction}; it must lie in (0, 1]", nameof(fraction));
        Fraction = fraction;
        Scores = Choose(Blocks.Select(b => (b.Name, b.Parameter)).ToList(), fraction);
        var trained = Scores.Where(s => s.Trained).Select(s => s.Module).ToHashSet();
        foreach (var b in Blocks) SetFrozen(b, !trained.Contains(ModuleOf(b.Name)));
    }

    public Spectrum(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> named, double lr = 2e-5, double fraction = 0.25,
                    double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, fraction, weight_decay: weight_decay, trackTouched: trackTouched) { }

    public double Fraction { get; }

    /// <summary>Every module's score and choice, in the model's order.</summary>
    public IReadOnlyList<SpectrumScore> Scores { get; }

    protected override Selection FilteredSelection => Selection.All;

    /// <summary>The module of a tensor: its name without the last part (<c>model.layers.0.mlp.up_proj</c>).</summary>
    public static string ModuleOf(string name) => name.LastIndexOf('.') is var i and > 0 ? name[..i] : name;

    /// <summary>
    /// The reference's score of a weight (float32 singular values S, descending): σ = IQR(S)/1.349 (quantiles by linear
    /// interpolation, as <c>torch.quantile</c>), the Marchenko–Pastur edge σ·(1 + √β) with β = min(m, n)/max(m, n);
    /// SNR = Σ S above the edge / Σ S at or below it (1 when no value is at or below; +∞ when that sum is 0), divided
    /// by the largest singular value.
    /// </summary>
    public static double Snr(Tensor weight)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var w = weight.detach().to(ScalarType.Float32);
        w = w.dim() < 2 ? w.reshape(1, -1) : w.reshape(w.shape[0], -1);
        var s = linalg.svdvals(w).cpu().data<float>().Select(v => (double)v).OrderDescending().ToArray();
        var sorted = s.Reverse().ToArray();
        double Quantile(double q)
        {
            double pos = q * (sorted.Length - 1);
            int lo = (int)Math.Floor(pos), hi = Math.Min(lo + 1, sorted.Length - 1);
            return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
        }
        double sigma = (Quantile(0.75) - Quantile(0.25)) / 1.349;
        long m = w.shape[0], n = w.shape[1];
        double edge = sigma * (1 + Math.Sqrt(Math.Min(m, n) / (double)Math.Max(m, n)));
        double signal = s.Where(v => v > edge).Sum();
        var below = s.Where(v => v <= edge).ToArray();
        double noise = below.Length == 0 ? 1 : below.Sum();
        double snr = noise == 0 ? double.PositiveInfinity : signal / noise;
        return snr / s[0];
    }

    /// <summary>The scores and the choice over (name, tensor) pairs: see the class.</summary>
    public static IReadOnlyList<SpectrumScore> Choose(IReadOnlyList<(string Name, Tensor Tensor)> tensors, double fraction)
    {
        var modules = tensors.GroupBy(t => ModuleOf(t.Name))
            .Select(g => (Module: g.Key, Weight: g.FirstOrDefault(t => t.Name == g.Key + ".weight", g.First())))
            .Select(x => (x.Module, Type: DecoderLayers.After(x.Module), Outside2D: DecoderLayers.Of(x.Module + ".") is null && x.Weight.Tensor.dim() >= 2,
                          Snr: x.Weight.Tensor.numel() == 0 ? double.NaN : Snr(x.Weight.Tensor)))
            .ToList();
        var chosen = modules.GroupBy(x => x.Type)
            .SelectMany(g => g.OrderByDescending(x => double.IsNaN(x.Snr) ? double.NegativeInfinity : x.Snr)
                              .Take((int)SelectedCount(g.Count(), fraction)).Select(x => x.Module))
            .ToHashSet();
        return modules.Select(x => new SpectrumScore(x.Module, x.Type, x.Snr, x.Outside2D || chosen.Contains(x.Module))).ToList();
    }

    /// <summary>What the plan counts (the weights are not known yet): the 2-D tensors outside the layers and, per type, the
    /// tensors of its ⌊fraction·count⌋ largest modules.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Held(IReadOnlyList<(string Name, long[] Shape)> trained, double fraction)
    {
        static long Numel(long[] s) => s.Aggregate(1L, (a, b) => a * b);
        var modules = trained.GroupBy(t => ModuleOf(t.Name)).ToList();
        var kept = modules.Where(g => DecoderLayers.Of(g.Key + ".") is null && g.Any(t => t.Shape.Length >= 2)).Select(g => g.Key)
            .Concat(modules.GroupBy(g => DecoderLayers.After(g.Key))
                           .SelectMany(t => t.OrderByDescending(g => g.Sum(x => Numel(x.Shape))).Take((int)SelectedCount(t.Count(), fraction)).Select(g => g.Key)))
            .ToHashSet();
        return trained.Where(t => kept.Contains(ModuleOf(t.Name))).ToList();
    }

    /// <summary><c>spectrum.json</c>: the fraction, the rule, and every module's type, SNR and choice.</summary>
    public override IEnumerable<(string Name, string Text)> RunFiles()
    {
        var doc = new
        {
            fraction = Fraction,
            rule = "SNR = sum of singular values above the Marchenko-Pastur edge sigma*(1+sqrt(beta)) / sum of those at or below, "
                   + "divided by the largest singular value; sigma = IQR/1.349 (cognitivecomputations/spectrum)",
            trained = Scores.Where(s => s.Trained).Select(s => s.Module).ToList(),
            modules = Scores.Select(s => new { module = s.Module, type = s.Type, snr = double.IsFinite(s.Snr) ? s.Snr : (double?)null, trained = s.Trained }),
        };
        yield return ("spectrum.json", JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    }
}
