using MoFO.Models;
using MoFO.Optim;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Training;

/// <summary>
/// The defaults of a fine-tuning run, each declared once: the MoFO authors' scripts (lr 2e-5, cosine, no warmup, no
/// weight decay, α = 15 %, gradient clipping at norm 1) and the paper's regularization strengths (λ1 = 1e-6,
/// λ2 = 1e-3), 1 epoch of batch 16 (one micro-batch) at 512 tokens, seed 42. The one set of defaults:
/// <see cref="TrainingOptions"/> takes its defaults from here; the CLI's flags (absent: <c>TrainingOptions.Default</c>)
/// and the F# DSL's <c>Recipe.Default</c> from <see cref="TrainingOptions.Default"/>; <c>mofo methods</c> prints them.
/// The paper's recipe (batch 128 in micro-batches of 4, 2 epochs, 1024 tokens) is a named preset on top of them
/// (<c>Recipe.Paper</c>), not another set of defaults.
/// </summary>
public static class Defaults
{
    public const string Method = "mofo";
    public const double LearningRate = 2e-5;
    public const double Alpha = 0.15;
    public const double L1Lambda = 1e-6;
    public const double L2Lambda = 1e-3;
    public const double WeightDecay = 0;
    public const double WarmupRatio = 0;
    public const double MaxGradNorm = 1.0;
    public const Schedule Schedule = MoFO.Training.Schedule.Cosine;
    public const int Epochs = 1;
    public const int BatchSize = 16;
    public const int MaxLength = 512;
    public const long Seed = 42;
    public const int MaxBadSteps = 5;
    /// <summary>Steps between two watches of forgetting (<see cref="TrainingOptions.WatchEvery"/>).</summary>
    public const int WatchEvery = 50;
    /// <summary>Below this many parameters a run keeps the conveniences that cost memory per entry (the touched mask,
    /// an in-memory copy of the initial weights for the distance).</summary>
    public const long SmallModel = 100_000_000;
    /// <summary>LISA: decoder layers trained at once, and the steps between two draws (LMFlow's and Axolotl's examples).</summary>
    public const int LisaLayers = 2, LisaInterval = 20;
    /// <summary>BAdam: the steps a block is trained before the switch (the paper's K = 50).</summary>
    public const int BAdamInterval = 50;
    /// <summary>Spectrum: the fraction of each module type trained.</summary>
    public const double SpectrumFraction = 0.25;
}

/// <summary>What an optimizer member is built from: the model's named parameters and the run's settings.</summary>
public sealed record OptimizerArgs(IReadOnlyList<(string Name, Parameter Parameter)> Parameters, double LearningRate,
                                   double WeightDecay, double Alpha, long Seed, bool TrackTouched)
{
    /// <summary>The options of the members that train a subset of the model (LISA, BAdam, Spectrum).</summary>
    public SubsetSpec Subset { get; init; } = new();
}

/// <summary>
/// The options of the members that train a moving or static subset of the whole model, each read by its member only:
/// LISA's layers at once and switch interval, BAdam's switch interval and block order, Spectrum's trained fraction per
/// module type. Serializable (part of <see cref="MethodSpec"/>).
/// </summary>
public sealed record SubsetSpec
{
    public int LisaLayers { get; init; } = Defaults.LisaLayers;
    public int LisaInterval { get; init; } = Defaults.LisaInterval;
    public int BAdamInterval { get; init; } = Defaults.BAdamInterval;
    public BlockOrder BAdamOrder { get; init; } = BlockOrder.Random;
    public double SpectrumFraction { get; init; } = Defaults.SpectrumFraction;

    /// <summary>Checks the values (an <see cref="OptionException"/> on the field that is wrong).</summary>
    public void Validate()
    {
        if (LisaLayers < 1) throw new OptionException("LisaLayers", $"LisaLayers {LisaLayers}: must be at least 1");
        if (LisaInterval < 1) throw new OptionException("LisaInterval", $"LisaInterval {LisaInterval}: must be at least 1");
        if (BAdamInterval < 1) throw new OptionException("BAdamInterval", $"BAdamInterval {BAdamInterval}: must be at least 1");
        if (!Enum.IsDefined(BAdamOrder)) throw new OptionException("BAdamOrder", $"BAdamOrder {(int)BAdamOrder}: not an order");
        if (!(SpectrumFraction > 0 && SpectrumFraction <= 1)) throw new OptionException("SpectrumFraction", $"SpectrumFraction {SpectrumFraction}: must lie in (0, 1]");
    }

