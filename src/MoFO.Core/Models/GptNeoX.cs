using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>HF <c>GPTNeoXAttention</c>: fused <c>query_key_value</c> whose output, viewed as [.., heads, 3 * head_size],
/// holds each head's [q, k, v]; partial rotary on the first <c>rotary_pct</c> of each head; <c>dense</c> output.</summary>
public sealed class GPTNeoXAttention : nn.Module
{
    /// <summary>The projections (linear layers; an adapter may take a projection's place: <see cref="LinearWrapper"/>).</summary>
    nn.Module<Tensor, Tensor> query_key_value, dense;
    readonly int heads, headSize;

    public GPTNeoXAttention(GptNeoXConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(GPTNeoXAttention))
    {
        heads = c.NumAttentionHeads; headSize = c.HeadSize;
        query_key_value = nn.Linear(c.HiddenSize, 3 * c.HiddenSize, hasBias: c.AttentionBias, device: device, dtype: dtype);
        dense = nn.Linear(c.HiddenSize, c.HiddenSize, hasBias: c.AttentionBias, device: device, dtype: dtype);
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KVCache? cache, int layer)
    {
        var (b, t) = (x.shape[0], x.shape[1]);
        var qkv = query_key_value.forward(x).view(b, t, heads, 3 * headSize).transpose(1, 2);   // [B, H, T, 3hs]
        var q = qkv.narrow(-1, 0, headSize);
        var k = qkv.narrow(-1, headSize, headSize);
        var v = qkv.narrow(-1, 2 * headSize, headSize);
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);
        var o = CausalLMModule.Attend(q, k, v, mask);
        return dense.forward(o.transpose(1, 2).reshape(b, t, heads * headSize));
    }
}

public sealed class GPTNeoXMLP : nn.Module<Tensor, Tensor>
{
    nn.Module<Tensor, Tensor> dense_h_to_4h, dense_4h_to_h;
    readonly string act;

    public GPTNeoXMLP(GptNeoXConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(GPTNeoXMLP))
    {
        dense_h_to_4h = nn.Linear(c.HiddenSize, c.IntermediateSize, device: device, dtype: dtype);
        dense_4h_to_h = nn.Linear(c.IntermediateSize, c.HiddenSize, device: device, dtype: dtype);
        act = c.HiddenAct;
        RegisterComponents();
    }

    static readonly Scalar Half = 0.5.ToScalar(), Cubic = 0.044715.ToScalar(), Root2OverPi = Math.Sqrt(2.0 / Math.PI).ToScalar();
    static Tensor GeluTanh(Tensor x) => x.mul(Half) * (x + (x * x * x).mul(Cubic)).mul(Root2OverPi).tanh().add(Scalars.One);

    public override Tensor forward(Tensor x)
    {
        var h = dense_h_to_4h.forward(x);
        h = act switch
        {
            "gelu" => nn.functional.gelu(h),
            "relu" => nn.functional.relu(h),
            _ => GeluTanh(h),
        };
        return dense_4h_to_h.forward(h);
    }
}

public sealed class GPTNeoXLayer : nn.Module
{
    readonly LayerNorm input_layernorm, post_attention_layernorm;
    readonly GPTNeoXAttention attention;
    readonly GPTNeoXMLP mlp;
    readonly bool parallel;

    public GPTNeoXLayer(GptNeoXConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(GPTNeoXLayer))
    {
        input_layernorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        post_attention_layernorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        attention = new GPTNeoXAttention(c, device, dtype);
        mlp = new GPTNeoXMLP(c, device, dtype);
        parallel = c.UseParallelResidual;
        RegisterComponents();
    }

    public Tensor Forward(Tensor h, Tensor cos, Tensor sin, Tensor? mask, KVCache? cache, int layer)
    {
        var a = attention.Forward(input_layernorm.forward(h), cos, sin, mask, cache, layer);
        if (parallel) return h + a + mlp.forward(post_attention_layernorm.forward(h));   // x + attn(ln1(x)) + mlp(ln2(x))
        h = h + a;
        return h + mlp.forward(post_attention_layernorm.forward(h));
    }
}

