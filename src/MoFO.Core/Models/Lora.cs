using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>Which adapter a <see cref="LoraSpec"/> attaches: LoRA (Hu et al. 2021), DoRA (Liu et al. 2024: a learned
/// magnitude per output feature, <see cref="DoraLinear"/>) or PiSSA (Meng et al. 2024: LoRA initialized from the
/// weight's principal singular triplets, the base replaced by the residual, <see cref="PissaLinear"/>).</summary>
public enum LoraVariant { Lora, Dora, Pissa }

/// <summary>
/// A LoRA configuration (Hu et al. 2021): the variant (<see cref="LoraVariant"/>), rank r, scaling α (the update is α/r · B·A), dropout on the adapters' input,
/// the targeted linear layers (by their last name: <c>q_proj</c>, <c>query_key_value</c>, …; empty = the model's
/// attention and MLP projections). The member that trains the adapters is the method's (<c>MethodSpec.Optimizer</c>).
/// </summary>
public sealed record LoraSpec
{
    public int Rank { get; init; } = 8;
    /// <summary>α; null = 2·r (the setting of Biderman et al. 2024).</summary>
    public double? Alpha { get; init; }
    public double Dropout { get; init; }
    public IReadOnlyList<string> Targets { get; init; } = [];
    /// <summary>LoRA (the default, left out of the JSON so that LoRA runs keep their fingerprints), DoRA or PiSSA.</summary>
    [System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingDefault)]
    public LoraVariant Variant { get; init; }

    /// <summary>The variant's method name: <c>lora</c>, <c>dora</c>, <c>pissa</c>.</summary>
    [System.Text.Json.Serialization.JsonIgnore] public string VariantName => Variant.ToString().ToLowerInvariant();

    [System.Text.Json.Serialization.JsonIgnore] public double ResolvedAlpha => Alpha ?? 2.0 * Rank;
    [System.Text.Json.Serialization.JsonIgnore] public double Scale => ResolvedAlpha / Rank;

    /// <summary>The targets for a model: the given ones, else its attention and MLP projections.</summary>
    public IReadOnlyList<string> TargetsFor(ModelConfig config) =>
        Targets.Count > 0 ? Targets
        : config is GptNeoXConfig ? ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
        : ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>The defaults with the given settings (null: the default).</summary>
    public static LoraSpec Of(int? rank, double? alpha, double? dropout, IEnumerable<string>? targets)
    {
        var d = new LoraSpec();
        return d with { Rank = rank ?? d.Rank, Alpha = alpha, Dropout = dropout ?? d.Dropout, Targets = targets?.ToList() ?? d.Targets };
    }

    public void Validate()
    {
        if (!Enum.IsDefined(Variant)) throw new OptionException("Method", $"Method: no adapter variant {(int)Variant} (expected lora, dora or pissa)");
        if (Rank < 1) throw new OptionException("LoraRank", $"LoraRank {Rank}: must be at least 1");
        if (Alpha is double a && !(a > 0 && double.IsFinite(a))) throw new OptionException("LoraAlpha", $"LoraAlpha {a}: must be a finite number > 0");
        if (!(Dropout >= 0 && Dropout < 1)) throw new OptionException("LoraDropout", $"LoraDropout {Dropout}: must lie in [0, 1)");
        if (Targets.Any(string.IsNullOrWhiteSpace)) throw new OptionException("LoraTargets", "LoraTargets: an empty name (expected layer names such as q_proj,v_proj)");
    }

    public override string ToString()
    {
        var inv = CultureInfo.InvariantCulture;
        var parts = new List<string> { $"r={Rank}", $"α={ResolvedAlpha.ToString("G", inv)}" };
        if (Dropout > 0) parts.Add($"dropout={Dropout.ToString("G", inv)}");
        if (Targets.Count > 0) parts.Add($"targets={string.Join("+", Targets)}");
        return $"{VariantName}({string.Join(", ", parts)})";
    }

    public bool Equals(LoraSpec? o) =>
        o is not null && Variant == o.Variant && Rank == o.Rank && ResolvedAlpha.Equals(o.ResolvedAlpha) && Dropout.Equals(o.Dropout) && Targets.SequenceEqual(o.Targets);

    public override int GetHashCode() => HashCode.Combine(Variant, Rank, ResolvedAlpha, Dropout, Targets.Count);
}

