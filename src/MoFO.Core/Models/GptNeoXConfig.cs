using System.Text.Json.Nodes;
using MoFO.Checkpoints;

namespace MoFO.Models;

/// <summary>HF <c>GPTNeoXConfig</c> (Pythia).</summary>
public sealed record GptNeoXConfig : ModelConfig
{
    public override string ModelType => "gpt_neox";
    public required int IntermediateSize { get; init; }
    public double RotaryPct { get; init; } = 0.25;
    public double RotaryEmbBase { get; init; } = 10000.0;
    public double LayerNormEps { get; init; } = 1e-5;
    public bool UseParallelResidual { get; init; } = true;
    public string HiddenAct { get; init; } = "gelu";
    public bool AttentionBias { get; init; } = true;
    public RopeScaling? RopeScaling { get; init; }

    public int HeadSize => HiddenSize / NumAttentionHeads;
    public int RotaryNdims => (int)(HeadSize * RotaryPct);

    internal static GptNeoXConfig Parse(JsonReader r)
    {
        var c = new GptNeoXConfig
        {
            VocabSize = r.Int("vocab_size"), HiddenSize = r.Int("hidden_size"), IntermediateSize = r.Int("intermediate_size"),
            NumHiddenLayers = r.Int("num_hidden_layers"), NumAttentionHeads = r.Int("num_attention_heads"),
            MaxPositionEmbeddings = r.OptInt("max_position_embeddings") ?? 2048,
            RotaryPct = r.OptDouble("rotary_pct") ?? r.OptDouble("partial_rotary_factor") ?? 0.25,
            RotaryEmbBase = r.OptDouble("rotary_emb_base") ?? r.OptDouble("rope_theta") ?? 10000.0,
            LayerNormEps = r.OptDouble("layer_norm_eps") ?? 1e-5,
            UseParallelResidual = r.OptBool("use_parallel_residual") ?? true,
            HiddenAct = r.OptString("hidden_act") ?? "gelu",
            AttentionBias = r.OptBool("attention_bias") ?? true,
            RopeScaling = r.RopeScaling("rope_scaling"),
            TieWordEmbeddings = r.OptBool("tie_word_embeddings") ?? false,
            InitializerRange = r.OptDouble("initializer_range") ?? 0.02,
            BosTokenId = r.OptInt("bos_token_id") ?? 0,
            EosTokenIds = r.IntOrList("eos_token_id") ?? [0],
            TorchDtype = r.OptString("torch_dtype"),
        };
        if (c.NumAttentionHeads <= 0 || c.HiddenSize % c.NumAttentionHeads != 0)
            throw CheckpointException.For(r.File, "num_attention_heads", $"{c.NumAttentionHeads} does not divide hidden_size {c.HiddenSize}");
        if (c.HiddenAct is not ("gelu" or "gelu_new" or "gelu_fast" or "relu"))
            throw CheckpointException.For(r.File, "hidden_act", $"'{c.HiddenAct}' is not supported (expected gelu, gelu_new, gelu_fast or relu)");
        if (c.RotaryNdims % 2 != 0)
            throw CheckpointException.For(r.File, "rotary_pct", $"head_size {c.HeadSize} x rotary_pct {c.RotaryPct} = {c.RotaryNdims} rotary dims, which must be even");
        return c;
    }

    public override JsonObject ToJson()
    {
        var o = Common();
        o["architectures"] = new JsonArray("GPTNeoXForCausalLM");
        o["intermediate_size"] = IntermediateSize;
        o["rotary_pct"] = RotaryPct;
        o["rotary_emb_base"] = RotaryEmbBase;
        o["layer_norm_eps"] = LayerNormEps;
        o["use_parallel_residual"] = UseParallelResidual;
        o["hidden_act"] = HiddenAct;
        o["attention_bias"] = AttentionBias;
        o["use_cache"] = true;
        return o;
    }
}
