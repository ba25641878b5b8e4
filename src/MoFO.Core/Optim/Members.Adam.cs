using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Optim;

/// <summary>
/// MoFO (Algorithm 1 of Chen et al. 2024): Adam moments for every entry; in each filtered block only the
/// k = ⌊α·numel⌋ entries with the largest |m| take the Adam step (ties: lower flat index); dense blocks (biases,
/// norms by default) take the full step. Defaults as in the authors' scripts: lr 2e-5, weight decay 0, α = 0.15.
/// </summary>
public sealed class MoFOOptimizer : MaskedAdam
{
    public MoFOOptimizer(IEnumerable<ParamGroup> groups, double lr = 2e-5, double alpha = 0.15, double beta1 = 0.9,
                         double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, alpha, rule, trackTouched) { }

    public MoFOOptimizer(IEnumerable<(string name, Parameter parameter)> named, double lr = 2e-5, double alpha = 0.15,
                         double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(named), lr, alpha, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    public MoFOOptimizer(IEnumerable<Tensor> parameters, double lr = 2e-5, double alpha = 0.15, double beta1 = 0.9,
                         double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(parameters), lr, alpha, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    protected override Selection FilteredSelection => Selection.TopMomentum;
}

/// <summary>AdamW (full fine-tuning): every entry of every non-frozen block takes the step. Same engine and
/// conventions as MoFO (decoupled weight decay first; bias-corrected step).</summary>
public sealed class AdamW : MaskedAdam
{
    public AdamW(IEnumerable<ParamGroup> groups, double lr = 2e-5, double beta1 = 0.9, double beta2 = 0.999,
                 double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched) { }

    public AdamW(IEnumerable<(string name, Parameter parameter)> named, double lr = 2e-5, double beta1 = 0.9,
                 double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, beta1, beta2, eps, weight_decay, trackTouched) { }

    public AdamW(IEnumerable<Tensor> parameters, double lr = 2e-5, double beta1 = 0.9, double beta2 = 0.999,
                 double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(parameters), lr, beta1, beta2, eps, weight_decay, trackTouched) { }

    protected override Selection FilteredSelection => Selection.All;
}

/// <summary>Gradient-filtered BCD (Section 3.4): like MoFO, but ranks the entries by |g| of the current step.</summary>
public sealed class GradientFilteredBCD : MaskedAdam
{
    public GradientFilteredBCD(IEnumerable<ParamGroup> groups, double lr = 2e-5, double alpha = 0.15, double beta1 = 0.9,
                               double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                               Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, alpha, rule, trackTouched) { }

    public GradientFilteredBCD(IEnumerable<(string name, Parameter parameter)> named, double lr = 2e-5, double alpha = 0.15,
                               double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                               Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(named), lr, alpha, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    public GradientFilteredBCD(IEnumerable<Tensor> parameters, double lr = 2e-5, double alpha = 0.15, double beta1 = 0.9,
                               double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                               Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(parameters), lr, alpha, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    protected override Selection FilteredSelection => Selection.TopGradient;
}

/// <summary>
/// Randomized BCD (Section 3.4): each step, each filtered block updates a fresh uniformly random subset of exactly
/// k = ⌊α·numel⌋ entries, drawn from a seeded generator whose state is saved with the optimizer state.
/// </summary>
public sealed class RandomizedBCD : MaskedAdam
{
    readonly Generator _gen;

    public RandomizedBCD(IEnumerable<ParamGroup> groups, double lr = 2e-5, double alpha = 0.15, long seed = 0,
                         double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, alpha, rule, trackTouched)
    {
        _gen = new Generator((ulong)seed, CPU);
        Seed = seed;
    }

    public RandomizedBCD(IEnumerable<(string name, Parameter parameter)> named, double lr = 2e-5, double alpha = 0.15,
                         long seed = 0, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(named), lr, alpha, seed, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    public RandomizedBCD(IEnumerable<Tensor> parameters, double lr = 2e-5, double alpha = 0.15, long seed = 0,
                         double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0,
                         Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(parameters), lr, alpha, seed, beta1, beta2, eps, weight_decay, rule, trackTouched) { }

    public long Seed { get; }

    protected override Selection FilteredSelection => Selection.Random;

    protected override Tensor RandomMask(Block block, long k)
    {
        var perm = randperm(block.Numel, generator: _gen);
        var mask = zeros(block.Numel, ScalarType.Bool);
        mask.index_fill_(0, perm.narrow(0, 0, k), Scalars.True);
        return mask.to(block.Parameter.device);
    }

    protected override IEnumerable<(string key, Tensor value)> ExtraState()
    {
        yield return ("rng", _gen.get_state());
    }

    protected override void LoadExtraState(IReadOnlyDictionary<string, Tensor> state)
    {
        if (!state.TryGetValue("rng", out var s))
            throw new ArgumentException("optimizer state: the entry 'rng' (randomized BCD's generator) is missing", nameof(state));
        _gen.set_state(s);
    }

    public override void Dispose() { _gen.Dispose(); base.Dispose(); }
}

/// <summary>
/// HFT (Hui et al. 2024), as the third-party reimplementations do it: in each transformer layer (a name with
/// ".&lt;number&gt;."), half of the blocks of each kind are frozen for the whole run — attention (names with "attn"/
/// "attention"), MLP ("mlp"/"ffn"/"feed_forward"), norms (names with "norm"/".ln", checked first), others — rounding an odd half up or down
/// by a fair coin; embeddings, the head and blocks outside layers stay trainable. Trainable blocks take AdamW.
/// The choice is drawn from the constructor's seed.
/// </summary>
public sealed class HFT : MaskedAdam
{
    public HFT(IEnumerable<ParamGroup> groups, double lr = 2e-5, long seed = 0, double beta1 = 0.9, double beta2 = 0.999,
               double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, beta1, beta2, eps, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched)
    {
        Seed = seed;
        foreach (var name in FrozenNames(Blocks.Select(b => b.Name).ToList(), seed))
            foreach (var b in Blocks) if (b.Name == name) b.Kind = BlockKind.Frozen;
    }

    public HFT(IEnumerable<(string name, Parameter parameter)> named, double lr = 2e-5, long seed = 0, double beta1 = 0.9,
               double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, seed, beta1, beta2, eps, weight_decay, trackTouched) { }

    public long Seed { get; }

    /// <summary>The names of the blocks frozen by this instance.</summary>
    public IReadOnlyList<string> Frozen => Blocks.Where(b => b.Kind == BlockKind.Frozen).Select(b => b.Name).ToList();

    protected override Selection FilteredSelection => Selection.All;

    static readonly System.Text.RegularExpressions.Regex LayerIndex = new(@"(^|\.)(\d+)\.", System.Text.RegularExpressions.RegexOptions.Compiled);

    /// <summary>The category of a block inside a layer.</summary>
    public static string Category(string name)
    {
        var n = name.ToLowerInvariant();
        if (n.Contains("norm") || n.Contains(".ln")) return "norm";
        if (n.Contains("attn") || n.Contains("attention")) return "attention";
        if (n.Contains("mlp") || n.Contains("ffn") || n.Contains("feed_forward")) return "mlp";
        return "other";
    }

    /// <summary>The plan: which names are frozen, given all block names in order and a seed.</summary>
    public static IReadOnlyList<string> FrozenNames(IReadOnlyList<string> names, long seed)
    {
        var rng = new Random(unchecked((int)(seed ^ (seed >> 32))));
        var frozen = new List<string>();
        var groups = names
            .Select((n, i) => (n, i, m: LayerIndex.Match(n)))
            .Where(x => x.m.Success)
            .GroupBy(x => (layer: x.n.Substring(0, x.m.Index + x.m.Length), cat: Category(x.n)))
            .OrderBy(gr => gr.Min(x => x.i));
        foreach (var gr in groups)
        {
            var members = gr.OrderBy(x => x.i).Select(x => x.n).ToList();
            int half = members.Count / 2;
            if (members.Count % 2 == 1 && rng.Next(2) == 1) half++;
            // a seeded shuffle, then the first `half`
            for (int i = members.Count - 1; i > 0; i--) { int j = rng.Next(i + 1); (members[i], members[j]) = (members[j], members[i]); }
            frozen.AddRange(members.Take(half));
        }
        return frozen;
    }
}