/// <summary>One matrix of an adapter as a module with a <c>weight</c> (so that its parameter is named
/// <c>….lora_A.weight</c>, as PEFT names it): y = x·Wᵀ.</summary>
public sealed class AdapterMatrix : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;

    internal AdapterMatrix(Tensor value) : base(nameof(AdapterMatrix))
    {
        weight = new Parameter(value);
        RegisterComponents();
    }

    public Parameter Weight => weight;

    public override Tensor forward(Tensor x) => nn.functional.linear(x, weight);
}

/// <summary>A linear layer with a low-rank adapter, in the layer's place in the model's tree (PEFT's
/// <c>lora.Linear</c>): y = base_layer(x) + (α/r)·lora_B(lora_A(dropout(x))), with A [r, in] and B [out, r] (B starts at
/// zero, so a fresh adapter leaves the model unchanged). Its parameters are <c>{layer}.lora_A.weight</c> and
/// <c>{layer}.lora_B.weight</c>; the layer's own stay under <c>{layer}.base_layer</c> and keep their HF names in the
/// model's state dict (<see cref="LinearWrapper"/>). The variants (<see cref="DoraLinear"/>, <see cref="PissaLinear"/>)
/// change the forward, the merge, the distance and the files.</summary>
public class LoraLinear : LinearWrapper
{
#pragma warning disable IDE1006 // PEFT's names
    private protected readonly AdapterMatrix lora_A, lora_B;
#pragma warning restore IDE1006
    private protected readonly Scalar scaleScalar, keepScalar;

    internal LoraLinear(string name, Linear target, Tensor a, Tensor b, double scale, double dropout, int index, LoraAdapters owner)
        : base(nameof(LoraLinear), target)
    {
        Name = name; Scale = scale; Dropout = dropout; Index = index; Owner = owner;
        lora_A = new AdapterMatrix(a);
        lora_B = new AdapterMatrix(b);
        scaleScalar = scale.ToScalar();
        keepScalar = (1.0 / (1.0 - dropout)).ToScalar();
        RegisterComponents();
    }

    /// <summary>The linear layer's module path (<c>model.layers.0.self_attn.q_proj</c>).</summary>
    public string Name { get; }
    public Parameter A => lora_A.Weight;
    public Parameter B => lora_B.Weight;
    public double Scale { get; }
    public double Dropout { get; }
    internal int Index { get; }
    internal LoraAdapters Owner { get; }

    public override Tensor forward(Tensor x) => base_layer.forward(x) + lora_B.forward(lora_A.forward(Dropped(x))).mul(scaleScalar);

    /// <summary>The adapter's input: x, or in training with dropout x under a mask drawn from a generator seeded by the
    /// micro-batch and the adapter (also in a checkpointed layer's forward under no_grad: the same mask in the layer's
    /// recomputation and after a resume).</summary>
    private protected Tensor Dropped(Tensor x)
    {
        if (!(Dropout > 0 && training)) return x;
        using var g = new Generator(Owner.DropoutSeedFor(Index), x.device);
        using var keep = torch.empty_like(x).bernoulli_(1.0 - Dropout, g);
        return x.mul(keep).mul(keepScalar);
    }

    /// <summary>(α/r)·B·A in float32, without gradient.</summary>
    private protected Tensor Update()
    {
        using var _ = no_grad();
        return B.to(ScalarType.Float32).matmul(A.to(ScalarType.Float32)).mul(scaleScalar);
    }

    /// <summary>What the merged weight differs from the original base weight by, in float32: LoRA's (α/r)·B·A.</summary>
    public virtual Tensor Delta() => Update();

    /// <summary>The merged weight in float32: W + (α/r)·B·A.</summary>
    internal virtual Tensor MergedWeight()
    {
        using var _ = no_grad();
        return base_layer.weight!.to(ScalarType.Float32).add_(Update());
    }

    /// <summary>‖<see cref="Delta"/>‖², in float64: ‖B·A‖² is Σ (BᵀB) ⊙ (A·Aᵀ) over two r × r matrices, so the dense out × in
    /// product is never formed (O(r²·(in + out)), cheap enough for every step).</summary>
    internal virtual double DeltaSquaredNorm() => Scale * Scale * LowRankSquaredNorm(B, A);