    /// <summary>The options of a member, as <see cref="MethodSpec.ToString"/> shows them (empty for the other members).</summary>
    public string Describe(string member) => member switch
    {
        "lisa" => $"(layers={LisaLayers}, every {LisaInterval} steps)",
        "badam" => $"(every {BAdamInterval} steps, {BAdamOrder.ToString().ToLowerInvariant()})",
        "spectrum" => $"(fraction={SpectrumFraction.ToString("G", System.Globalization.CultureInfo.InvariantCulture)})",
        _ => "",
    };
}

/// <summary>
/// One member of the optimizer family, as the vocabulary declares it: its name (what users type), what it is, whether
/// it takes the update fraction α, the factor of the learning rate its authors advise relative to Adam's (Lion: 3–10×
/// smaller; 0.2 here), the float32 moment tensors it keeps per trained tensor (its class's <c>Moments</c>), and its
/// factory. The memory plan asks it for its state (<see cref="Moments"/>, <see cref="SelectionBuffers"/>).
/// </summary>
public sealed record Member(string Name, string Description, bool UsesAlpha, double LrScale, int Moments, Func<OptimizerArgs, BlockOptimizer> Create)
{
    /// <summary>The trained tensors whose state the member holds at most at once, given all trained tensors (name, shape)
    /// and the method (null: all of them); the memory plan counts moments for these only.</summary>
    public Func<IReadOnlyList<(string Name, long[] Shape)>, MethodSpec, IReadOnlyList<(string Name, long[] Shape)>>? Held { get; init; }

    /// <summary>Whether the member reads <see cref="MethodSpec.Subset"/> (LISA, BAdam, Spectrum).</summary>
    public bool UsesSubset { get; init; }

    /// <summary>The pooled buffers of the fused selection kernel for the largest filtered tensor (members that filter by
    /// a moment-based key): a 1/64 key sample, the candidates and the speculative record (≈ 1.25·α·numel floats and 2
    /// bits per entry).</summary>
    public long SelectionBuffers(long largestTensor, double alpha) =>
        UsesAlpha && Moments > 0 ? largestTensor / 64 * 4 + (long)(1.25 * alpha * largestTensor) * 8 + largestTensor / 4 : 0;
}

/// <summary>A loss term added to the fine-tuning loss, composable with any member (L1/L2 toward the pretrained
/// weights): its name, what it is, its default strength and its factory over the parameters.</summary>
public sealed record LossTerm(string Name, string Description, double DefaultLambda, Func<IReadOnlyList<Tensor>, double, ILossTerm> Create);

/// <summary>A loss term of a method: the term's name (<see cref="Methods.Terms"/>) and its strength λ.</summary>
public sealed record LossTermSpec(string Term, double Lambda);

/// <summary>
/// A fine-tuning method: an optimizer member with its update fraction, and loss terms. Serializable (names, not
/// delegates), so it is part of a run's fingerprint and summary.
/// </summary>
public sealed record MethodSpec
{
    /// <summary>The member's name (<see cref="Methods.Members"/>).</summary>
    public string Optimizer { get; init; } = Defaults.Method;
    /// <summary>The update fraction of members that filter (ignored by the others).</summary>
    public double Alpha { get; init; } = Defaults.Alpha;
    public IReadOnlyList<LossTermSpec> Terms { get; init; } = [];
    /// <summary>LoRA: the member trains low-rank adapters of the base's linear layers, the base frozen (null: the
    /// member trains every weight).</summary>
    public LoraSpec? Lora { get; init; }
    /// <summary>The options of the members that train a subset of the model (null for the other members).</summary>
    public SubsetSpec? Subset { get; init; }

    /// <summary>A short description: <c>mofo(α=0.15)</c>, <c>adamw + l2(λ=0.001)</c>, <c>lora(r=8, α=16)</c>,
    /// <c>lora(r=8, α=16) on mofo(α=0.15)</c>.</summary>
    public override string ToString()
    {
        var m = Methods.Member(Optimizer);
        var head = m.UsesAlpha ? $"{m.Name}(α={Alpha.ToString("G", System.Globalization.CultureInfo.InvariantCulture)})" : m.Name;
        if (Subset is not null) head += Subset.Describe(m.Name);
        if (Lora is not null) head = m.Name == "adamw" ? Lora.ToString() : $"{Lora} on {head}";
        return string.Concat(Terms.Select(t => $" + {t.Term}(λ={t.Lambda.ToString("G", System.Globalization.CultureInfo.InvariantCulture)})").Prepend(head));
    }