public sealed class GPTNeoXModel : nn.Module
{
    internal readonly TokenEmbedding embed_in;
    internal readonly ModuleList<GPTNeoXLayer> layers;
    internal readonly LayerNorm final_layer_norm;

    public GPTNeoXModel(GptNeoXConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(GPTNeoXModel))
    {
        embed_in = new TokenEmbedding(c.VocabSize, c.HiddenSize, device, dtype);
        layers = new ModuleList<GPTNeoXLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new GPTNeoXLayer(c, device, dtype)).ToArray());
        final_layer_norm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        RegisterComponents();
    }
}

/// <summary>
/// HF <c>GPTNeoXForCausalLM</c> (Pythia): <c>gpt_neox.embed_in</c>, <c>gpt_neox.layers.{i}.{input_layernorm,
/// post_attention_layernorm, attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h}</c>,
/// <c>gpt_neox.final_layer_norm</c>, <c>embed_out</c> (untied; tied when the config says so).
/// </summary>
public sealed class GPTNeoXForCausalLM : CausalLMModule
{
    readonly GPTNeoXModel gpt_neox;
    nn.Module<Tensor, Tensor>? embed_out;
    readonly GptNeoXConfig config;
    readonly Rotary rotary;

    /// <summary>The module with its parameters on <paramref name="device"/> in <paramref name="dtype"/> (default CPU,
    /// float32), randomly initialized as TorchSharp's modules are; on the meta device nothing is allocated or drawn
    /// (<see cref="ModelLoader"/> then reads each parameter from the checkpoint).</summary>
    public GPTNeoXForCausalLM(GptNeoXConfig config, Device? device = null, ScalarType? dtype = null) : base(nameof(GPTNeoXForCausalLM))
    {
        this.config = config;
        gpt_neox = new GPTNeoXModel(config, device, dtype);
        if (!config.TieWordEmbeddings) embed_out = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        rotary = new Rotary(config.RotaryNdims, config.RotaryEmbBase, config.RopeScaling, config.MaxPositionEmbeddings);
        RegisterComponents();
    }

    public override ModelConfig Config => config;

    // Older Pythia checkpoints carry the causal-mask buffers attention.bias / attention.masked_bias and rotary inv_freq.
    protected override bool IsIgnorableKey(string key) =>
        base.IsIgnorableKey(key) || key.EndsWith(".attention.bias", StringComparison.Ordinal) ||
        key.EndsWith(".attention.masked_bias", StringComparison.Ordinal) ||
        (config.TieWordEmbeddings && key == "embed_out.weight");

    public override KVCache CreateCache(long batch, long capacity) =>
        new(config.NumHiddenLayers, batch, config.NumAttentionHeads, capacity, config.HeadSize, DType, Device);

    public override Tensor Hidden(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KVCache? cache = null)
    {
        var past = cache?.Length ?? 0;
        var t = inputIds.shape[1];
        var pos = Positions(inputIds, attentionMask, positionIds, past);
        var h = gpt_neox.embed_in.forward(inputIds);
        var (cos, sin) = rotary.Tables(pos, h.dtype);
        var mask = Mask(attentionMask, t, past, h.device);
        if (UsesCheckpointing(cache))
            foreach (var layer in gpt_neox.layers)
                h = GradientCheckpoint.Run(layer, (x, c, s, m) => layer.Forward(x, c, s, m, null, 0), h, cos, sin, mask, AfterLayerBackward);
        else
            for (var i = 0; i < gpt_neox.layers.Count; i++) h = gpt_neox.layers[i].Forward(h, cos, sin, mask, cache, i);
        cache?.Advance(t);
        return gpt_neox.final_layer_norm.forward(h);
    }

    public override Tensor Head(Tensor hidden) => embed_out is not null ? embed_out.forward(hidden) : nn.functional.linear(hidden, gpt_neox.embed_in.weight!);
}