    private protected static double LowRankSquaredNorm(Tensor b, Tensor a)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var b64 = b.to(ScalarType.Float64);
        var a64 = a.to(ScalarType.Float64);
        return (b64.t().matmul(b64) * a64.matmul(a64.t())).sum().item<double>();
    }

    /// <summary>The trainable tensors under their PEFT keys (A, then B).</summary>
    internal virtual IEnumerable<(string Key, Parameter Parameter)> OwnParameters() =>
        [(LoraAdapters.Key(Name, "A"), A), (LoraAdapters.Key(Name, "B"), B)];

    /// <summary>The tensors PEFT's <c>adapter_model.safetensors</c> holds for this layer.</summary>
    internal virtual IEnumerable<(string Key, Tensor Tensor)> PeftTensors() => OwnParameters().Select(p => (p.Key, (Tensor)p.Parameter));

    /// <summary>The tensors a checkpoint holds for this layer (read back in place by <see cref="LoraAdapters.LoadWeights"/>).</summary>
    internal virtual IEnumerable<(string Key, Tensor Tensor)> CheckpointTensors() => PeftTensors();

    /// <summary>Before and after a checkpoint is read into <see cref="CheckpointTensors"/>.</summary>
    internal virtual void Loading() { }
    internal virtual void Loaded() { }

    /// <summary>Before the plain layer goes back unmerged: the base weight as it was before the adapter.</summary>
    internal virtual void RestoreBase() { }

    /// <summary>Frees the adapter's own tensors (not the wrapped layer's: disposing the wrapper as a module would).</summary>
    internal virtual void DisposeAdapter()
    {
        lora_A.Dispose(); lora_B.Dispose();
        scaleScalar.Dispose(); keepScalar.Dispose();
    }
}

/// <summary>
/// DoRA (Liu et al. 2024; PEFT's <c>use_dora=True</c>): LoRA with a learned magnitude m per output feature,
/// W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖, the norm taken over each output row of the [out, in] weight; m starts at ‖W‖, so
/// a fresh adapter leaves the model unchanged. The forward is PEFT's: y = base(x) + (m/‖·‖ − 1)·W·x' + (m/‖·‖)·s·B·A·x',
/// x' the dropped input (without dropout, W·x' is the base output less its bias; with it, the base is applied again to
/// x'). As PEFT (and section 4.3 of the paper), the norm is treated as a constant: no gradient flows through it. It is
/// computed in float32 (W + s·B·A in bfloat16 would round the update away) and cast to m's dtype. The magnitude is the
/// parameter <c>{layer}.lora_magnitude_vector</c> [out], PEFT's key.
/// </summary>
public sealed class DoraLinear : LoraLinear
{
#pragma warning disable IDE1006 // PEFT's name
    readonly Parameter lora_magnitude_vector;
#pragma warning restore IDE1006

    internal DoraLinear(string name, Linear target, Tensor a, Tensor b, Tensor magnitude, double scale, double dropout, int index, LoraAdapters owner)
        : base(name, target, a, b, scale, dropout, index, owner)
    {
        lora_magnitude_vector = new Parameter(magnitude);
        register_parameter(nameof(lora_magnitude_vector), lora_magnitude_vector);
    }

    /// <summary>m [out].</summary>
    public Parameter Magnitude => lora_magnitude_vector;

    /// <summary>‖W + s·B·A‖ per output row, in float32, without gradient.</summary>
    public Tensor RowNorm(Tensor w)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return w.to(ScalarType.Float32).add(Update()).norm(1, false, 2).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x)
    {
        var y = base_layer.forward(x);
        var h = Dropped(x);
        var m = lora_magnitude_vector;
        using var norm = RowNorm(base_layer.weight!).to(m.dtype);
        var ratio = m / norm;
        var lora = lora_B.forward(lora_A.forward(h));
        var baseOut = !ReferenceEquals(h, x) ? nn.functional.linear(h, base_layer.weight!)
                      : base_layer.bias is { } bias ? y - bias : y;
        return y + (ratio - 1) * baseOut + ratio * lora.mul(scaleScalar);
    }

    /// <summary>m ⊙ (W + s·B·A) / ‖W + s·B·A‖ in float32.</summary>
    internal override Tensor MergedWeight()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var v = base_layer.weight!.to(ScalarType.Float32).add(Update());
        var ratio = Magnitude.to(ScalarType.Float32) / v.norm(1, false, 2);
        return v.mul_(ratio.unsqueeze(1)).MoveToOuterDisposeScope();
    }

    public override Tensor Delta()
    {
        using var _ = no_grad();
        return MergedWeight().sub_(base_layer.weight!.to(ScalarType.Float32));
    }

    /// <summary>Dense: the magnitude rescales whole rows of W.</summary>
    internal override double DeltaSquaredNorm()
    {
        using var scope = NewDisposeScope();
        return Delta().to(ScalarType.Float64).square().sum().item<double>();
    }

    internal override IEnumerable<(string Key, Parameter Parameter)> OwnParameters() =>
        base.OwnParameters().Append(($"base_model.model.{Name}.lora_magnitude_vector", Magnitude));

    internal override void DisposeAdapter()
    {
        base.DisposeAdapter();
        lora_magnitude_vector.Dispose();
    }
}

