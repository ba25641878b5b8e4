using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A LoRA configuration (Hu et al. 2021): rank r, scaling α (the update is α/r · B·A), dropout on the adapters' input,
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
        return $"lora({string.Join(", ", parts)})";
    }

    public bool Equals(LoraSpec? o) =>
        o is not null && Rank == o.Rank && ResolvedAlpha.Equals(o.ResolvedAlpha) && Dropout.Equals(o.Dropout) && Targets.SequenceEqual(o.Targets);

    public override int GetHashCode() => HashCode.Combine(Rank, ResolvedAlpha, Dropout, Targets.Count);
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
/// model's state dict (<see cref="LinearWrapper"/>).</summary>
public sealed class LoraLinear : LinearWrapper
{
#pragma warning disable IDE1006 // PEFT's names
    readonly AdapterMatrix lora_A, lora_B;
#pragma warning restore IDE1006
    readonly Scalar scaleScalar, keepScalar;

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

    public override Tensor forward(Tensor x)
    {
        var y = base_layer.forward(x);
        var h = x;
        if (Dropout > 0 && training)
        {
            // in training mode (also in a checkpointed layer's forward under no_grad): a mask drawn from a generator
            // seeded by the micro-batch and the adapter, the same in the layer's recomputation and after a resume
            using var g = new Generator(Owner.DropoutSeedFor(Index), x.device);
            using var keep = torch.empty_like(x).bernoulli_(1.0 - Dropout, g);
            h = x.mul(keep).mul(keepScalar);
        }
        return y + lora_B.forward(lora_A.forward(h)).mul(scaleScalar);
    }

    /// <summary>(α/r)·B·A in float32: what merging adds to the layer's weight.</summary>
    public Tensor Delta()
    {
        using var _ = no_grad();
        return B.to(ScalarType.Float32).matmul(A.to(ScalarType.Float32)).mul(scaleScalar);
    }

    /// <summary>Frees the adapter's own tensors (not the wrapped layer's: disposing the wrapper as a module would).</summary>
    internal void DisposeAdapter()
    {
        lora_A.Dispose(); lora_B.Dispose();
        scaleScalar.Dispose(); keepScalar.Dispose();
    }
}

/// <summary>
/// LoRA adapters in a model's tree: each targeted linear layer is replaced by a <see cref="LoraLinear"/> that holds it
/// (<see cref="ModuleTree.Replace"/>), so the models' code knows nothing of them and device moves, casts and
/// <c>named_modules</c> see them; the model's state dict keeps the HF keys. <see cref="Attach"/> freezes the base
/// weights; <see cref="Merge"/> folds the adapters into them and puts the plain layers back. Saved in PEFT's layout:
/// <c>adapter_model.safetensors</c> with keys <c>base_model.model.{layer}.lora_A.weight</c> [r, in] and
/// <c>….lora_B.weight</c> [out, r], and <c>adapter_config.json</c>.
/// </summary>
public sealed class LoraAdapters : IDisposable
{
    public const string WeightsFile = "adapter_model.safetensors";
    public const string ConfigFile = "adapter_config.json";

    readonly CausalLMModule _module;
    readonly List<LoraLinear> _adapters = new();
    // by name: a device move or dtype cast of the model puts new parameter objects in the tree
    readonly List<(string Name, bool RequiresGrad)> _frozen = new();
    bool _detached;

    LoraAdapters(CausalLMModule module, LoraSpec spec) { _module = module; Spec = spec; }

    public LoraSpec Spec { get; }
    public IReadOnlyList<LoraLinear> Adapters => _adapters;

    /// <summary>Seeds the dropout masks of the next forward pass (the trainer: from the run's seed, the step and the
    /// micro-batch).</summary>
    public long DropoutSeed { get; set; }

    internal ulong DropoutSeedFor(int index) => unchecked((ulong)(DropoutSeed * 1_000_003L + index) * 0x9E3779B97F4A7C15UL);

    /// <summary>The adapters in a model's tree (null: none).</summary>
    public static LoraAdapters? Of(CausalLMModule module) => module.modules().OfType<LoraLinear>().FirstOrDefault()?.Owner;

    /// <summary>The trainable tensors in PEFT's names, A then B per layer in the model's order.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters =>
        _adapters.SelectMany(a => new[] { (Key(a.Name, "A"), a.A), (Key(a.Name, "B"), a.B) }).ToList();

    static string Key(string layer, string which) => $"base_model.model.{layer}.lora_{which}.weight";

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

    /// <summary>The adapters' tensors a spec gives a model, in PEFT's names, with their shapes (A [r, in], then B
    /// [out, r], per adapted layer), read from the module's own layers (built on the meta device, nothing is allocated).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Shapes(CausalLMModule module, LoraSpec spec) =>
        Targets(module, spec).SelectMany(l => new[]
        {
            (Key(l.Name, "A"), new[] { (long)spec.Rank, l.Layer.weight!.shape[1] }),
            (Key(l.Name, "B"), new[] { l.Layer.weight!.shape[0], (long)spec.Rank }),
        }).ToList();

