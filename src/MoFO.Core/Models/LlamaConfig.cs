using System.Text.Json.Nodes;
using MoFO.Checkpoints;

namespace MoFO.Models;

/// <summary>HF <c>LlamaConfig</c> (Llama-2, TinyLlama, llama2.c checkpoints).</summary>
public sealed record LlamaConfig : ModelConfig
{
    public override string ModelType => "llama";
    public required int IntermediateSize { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public int? HeadDimOverride { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public string HiddenAct { get; init; } = "silu";
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }

    public int HeadDim => HeadDimOverride ?? HiddenSize / NumAttentionHeads;

    /// <summary>The config a llama2.c checkpoint implies: its header, llama2.c's rms eps and rope theta, float32.</summary>
    public static LlamaConfig FromLlama2c(Llama2cHeader h, int bosTokenId = 1, int eosTokenId = 2) => new()
    {
        VocabSize = h.VocabSize, HiddenSize = h.Dim, IntermediateSize = h.HiddenDim, NumHiddenLayers = h.NLayers, NumAttentionHeads = h.NHeads,
        NumKeyValueHeads = h.NKvHeads, MaxPositionEmbeddings = h.SeqLen, RmsNormEps = Llama2c.RmsNormEps, RopeTheta = Llama2c.RopeTheta,
        TieWordEmbeddings = h.SharedClassifier, BosTokenId = bosTokenId, EosTokenIds = [eosTokenId], TorchDtype = "float32",
    };

    internal static LlamaConfig Parse(JsonReader r)
    {
        var heads = r.Int("num_attention_heads");
        var c = new LlamaConfig
        {
            VocabSize = r.Int("vocab_size"), HiddenSize = r.Int("hidden_size"), IntermediateSize = r.Int("intermediate_size"),
            NumHiddenLayers = r.Int("num_hidden_layers"), NumAttentionHeads = heads,
            NumKeyValueHeads = r.OptInt("num_key_value_heads") ?? heads,
            HeadDimOverride = r.OptInt("head_dim"),
            MaxPositionEmbeddings = r.OptInt("max_position_embeddings") ?? 2048,
            RmsNormEps = r.OptDouble("rms_norm_eps") ?? 1e-6,
            RopeTheta = r.OptDouble("rope_theta") ?? 10000.0,
            RopeScaling = r.RopeScaling("rope_scaling"),
            HiddenAct = r.OptString("hidden_act") ?? "silu",
            AttentionBias = r.OptBool("attention_bias") ?? false,
            MlpBias = r.OptBool("mlp_bias") ?? false,
            TieWordEmbeddings = r.OptBool("tie_word_embeddings") ?? false,
            InitializerRange = r.OptDouble("initializer_range") ?? 0.02,
            BosTokenId = r.OptInt("bos_token_id") ?? 1,
            EosTokenIds = r.IntOrList("eos_token_id") ?? [2],
            TorchDtype = r.OptString("torch_dtype"),
        };
        c.Validate(r.File);
        return c;
    }

    public void Validate(string file)
    {
        void Check(bool ok, string field, string msg) { if (!ok) throw CheckpointException.For(file, field, msg); }
        Check(HiddenSize > 0 && NumHiddenLayers > 0 && VocabSize > 0 && IntermediateSize > 0, "hidden_size", "sizes must be positive");
        Check(NumAttentionHeads > 0 && (HeadDimOverride is not null || HiddenSize % NumAttentionHeads == 0), "num_attention_heads",
            $"{NumAttentionHeads} does not divide hidden_size {HiddenSize}");
        Check(NumKeyValueHeads > 0 && NumAttentionHeads % NumKeyValueHeads == 0, "num_key_value_heads",
            $"{NumKeyValueHeads} does not divide num_attention_heads {NumAttentionHeads}");
        Check(HeadDim % 2 == 0, "head_dim", $"{HeadDim} must be even for rotary embeddings");
        Check(HiddenAct == "silu", "hidden_act", $"'{HiddenAct}' is not supported (expected silu)");
    }

    public override JsonObject ToJson()
    {
        var o = Common();
        o["architectures"] = new JsonArray("LlamaForCausalLM");
        o["intermediate_size"] = IntermediateSize;
        o["num_key_value_heads"] = NumKeyValueHeads;
        if (HeadDimOverride is int hd) o["head_dim"] = hd;
        o["rms_norm_eps"] = RmsNormEps;
        o["rope_theta"] = RopeTheta;
        o["rope_scaling"] = RopeScaling is null ? null : new JsonObject
        {
            ["rope_type"] = RopeScaling.Type, ["factor"] = RopeScaling.Factor,
            ["low_freq_factor"] = RopeScaling.LowFreqFactor, ["high_freq_factor"] = RopeScaling.HighFreqFactor,
            ["original_max_position_embeddings"] = RopeScaling.OriginalMaxPositionEmbeddings,
        };
        o["hidden_act"] = HiddenAct;
        o["attention_bias"] = AttentionBias;
        o["mlp_bias"] = MlpBias;
        o["pretraining_tp"] = 1;
        o["use_cache"] = true;
        return o;
    }
}