/// <summary>
/// PiSSA (Meng et al. 2024; PEFT's <c>init_lora_weights="pissa"</c>): LoRA whose A and B start from the weight's top-r
/// singular triplets W = U·S·Vᵀ, A₀ = √(S_r/s)·V_rᵀ [r, in] and B₀ = U_r·√(S_r/s) [out, r] (so s·B₀·A₀ = U_r·S_r·V_rᵀ),
/// and whose base is replaced by the residual W_res = W − s·B₀·A₀ (exact SVD in float32, as PEFT; A₀ and B₀ are cast to
/// the weight's dtype before the residual is formed, so W_res + s·B₀·A₀ = W up to W_res's rounding). It keeps A₀ and B₀
/// (buffers): against the original base its update is ΔW = s·(B·A − B₀·A₀), which is what the distance measures, what a
/// checkpoint needs to rebuild W_res, and how the adapter is written for PEFT users: the rank-2r LoRA
/// A' = [A; A₀], B' = [B | −B₀] on the ORIGINAL base (PEFT's <c>path_initial_model_for_weight_conversion</c>).
/// Detached unmerged, it puts W = W_res + s·B₀·A₀ back.
/// </summary>
public sealed class PissaLinear : LoraLinear
{
    readonly Tensor a0, b0;

    internal PissaLinear(string name, Linear target, Tensor a, Tensor b, double scale, double dropout, int index, LoraAdapters owner)
        : base(name, target, a, b, scale, dropout, index, owner)
    {
        using (no_grad())
        {
            a0 = A.detach().clone();   // the parameters took a's and b's handles
            b0 = B.detach().clone();
        }
        register_buffer("pissa_initial_A", a0, false);
        register_buffer("pissa_initial_B", b0, false);
    }

    /// <summary>A₀ [r, in] and B₀ [out, r], the initial factors.</summary>
    public Tensor InitialA => a0;
    public Tensor InitialB => b0;

    /// <summary>The factors of a weight's top-r SVD for scale s: A₀ = √(S_r/s)·V_rᵀ, B₀ = U_r·√(S_r/s), in the weight's
    /// dtype, computed in float32 on its device.</summary>
    public static (Tensor A, Tensor B) Factors(Tensor weight, int rank, double scale)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (u, s, vh) = torch.linalg.svd(weight.to(ScalarType.Float32), fullMatrices: false);
        var root = s.narrow(0, 0, rank).div(scale).sqrt();
        var a = vh.narrow(0, 0, rank).mul(root.unsqueeze(1)).to(weight.dtype);
        var b = u.narrow(1, 0, rank).mul(root.unsqueeze(0)).to(weight.dtype);
        return (a.MoveToOuterDisposeScope(), b.MoveToOuterDisposeScope());
    }

    /// <summary>s·(B·A − B₀·A₀).</summary>
    public override Tensor Delta()
    {
        using var _ = no_grad();
        return Update().sub_(b0.to(ScalarType.Float32).matmul(a0.to(ScalarType.Float32)).mul_(scaleScalar));
    }

    internal override double DeltaSquaredNorm()
    {
        using var scope = NewDisposeScope();
        var (a, b) = Converted();
        return Scale * Scale * LowRankSquaredNorm(b, a);
    }

    /// <summary>The rank-2r LoRA factors on the original base: A' = [A; A₀], B' = [B | −B₀].</summary>
    (Tensor A, Tensor B) Converted()
    {
        using var _ = no_grad();
        return (torch.cat([A.detach(), a0], 0), torch.cat([B.detach(), -b0], 1));
    }

    internal override IEnumerable<(string Key, Tensor Tensor)> PeftTensors()
    {
        var (a, b) = Converted();
        return [(LoraAdapters.Key(Name, "A"), a), (LoraAdapters.Key(Name, "B"), b)];
    }

    internal override IEnumerable<(string Key, Tensor Tensor)> CheckpointTensors() =>
        OwnParameters().Select(p => (p.Key, (Tensor)p.Parameter))
                       .Concat([($"base_model.model.{Name}.pissa_initial_A", a0), ($"base_model.model.{Name}.pissa_initial_B", b0)]);

    Tensor? _residualOf;   // s·B₀·A₀ before a checkpoint was read

    /// <summary>A checkpoint's A₀, B₀ (read in place): when they differ from this SVD's (another device or library), the
    /// residual is rebuilt from them, W_res = W_res + s·(B₀·A₀ before − B₀·A₀ read).</summary>
    internal override void Loaded()
    {
        if (_residualOf is null) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var now = b0.to(ScalarType.Float32).matmul(a0.to(ScalarType.Float32)).mul_(scaleScalar);
        if (!now.eq(_residualOf).all().item<bool>())
        {
            var w = base_layer.weight!;
            w.copy_(w.to(ScalarType.Float32).add_(_residualOf).sub_(now));
        }
        _residualOf.Dispose();
        _residualOf = null;
    }

    /// <summary>Before a checkpoint is read: remembers s·B₀·A₀ (see <see cref="Loaded"/>).</summary>
    internal override void Loading()
    {
        using var _ = no_grad();
        _residualOf?.Dispose();
        _residualOf = b0.to(ScalarType.Float32).matmul(a0.to(ScalarType.Float32)).mul_(scaleScalar).DetachFromDisposeScope();
    }

    internal override void RestoreBase()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var w = base_layer.weight!;
        w.copy_(w.to(ScalarType.Float32).add_(b0.to(ScalarType.Float32).matmul(a0.to(ScalarType.Float32)).mul_(scaleScalar)));
    }

    internal override void DisposeAdapter()
    {
        base.DisposeAdapter();
        a0.Dispose(); b0.Dispose();
        _residualOf?.Dispose();
    }
}

