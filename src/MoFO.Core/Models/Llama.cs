using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>RMSNorm computed in float32 and cast back: weight * (x / sqrt(mean(x²) + eps)).</summary>
public sealed class LlamaRMSNorm : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight;
    readonly double eps;
    readonly Scalar epsScalar;

    public LlamaRMSNorm(long dim, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaRMSNorm))
    {
        weight = new Parameter(torch.ones(dim, dtype: dtype, device: device));
        this.eps = eps;
        epsScalar = eps.ToScalar();   // held by the module: never a temporary (see Scalars)
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var x32 = x.to(ScalarType.Float32);
        var normed = x32 * (x32 * x32).mean([-1L], keepdim: true).add(epsScalar).rsqrt();
        return weight * normed.to(x.dtype);
    }
}

/// <summary>Grouped-query self-attention with rotary embeddings (HF <c>LlamaAttention</c>).</summary>
public sealed class LlamaAttention : nn.Module
{
    /// <summary>The projections (linear layers; an adapter may take a projection's place: <see cref="LinearWrapper"/>).</summary>
    nn.Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
    readonly int heads, kvHeads, headDim;

    public LlamaAttention(LlamaConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaAttention))
    {
        heads = c.NumAttentionHeads; kvHeads = c.NumKeyValueHeads; headDim = c.HeadDim;
        q_proj = nn.Linear(c.HiddenSize, heads * headDim, hasBias: c.AttentionBias, device: device, dtype: dtype);
        k_proj = nn.Linear(c.HiddenSize, kvHeads * headDim, hasBias: c.AttentionBias, device: device, dtype: dtype);
        v_proj = nn.Linear(c.HiddenSize, kvHeads * headDim, hasBias: c.AttentionBias, device: device, dtype: dtype);
        o_proj = nn.Linear(heads * headDim, c.HiddenSize, hasBias: c.AttentionBias, device: device, dtype: dtype);
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KVCache? cache, int layer)
    {
        var (b, t) = (x.shape[0], x.shape[1]);
        var q = q_proj.forward(x).view(b, t, heads, headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(b, t, kvHeads, headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(b, t, kvHeads, headDim).transpose(1, 2);
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);
        var o = CausalLMModule.Attend(q, k, v, mask);
        return o_proj.forward(o.transpose(1, 2).reshape(b, t, heads * headDim));
    }
}

/// <summary>SwiGLU MLP: down(silu(gate(x)) * up(x)).</summary>
public sealed class LlamaMLP : nn.Module<Tensor, Tensor>
{
    nn.Module<Tensor, Tensor> gate_proj, up_proj, down_proj;

    public LlamaMLP(LlamaConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaMLP))
    {
        gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias, device: device, dtype: dtype);
        up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias, device: device, dtype: dtype);
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, hasBias: c.MlpBias, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        down_proj.forward(nn.functional.silu(gate_proj.forward(x)) * up_proj.forward(x));
}

public sealed class LlamaDecoderLayer : nn.Module
{
    readonly LlamaAttention self_attn;
    readonly LlamaMLP mlp;
    readonly LlamaRMSNorm input_layernorm, post_attention_layernorm;

    public LlamaDecoderLayer(LlamaConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(c, device, dtype);
        mlp = new LlamaMLP(c, device, dtype);
        input_layernorm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        post_attention_layernorm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }

    public Tensor Forward(Tensor h, Tensor cos, Tensor sin, Tensor? mask, KVCache? cache, int layer)
    {
        h = h + self_attn.Forward(input_layernorm.forward(h), cos, sin, mask, cache, layer);
        return h + mlp.forward(post_attention_layernorm.forward(h));
    }
}

/// <summary>HF <c>LlamaModel</c>: <c>embed_tokens</c>, <c>layers</c>, <c>norm</c>.</summary>
public sealed class LlamaModel : nn.Module
{
    internal readonly TokenEmbedding embed_tokens;
    internal readonly ModuleList<LlamaDecoderLayer> layers;
    internal readonly LlamaRMSNorm norm;

    public LlamaModel(LlamaConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(c.VocabSize, c.HiddenSize, device, dtype);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(c, device, dtype)).ToArray());
        norm = new LlamaRMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }
}

/// <summary>
/// HF <c>LlamaForCausalLM</c>: parameter names <c>model.embed_tokens.weight</c>, <c>model.layers.{i}.self_attn.{q,k,v,o}_proj.weight</c>,
/// <c>model.layers.{i}.mlp.{gate,up,down}_proj.weight</c>, <c>model.layers.{i}.{input,post_attention}_layernorm.weight</c>,
/// <c>model.norm.weight</c> and <c>lm_head.weight</c> (absent when the embeddings are tied, as in HF checkpoints).
/// </summary>
public sealed class LlamaForCausalLM : CausalLMModule
{
    readonly LlamaModel model;
    nn.Module<Tensor, Tensor>? lm_head;
    readonly LlamaConfig config;
    readonly Rotary rotary;

    /// <summary>The module with its parameters on <paramref name="device"/> in <paramref name="dtype"/> (default CPU,
    /// float32), randomly initialized as TorchSharp's modules are; on the meta device nothing is allocated or drawn
    /// (<see cref="ModelLoader"/> then reads each parameter from the checkpoint).</summary>
    public LlamaForCausalLM(LlamaConfig config, Device? device = null, ScalarType? dtype = null) : base(nameof(LlamaForCausalLM))
    {
        this.config = config;
        model = new LlamaModel(config, device, dtype);
        if (!config.TieWordEmbeddings) lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        rotary = new Rotary(config.HeadDim, config.RopeTheta, config.RopeScaling, config.MaxPositionEmbeddings);
        RegisterComponents();
    }

    public override ModelConfig Config => config;
    public LlamaConfig LlamaConfig => config;

    protected override bool IsIgnorableKey(string key) =>
        base.IsIgnorableKey(key) || (config.TieWordEmbeddings && key == "lm_head.weight");

    public override KVCache CreateCache(long batch, long capacity) =>
        new(config.NumHiddenLayers, batch, config.NumKeyValueHeads, capacity, config.HeadDim, DType, Device);

    public override Tensor Hidden(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KVCache? cache = null)
    {
        var past = cache?.Length ?? 0;
        var t = inputIds.shape[1];
        var pos = Positions(inputIds, attentionMask, positionIds, past);
        var h = model.embed_tokens.forward(inputIds);
        var (cos, sin) = rotary.Tables(pos, h.dtype);
        var mask = CausalLMModule.Mask(attentionMask, t, past, h.device);
        if (UsesCheckpointing(cache))
            foreach (var layer in model.layers)
                h = GradientCheckpoint.Run(layer, (x, c, s, m) => layer.Forward(x, c, s, m, null, 0), h, cos, sin, mask, AfterLayerBackward);
        else
            for (var i = 0; i < model.layers.Count; i++) h = model.layers[i].Forward(h, cos, sin, mask, cache, i);
        cache?.Advance(t);
        return model.norm.forward(h);
    }

    public override Tensor Head(Tensor hidden) => lm_head is not null ? lm_head.forward(hidden) : nn.functional.linear(hidden, model.embed_tokens.weight!);
}