    public bool Equals(MethodSpec? other) =>
        other is not null && Optimizer == other.Optimizer && Alpha.Equals(other.Alpha) && Terms.SequenceEqual(other.Terms) && Equals(Lora, other.Lora)
        && Equals(Subset, other.Subset);

    public override int GetHashCode() => HashCode.Combine(Optimizer, Alpha, Terms.Count);
}

/// <summary>
/// The vocabulary of fine-tuning methods: every optimizer member and loss term, declared once, and the one factory
/// that builds them for a model. A new method is a class, one line in <see cref="Members"/> (or <see cref="Terms"/>),
/// and its tests.
/// </summary>
public static class Methods
{
    /// <summary>The optimizer members. The first is the default.</summary>
    public static IReadOnlyList<Member> Members { get; } =
    [
        new("mofo", "MoFO: Adam moments for every entry; per tensor only the top-α entries by |m| take the step", true, 1.0, MaskedAdam.Moments,
            a => new MoFOOptimizer(a.Parameters, a.LearningRate, a.Alpha, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("adamw", "full fine-tuning with AdamW", false, 1.0, MaskedAdam.Moments,
            a => new AdamW(a.Parameters, a.LearningRate, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("lion", "Lion (Chen et al. 2023): the sign of an interpolated momentum", false, 0.2, Lion.Moments,
            a => new Lion(a.Parameters, a.LearningRate, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("hft", "HFT: half of each layer's blocks frozen for the run, the rest AdamW", false, 1.0, MaskedAdam.Moments,
            a => new HFT(a.Parameters, a.LearningRate, seed: a.Seed, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("grad-bcd", "gradient-filtered BCD: the top-α entries by |g| of the step, Adam moments", true, 1.0, MaskedAdam.Moments,
            a => new GradientFilteredBCD(a.Parameters, a.LearningRate, a.Alpha, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("random-bcd", "randomized BCD: a fresh random α subset per step, Adam moments", true, 1.0, MaskedAdam.Moments,
            a => new RandomizedBCD(a.Parameters, a.LearningRate, a.Alpha, seed: a.Seed, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("gd-mofo", "GD-MoFO (Algorithm 2): a plain gradient step on the top-α entries by |g|, no moments", true, 1.0, GDMoFO.Moments,
            a => new GDMoFO(a.Parameters, a.LearningRate, a.Alpha, weight_decay: a.WeightDecay, trackTouched: a.TrackTouched)),
        new("lisa", $"LISA: embeddings, head and final norm always, plus a fresh random set of decoder layers every K steps, AdamW (--lisa-layers {Defaults.LisaLayers}, --lisa-interval {Defaults.LisaInterval})", false, 1.0, MaskedAdam.Moments,
            a => new LISA(a.Parameters, a.LearningRate, a.Subset.LisaLayers, a.Subset.LisaInterval, a.Seed, a.WeightDecay, a.TrackTouched))
            { UsesSubset = true, Held = (t, m) => LISA.Held(t, (m.Subset ?? new()).LisaLayers) },
        new("badam", $"BAdam: one decoder layer at a time for K steps, Adam states for it only (--badam-interval {Defaults.BAdamInterval}, --badam-order random|ascending|descending, default random)", false, 1.0, MaskedAdam.Moments,
            a => new BAdam(a.Parameters, a.LearningRate, a.Subset.BAdamInterval, a.Subset.BAdamOrder, a.Seed, a.WeightDecay, a.TrackTouched))
            { UsesSubset = true, Held = (t, _) => BAdam.Held(t) },
        new("spectrum", $"Spectrum: per module type the top fraction by signal-to-noise ratio (Marchenko–Pastur), AdamW; the rest frozen (--spectrum-fraction {Defaults.SpectrumFraction})", false, 1.0, MaskedAdam.Moments,
            a => new Spectrum(a.Parameters, a.LearningRate, a.Subset.SpectrumFraction, a.WeightDecay, a.TrackTouched))
            { UsesSubset = true, Held = (t, m) => Spectrum.Held(t, (m.Subset ?? new()).SpectrumFraction) },
    ];

    /// <summary>The loss terms (each also names a preset: AdamW with that term, as the paper's baselines).</summary>
    public static IReadOnlyList<LossTerm> Terms { get; } =
    [
        new("l1", "L1 toward the pretrained weights, λ·Σ|θ − θ0|", Defaults.L1Lambda, (ps, l) => new L1ToPretrained(ps, l)),
        new("l2", "L2 toward the pretrained weights, λ·Σ(θ − θ0)²", Defaults.L2Lambda, (ps, l) => new L2ToPretrained(ps, l)),
    ];

    /// <summary>Other names users type for a member.</summary>
    static readonly Dictionary<string, string> Aliases = new() { ["adam"] = "adamw", ["full-ft"] = "adamw" };

    /// <summary>The name of LoRA (<see cref="LoraSpec"/>: adapters trained by a member, the base frozen).</summary>
    public const string LoraName = "lora";

    /// <summary>The adapter methods: LoRA and its variants (<see cref="LoraVariant"/>), each with LoRA's settings
    /// (<see cref="LoraSpec"/>) and trained by a member, the base frozen.</summary>
    public static IReadOnlyList<(string Name, LoraVariant Variant, string Description)> Adapters { get; } =
    [
        (LoraName, LoraVariant.Lora, "LoRA: rank-r adapters (α/r)·B·A on the attention and MLP projections, the base frozen"),
        ("dora", LoraVariant.Dora, "DoRA (Liu et al. 2024): LoRA with a learned magnitude per output feature, m ⊙ (W + (α/r)·B·A) / ‖W + (α/r)·B·A‖ (PEFT's use_dora)"),
        ("pissa", LoraVariant.Pissa, "PiSSA (Meng et al. 2024): LoRA started from W's top-r singular triplets, the base replaced by the residual; saved as a rank-2r LoRA on the original base"),
    ];

    /// <summary>How many times Adam's learning rate LoRA's adapters want (Biderman et al. 2024: LoRA's best learning
    /// rates are about an order of magnitude above full fine-tuning's).</summary>
    public const double LoraLrScale = 10;

    /// <summary>Every name <see cref="Parse"/> accepts: the members, the adapters, then the loss-term presets.</summary>
    public static IReadOnlyList<string> Names => Members.Select(m => m.Name).Concat(Adapters.Select(a => a.Name)).Concat(Terms.Select(t => t.Name)).ToList();

    /// <summary>The member of that name; an <see cref="OptionException"/> on field <c>Method</c> otherwise.</summary>
    public static Member Member(string name)
    {
        var key = Aliases.GetValueOrDefault(name.ToLowerInvariant(), name.ToLowerInvariant());
        return Members.FirstOrDefault(m => m.Name == key)
               ?? throw new OptionException("Method", $"Method {name}: not an optimizer member (expected {string.Join(", ", Members.Select(m => m.Name))})");
    }

    /// <summary>The loss term of that name; an <see cref="OptionException"/> on field <c>Method</c> otherwise.</summary>
    public static LossTerm Term(string name)
        => Terms.FirstOrDefault(t => t.Name == name.ToLowerInvariant())
           ?? throw new OptionException("Method", $"Method {name}: not a loss term (expected {string.Join(", ", Terms.Select(t => t.Name))})");

    /// <summary>
    /// A method by name: a member (α = <paramref name="alpha"/>), or a loss-term preset (<c>l1</c>, <c>l2</c>: AdamW with
    /// that term at <paramref name="l1Lambda"/> / <paramref name="l2Lambda"/>). With a member, a given λ adds its term
    /// (so <c>mofo</c> with λ2 is MoFO + L2).
    /// <para><c>lora</c>, <c>dora</c>, <c>pissa</c> (<see cref="Adapters"/>): adapters (<paramref name="lora"/>, default
    /// rank 8; the name sets its <see cref="LoraSpec.Variant"/>) trained by <paramref name="loraMember"/> (AdamW by
    /// default; <c>mofo</c> filters the adapters' moments with α = <paramref name="alpha"/>).</para>
    /// </summary>
    public static MethodSpec Parse(string name, double alpha = Defaults.Alpha, double? l1Lambda = null, double? l2Lambda = null,
                                   LoraSpec? lora = null, string? loraMember = null, SubsetSpec? subset = null)
    {
        var key = name.ToLowerInvariant();
        if (subset is not null && !Members.Any(m => m.UsesSubset && m.Name == key))
            throw new OptionException("Method", $"Method {name}: the LISA, BAdam and Spectrum options need the method {string.Join(", ", Members.Where(m => m.UsesSubset).Select(m => m.Name))}");
        var terms = new List<LossTermSpec>();
        string optimizer;
        var adapter = Adapters.FirstOrDefault(a => a.Name == key);
        if ((lora is not null || loraMember is not null) && adapter.Name is null)
            throw new OptionException("Method", $"Method {name}: LoRA options need the method {string.Join(", ", Adapters.Select(a => a.Name))}");
        if (adapter.Name is not null)
        {
            if (l1Lambda is not null || l2Lambda is not null)
                throw new OptionException("Method", $"Method {key}: the L1/L2 terms toward the pretrained weights do not apply to adapters (the base is frozen)");
            var member = Members.FirstOrDefault(m => m.Name == Aliases.GetValueOrDefault((loraMember ?? "adamw").ToLowerInvariant(), (loraMember ?? "adamw").ToLowerInvariant()))
                         ?? throw new OptionException("LoraOptimizer", $"LoraOptimizer {loraMember}: not an optimizer member (expected {string.Join(", ", Members.Select(m => m.Name))})");
            return new MethodSpec { Optimizer = member.Name, Alpha = alpha, Lora = (lora ?? new LoraSpec()) with { Variant = adapter.Variant } };
        }
        if (Terms.Any(t => t.Name == key))
        {
            optimizer = "adamw";
            terms.Add(new LossTermSpec(key, (key == "l1" ? l1Lambda : l2Lambda) ?? Term(key).DefaultLambda));
            var other = key == "l1" ? ("l2", l2Lambda) : ("l1", l1Lambda);
            if (other.Item2 is double l) terms.Add(new LossTermSpec(other.Item1, l));
        }
        else
        {
            if (!Members.Any(m => m.Name == Aliases.GetValueOrDefault(key, key)))
                throw new OptionException("Method", $"Method {name}: unknown (expected one of {string.Join(", ", Names)})");
            optimizer = Member(key).Name;
            if (l1Lambda is double l1) terms.Add(new LossTermSpec("l1", l1));
            if (l2Lambda is double l2) terms.Add(new LossTermSpec("l2", l2));
        }
        return new MethodSpec { Optimizer = optimizer, Alpha = alpha, Terms = terms.OrderBy(t => t.Term, StringComparer.Ordinal).ToList(),
                                Subset = Member(optimizer).UsesSubset ? subset ?? new SubsetSpec() : null };
    }

    /// <summary>Checks a method's fields (member and terms exist, α in (0, 1], λ ≥ 0).</summary>
    public static void Validate(MethodSpec m)
    {
        Member(m.Optimizer);
        if (m.Lora is not null)
        {
            m.Lora.Validate();
            if (m.Terms.Count > 0) throw new OptionException("Method", $"Method {m.Lora.VariantName}: the L1/L2 terms toward the pretrained weights do not apply to adapters (the base is frozen)");
        }
        if (!(m.Alpha > 0 && m.Alpha <= 1)) throw new OptionException("Alpha", $"Alpha {m.Alpha}: must lie in (0, 1]");
        m.Subset?.Validate();
        foreach (var t in m.Terms)
        {
            Term(t.Term);
            if (!(t.Lambda >= 0 && double.IsFinite(t.Lambda))) throw new OptionException("Lambda", $"{t.Term} λ {t.Lambda}: must be a finite number ≥ 0");
        }
    }

    /// <summary>The one factory: the optimizer of the method over the tensors a run trains (<see cref="TrainedSet"/>: the
    /// model's parameters, or LoRA's adapters), and its loss terms.</summary>
    public static (BlockOptimizer Optimizer, IReadOnlyList<ILossTerm> Terms) Create(TrainedSet trained, TrainingOptions o)
    {
        var named = trained.Parameters;
        var member = Member(o.Method.Optimizer);
        var track = o.TrackTouched ?? named.Sum(p => p.Parameter.numel()) < Defaults.SmallModel;
        var opt = member.Create(new OptimizerArgs(named, o.LearningRate, o.WeightDecay, o.Method.Alpha, o.Seed, track) { Subset = o.Method.Subset ?? new() });
        opt.BFloat16Update = o.BFloat16Update;
        opt.MomentStorage = o.OptimizerState;
        opt.RoundingSeed = o.Seed;
        var tensors = named.Select(p => (Tensor)p.Parameter).ToList();
        var terms = o.Method.Terms.Select(t => Term(t.Term).Create(tensors, t.Lambda)).ToList();
        return (opt, terms);
    }
}