/// <summary>
/// LoRA adapters in a model's tree: each targeted linear layer is replaced by a <see cref="LoraLinear"/> that holds it
/// (<see cref="ModuleTree.Replace"/>), so the models' code knows nothing of them and device moves, casts and
/// <c>named_modules</c> see them; the model's state dict keeps the HF keys. <see cref="Attach"/> freezes the base
/// weights; <see cref="Merge"/> folds the adapters into them and puts the plain layers back. Saved in PEFT's layout:
/// <c>adapter_model.safetensors</c> with keys <c>base_model.model.{layer}.lora_A.weight</c> [r, in] and
/// <c>….lora_B.weight</c> [out, r] (DoRA: and <c>….lora_magnitude_vector</c> [out]; PiSSA: converted to a rank-2r LoRA
/// on the original base), and <c>adapter_config.json</c>.
/// </summary>
public sealed class LoraAdapters : IDisposable
{
    public const string WeightsFile = "adapter_model.safetensors";
    public const string ConfigFile = "adapter_config.json";

    readonly CausalLMModule _module;
    readonly List<LoraLinear> _adapters = new();
    // by name: a device move or dtype cast of the model puts new parameter objects in the tree
    readonly List<(string Name, bool RequiresGrad)> _frozen = new();
    bool _detached, _merged;

    LoraAdapters(CausalLMModule module, LoraSpec spec) { _module = module; Spec = spec; }

    public LoraSpec Spec { get; }
    public IReadOnlyList<LoraLinear> Adapters => _adapters;

    /// <summary>Seeds the dropout masks of the next forward pass (the trainer: from the run's seed, the step and the
    /// micro-batch).</summary>
    public long DropoutSeed { get; set; }

    internal ulong DropoutSeedFor(int index) => unchecked((ulong)(DropoutSeed * 1_000_003L + index) * 0x9E3779B97F4A7C15UL);

    /// <summary>The adapters in a model's tree (null: none).</summary>
    public static LoraAdapters? Of(CausalLMModule module) => module.modules().OfType<LoraLinear>().FirstOrDefault()?.Owner;

    /// <summary>The trainable tensors in PEFT's names, A then B (DoRA: then the magnitude) per layer in the model's order.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters =>
        _adapters.SelectMany(a => a.OwnParameters()).Select(p => (p.Key, p.Parameter)).ToList();

    internal static string Key(string layer, string which) => $"base_model.model.{layer}.lora_{which}.weight";

    /// <summary>The linear layers a spec adapts in a model, by module path, in the model's order (for a module built on
    /// the meta device too: the memory plan's shapes). A target that names no linear layer is an
    /// <see cref="OptionException"/> on <c>LoraTargets</c>.</summary>
    public static IReadOnlyList<(string Name, Linear Layer)> Targets(CausalLMModule module, LoraSpec spec)
    {
        var targets = spec.TargetsFor(module.Config);
        var linears = module.named_modules().Where(m => m.module is Linear).Select(m => (m.name, Layer: (Linear)m.module)).ToList();
        foreach (var t in targets)
            if (!linears.Any(l => LastName(l.name) == t))
                throw new OptionException("LoraTargets",
                    $"LoraTargets: no linear layer named '{t}' in this {module.Config.ModelType} model (its linear layers: {string.Join(", ", linears.Select(l => LastName(l.name)).Distinct())})");
        return linears.Where(l => targets.Contains(LastName(l.name))).ToList();
    }