    /// <summary>Attaches fresh adapters (A uniform in ±1/√in as PEFT's Kaiming init, B zero; drawn from
    /// <paramref name="seed"/>) to the targeted layers and freezes every base weight.</summary>
    public static LoraAdapters Attach(CausalLMModule module, LoraSpec spec, long seed)
    {
        spec.Validate();
        if (Of(module) is not null) throw new InvalidOperationException("the model already has LoRA adapters attached");
        var layers = Targets(module, spec);
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
                var a = torch.empty(spec.Rank, inF, w.dtype, w.device).uniform_(-bound, bound, g).DetachFromDisposeScope();
                var b = torch.zeros(outF, spec.Rank, w.dtype, w.device).DetachFromDisposeScope();
                var adapter = new LoraLinear(name, layer, a, b, spec.Scale, spec.Dropout, set._adapters.Count, set);
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

    void Freeze()
    {
        foreach (var (name, p) in _module.ModelParameters())
        {
            _frozen.Add((name, p.requires_grad));
            p.requires_grad_(false);
        }
    }

    static string LastName(string path) => path[(path.LastIndexOf('.') + 1)..];

    /// <summary>‖(α/r)·B·A‖ over every adapter: the distance of the merged model from the base (the base is frozen).
    /// Each ‖B·A‖² is Σ (BᵀB) ⊙ (A·Aᵀ) over two r × r matrices, in float64: the dense out × in product is never formed, so
    /// the trainer can measure it every step at O(r²·(in + out)).</summary>
    public double DeltaL2()
    {
        using var _ = no_grad();
        double sq = 0;
        foreach (var a in _adapters)
        {
            using var scope = NewDisposeScope();
            var b = a.B.to(ScalarType.Float64);
            var aa = a.A.to(ScalarType.Float64);
            sq += a.Scale * a.Scale * (b.t().matmul(b) * aa.matmul(aa.t())).sum().item<double>();
        }
        return Math.Sqrt(sq);
    }

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

    /// <summary>Adds each adapter's (α/r)·B·A to its layer's weight (computed in float32, stored in the weight's dtype),
    /// then detaches the adapters: the plain layers are back in the tree, with the fine-tuned weights.</summary>
    public void Merge()
    {
        using (no_grad())
            foreach (var a in _adapters)
            {
                using var scope = NewDisposeScope();
                var w = a.Base.weight!;
                w.copy_(w.to(ScalarType.Float32).add_(a.Delta()));
            }
        Detach();
    }

    /// <summary>Puts the plain layers back in the model's tree (the base weights as they are, trainable again).</summary>
    public void Detach()
    {
        if (_detached) return;
        _detached = true;
        foreach (var a in _adapters) ModuleTree.Replace(_module, a.Name, a.Base);
        var now = _module.ModelParameters().ToDictionary(p => p.Name, p => p.Parameter);
        foreach (var (name, rg) in _frozen) now[name].requires_grad_(rg);
    }

    /// <summary>The adapters' tensors under their PEFT keys.</summary>
    public IReadOnlyDictionary<string, Tensor> StateDict() => Parameters.ToDictionary(p => p.Name, p => (Tensor)p.Parameter);

    /// <summary>Writes <c>adapter_model.safetensors</c> and <c>adapter_config.json</c> (PEFT's) into <paramref name="folder"/>.</summary>
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
            ["r"] = Spec.Rank,
            ["lora_alpha"] = Spec.ResolvedAlpha,
            ["lora_dropout"] = Spec.Dropout,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["use_rslora"] = false,
            ["use_dora"] = false,
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

    /// <summary>Copies saved adapter tensors (PEFT keys) into these adapters; every adapter must be present with its shape.</summary>
    public void LoadWeights(string file)
    {
        if (!File.Exists(file)) throw new CheckpointException($"{file}: the adapter weights are missing");
        var own = Parameters.ToDictionary(p => p.Name, p => p.Parameter);
        using var _ = no_grad();
        using var f = SafeTensorFile.Open(file);
        var unknown = f.Names.FirstOrDefault(n => !own.ContainsKey(n));
        if (unknown is not null)
            throw CheckpointException.For(file, unknown, $"unexpected tensor for LoRA adapters on {string.Join(", ", Spec.TargetsFor(_module.Config))} (expected keys base_model.model.<layer>.lora_A.weight / lora_B.weight)");
        foreach (var (name, p) in own)
        {
            if (!f.Names.Contains(name)) throw CheckpointException.For(file, name, $"missing tensor (expected shape [{string.Join(", ", p.shape)}])");
            var shape = f.Shape(name);
            if (!shape.SequenceEqual(p.shape))
                throw CheckpointException.For(file, name, $"wrong shape [{string.Join(", ", shape)}], expected [{string.Join(", ", p.shape)}] (rank {Spec.Rank})");
            f.ReadInto(name, p);
        }
    }

    /// <summary>Reads a PEFT LoRA adapter folder (<c>adapter_config.json</c>, <c>adapter_model.safetensors</c>) and
    /// attaches it, unmerged, to <paramref name="module"/>.</summary>
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
        if (root["use_dora"]?.GetValue<bool>() == true) throw new CheckpointException($"{Field("use_dora")} is true: DoRA is not supported");
        var targetsNode = root["target_modules"];
        var targets = targetsNode switch
        {
            JsonArray arr => arr.Select(t => t!.GetValue<string>()).ToList(),
            JsonValue v when v.TryGetValue<string>(out var s) => throw new CheckpointException($"{Field("target_modules")} is the pattern '{s}'; expected a list of layer names"),
            _ => throw new CheckpointException($"{Field("target_modules")} is missing (expected a list of layer names)"),
        };
        var spec = new LoraSpec { Rank = r, Alpha = alpha, Dropout = dropout, Targets = targets };
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