    /// <summary>The adapters' trained tensors a spec gives a model, in PEFT's names, with their shapes (A [r, in], then B
    /// [out, r], DoRA's magnitude [out], per adapted layer), read from the module's own layers (built on the meta device,
    /// nothing is allocated).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Shapes(CausalLMModule module, LoraSpec spec) =>
        Targets(module, spec).SelectMany(l => new[]
        {
            (Key(l.Name, "A"), new[] { (long)spec.Rank, l.Layer.weight!.shape[1] }),
            (Key(l.Name, "B"), new[] { l.Layer.weight!.shape[0], (long)spec.Rank }),
        }.Concat(spec.Variant == LoraVariant.Dora ? [($"base_model.model.{l.Name}.lora_magnitude_vector", new[] { l.Layer.weight!.shape[0] })] : [])).ToList();

    /// <summary>Attaches fresh adapters (A uniform in ±1/√in as PEFT's Kaiming init, B zero; drawn from
    /// <paramref name="seed"/>; DoRA: m = ‖W‖ per row; PiSSA: A and B from W's SVD, the base replaced by the residual) to
    /// the targeted layers and freezes every base weight.</summary>
    public static LoraAdapters Attach(CausalLMModule module, LoraSpec spec, long seed)
    {
        spec.Validate();
        if (Of(module) is not null) throw new InvalidOperationException("the model already has LoRA adapters attached");
        var layers = Targets(module, spec);
        if (spec.Variant == LoraVariant.Pissa && layers.FirstOrDefault(l => spec.Rank > l.Layer.weight!.shape.Min()) is { Layer: not null } small)
            throw new OptionException("LoraRank", $"LoraRank {spec.Rank}: PiSSA takes r singular triplets, more than {small.Name} [{string.Join(", ", small.Layer.weight!.shape)}] has");
        var set = new LoraAdapters(module, spec);
        set.Freeze();
        using var g = new Generator((ulong)seed);
        using var noGrad = no_grad();
        try
        {
            foreach (var (name, layer) in layers)
            {
                var w = layer.weight!;
                long outF = w.shape[0], inF = w.shape[1];
                var bound = 1.0 / Math.Sqrt(inF);
                var (a, b) = spec.Variant == LoraVariant.Pissa ? PissaLinear.Factors(w, spec.Rank, spec.Scale)
                             : (torch.empty(spec.Rank, inF, w.dtype, w.device).uniform_(-bound, bound, g), torch.zeros(outF, spec.Rank, w.dtype, w.device));
                a.DetachFromDisposeScope(); b.DetachFromDisposeScope();
                int index = set._adapters.Count;
                LoraLinear adapter = spec.Variant switch
                {
                    LoraVariant.Dora => new DoraLinear(name, layer, a, b, DoraNorm(w), spec.Scale, spec.Dropout, index, set),
                    LoraVariant.Pissa => new PissaLinear(name, layer, a, b, spec.Scale, spec.Dropout, index, set),
                    _ => new LoraLinear(name, layer, a, b, spec.Scale, spec.Dropout, index, set),
                };
                if (adapter is PissaLinear)
                    using (NewDisposeScope()) w.copy_(w.to(ScalarType.Float32).sub_(adapter.B.to(ScalarType.Float32).matmul(adapter.A.to(ScalarType.Float32)).mul_(spec.Scale)));
                set._adapters.Add(adapter);
                ModuleTree.Replace(module, name, adapter);
            }
        }
        catch
        {
            set.Dispose();
            throw;
        }
        return set;
    }

    /// <summary>DoRA's initial magnitude: ‖W‖ per output row (float32, in the weight's dtype).</summary>
    static Tensor DoraNorm(Tensor w)
    {
        using var scope = NewDisposeScope();
        return w.to(ScalarType.Float32).norm(1, false, 2).to(w.dtype).MoveToOuterDisposeScope().DetachFromDisposeScope();
    }

    void Freeze()
    {
        foreach (var (name, p) in _module.ModelParameters())
        {
            _frozen.Add((name, p.requires_grad));
            p.requires_grad_(false);
        }
    }

    static string LastName(string path) => path[(path.LastIndexOf('.') + 1)..];

    /// <summary>‖ΔW‖ over every adapter: the distance of the merged model from the original base (LoRA: ‖(α/r)·B·A‖,
    /// from r × r products in float64, O(r²·(in + out)): the trainer measures it every step; PiSSA: the same over its
    /// rank-2r update; DoRA: dense, per layer, as its forward is).</summary>
    public double DeltaL2() => Math.Sqrt(_adapters.Sum(a => a.DeltaSquaredNorm()));

    /// <summary>The entries of the model's weights that merging changes (non-zero (α/r)·B·A), and all the model's entries.</summary>
    public (long Changed, long Numel) ChangedEntries()
    {
        long changed = 0;
        foreach (var a in _adapters)
        {
            using var scope = NewDisposeScope();
            changed += a.Delta().ne(Scalars.Zero).sum().item<long>();
        }
        return (changed, _module.ModelParameters().Sum(p => p.Parameter.numel()));
    }

    /// <summary>Folds each adapter into its layer's weight (LoRA and PiSSA: W + (α/r)·B·A; DoRA: m ⊙ (W + (α/r)·B·A) /
    /// ‖W + (α/r)·B·A‖; computed in float32, stored in the weight's dtype), then detaches the adapters: the plain layers
    /// are back in the tree, with the fine-tuned weights.</summary>
    public void Merge()
    {
        if (_detached) throw new InvalidOperationException("the adapters are detached");
        using (no_grad())
            foreach (var a in _adapters)
            {
                using var scope = NewDisposeScope();
                a.Base.weight!.copy_(a.MergedWeight());
            }
        _merged = true;
        Detach();
    }

    /// <summary>Puts the plain layers back in the model's tree, trainable again: merged, with the fine-tuned weights;
    /// otherwise with the base weights as they were (PiSSA puts W = W_res + s·B₀·A₀ back).</summary>
    public void Detach()
    {
        if (_detached) return;
        _detached = true;
        if (!_merged) foreach (var a in _adapters) a.RestoreBase();
        foreach (var a in _adapters) ModuleTree.Replace(_module, a.Name, a.Base);
        var now = _module.ModelParameters().ToDictionary(p => p.Name, p => p.Parameter);
        foreach (var (name, rg) in _frozen) now[name].requires_grad_(rg);
    }

    /// <summary>The adapters' tensors under their PEFT keys, as <see cref="Save"/> writes them (PiSSA: converted to the
    /// rank-2r LoRA on the original base).</summary>
    public IReadOnlyDictionary<string, Tensor> StateDict() => _adapters.SelectMany(a => a.PeftTensors()).ToDictionary(p => p.Key, p => p.Tensor);

    /// <summary>What a checkpoint holds to resume (<see cref="LoadWeights"/>): the trained tensors (PiSSA: and A₀, B₀).</summary>
    public IReadOnlyDictionary<string, Tensor> CheckpointTensors() => _adapters.SelectMany(a => a.CheckpointTensors()).ToDictionary(p => p.Key, p => p.Tensor);

    /// <summary>Writes <c>adapter_model.safetensors</c> and <c>adapter_config.json</c> (PEFT's) into <paramref name="folder"/>:
    /// DoRA with <c>use_dora</c>; PiSSA converted as PEFT's <c>path_initial_model_for_weight_conversion</c> does, a plain
    /// LoRA on the original base with r and <c>lora_alpha</c> doubled (the scale stays) and <c>init_lora_weights</c> true.</summary>
    public void Save(string folder, string? baseModel = null)
    {
        Directory.CreateDirectory(folder);
        SafeTensors.Save(Path.Combine(folder, WeightsFile), StateDict(), new Dictionary<string, string> { ["format"] = "pt" });
        var targets = Spec.TargetsFor(_module.Config);
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = baseModel,
            ["r"] = Spec.Variant == LoraVariant.Pissa ? 2 * Spec.Rank : Spec.Rank,
            ["lora_alpha"] = Spec.Variant == LoraVariant.Pissa ? 2 * Spec.ResolvedAlpha : Spec.ResolvedAlpha,
            ["lora_dropout"] = Spec.Dropout,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["use_rslora"] = false,
            ["use_dora"] = Spec.Variant == LoraVariant.Dora,
            ["init_lora_weights"] = true,
            ["inference_mode"] = true,
            ["modules_to_save"] = null,
            ["layers_to_transform"] = null,
            ["rank_pattern"] = new JsonObject(),
            ["alpha_pattern"] = new JsonObject(),
            ["revision"] = null,
        };
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Copies saved adapter tensors (PEFT keys; a checkpoint's, <see cref="CheckpointTensors"/>) into these
    /// adapters; every adapter must be present with its shape.</summary>
    public void LoadWeights(string file)
    {
        if (!File.Exists(file)) throw new CheckpointException($"{file}: the adapter weights are missing");
        var own = CheckpointTensors();
        using var _ = no_grad();
        using var f = SafeTensorFile.Open(file);
        var unknown = f.Names.FirstOrDefault(n => !own.ContainsKey(n));
        if (unknown is not null)
            throw CheckpointException.For(file, unknown, $"unexpected tensor for {Spec} adapters on {string.Join(", ", Spec.TargetsFor(_module.Config))} (expected keys base_model.model.<layer>.lora_A.weight / lora_B.weight{(Spec.Variant == LoraVariant.Dora ? " / lora_magnitude_vector" : "")})");
        foreach (var a in _adapters) a.Loading();
        foreach (var (name, p) in own)
        {
            if (!f.Names.Contains(name)) throw CheckpointException.For(file, name, $"missing tensor (expected shape [{string.Join(", ", p.shape)}])");
            var shape = f.Shape(name);
            if (!shape.SequenceEqual(p.shape))
                throw CheckpointException.For(file, name, $"wrong shape [{string.Join(", ", shape)}], expected [{string.Join(", ", p.shape)}] (rank {Spec.Rank})");
            f.ReadInto(name, p);
        }
        foreach (var a in _adapters) a.Loaded();
    }

    /// <summary>Reads a PEFT LoRA or DoRA adapter folder (<c>adapter_config.json</c>, <c>adapter_model.safetensors</c>) and
    /// attaches it, unmerged, to <paramref name="module"/> (a PiSSA run's folder is a converted plain LoRA).</summary>
    public static LoraAdapters Load(CausalLMModule module, string folder)
    {
        var configFile = Path.Combine(folder, ConfigFile);
        if (!File.Exists(configFile)) throw new CheckpointException($"{configFile}: missing (a PEFT LoRA adapter folder holds {ConfigFile} and {WeightsFile})");
        JsonNode root;
        try { root = JsonNode.Parse(File.ReadAllText(configFile)) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new CheckpointException($"{configFile}: not valid JSON ({e.Message})"); }
        string Field(string f) => $"{configFile}: field '{f}'";
        var type = root["peft_type"]?.GetValue<string>();
        if (type is not null && type != "LORA") throw new CheckpointException($"{Field("peft_type")} is {type}; expected LORA");
        int r = root["r"]?.GetValue<int>() ?? throw new CheckpointException($"{Field("r")} is missing (expected the rank, an integer)");
        double alpha = root["lora_alpha"]?.GetValue<double>() ?? throw new CheckpointException($"{Field("lora_alpha")} is missing (expected a number)");
        double dropout = root["lora_dropout"]?.GetValue<double>() ?? 0;
        if (root["fan_in_fan_out"]?.GetValue<bool>() == true) throw new CheckpointException($"{Field("fan_in_fan_out")} is true: Conv1D (GPT-2) layouts are not supported");
        if (root["use_rslora"]?.GetValue<bool>() == true) throw new CheckpointException($"{Field("use_rslora")} is true: rank-stabilized scaling is not supported");
        var dora = root["use_dora"]?.GetValue<bool>() == true;
        if (root["init_lora_weights"] is JsonValue init && init.TryGetValue<string>(out var how) && how.StartsWith("pissa", StringComparison.OrdinalIgnoreCase))
            throw new CheckpointException($"{Field("init_lora_weights")} is '{how}': an unconverted PiSSA adapter needs its residual base (save it with path_initial_model_for_weight_conversion, as mofo does)");
        var targetsNode = root["target_modules"];
        var targets = targetsNode switch
        {
            JsonArray arr => arr.Select(t => t!.GetValue<string>()).ToList(),
            JsonValue v when v.TryGetValue<string>(out var s) => throw new CheckpointException($"{Field("target_modules")} is the pattern '{s}'; expected a list of layer names"),
            _ => throw new CheckpointException($"{Field("target_modules")} is missing (expected a list of layer names)"),
        };
        var spec = new LoraSpec { Rank = r, Alpha = alpha, Dropout = dropout, Targets = targets, Variant = dora ? LoraVariant.Dora : LoraVariant.Lora };
        var set = Attach(module, spec, 0);
        try { set.LoadWeights(Path.Combine(folder, WeightsFile)); }
        catch { set.Dispose(); throw; }
        return set;
    }

    public void Dispose()
    {
        Detach();
        foreach (var a in _adapters) a.DisposeAdapter();
    }
}
