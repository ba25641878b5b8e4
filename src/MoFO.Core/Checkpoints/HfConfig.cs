using System.Text.Json;
using System.Text.Json.Nodes;

namespace MoFO.Checkpoints;

/// <summary>HF <c>rope_scaling</c>: <c>linear</c>, <c>dynamic</c> (NTK-aware) or <c>llama3</c>.</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1.0, double HighFreqFactor = 4.0,
    int OriginalMaxPositionEmbeddings = 8192);

/// <summary>What every causal-LM config has; <see cref="LlamaConfig"/> and <see cref="GptNeoXConfig"/> add the rest.</summary>
public abstract record ModelConfig
{
    public abstract string ModelType { get; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int MaxPositionEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    /// <summary>Token ids that end generation (HF allows an int or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public bool TieWordEmbeddings { get; init; }
    public double InitializerRange { get; init; } = 0.02;
    public string? TorchDtype { get; init; }

    public abstract JsonObject ToJson();

    protected JsonObject Common() => new()
    {
        ["model_type"] = ModelType,
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["num_hidden_layers"] = NumHiddenLayers,
        ["num_attention_heads"] = NumAttentionHeads,
        ["max_position_embeddings"] = MaxPositionEmbeddings,
        ["bos_token_id"] = BosTokenId,
        ["eos_token_id"] = EosTokenIds.Count == 1 ? JsonValue.Create(EosTokenIds[0]) : new JsonArray(EosTokenIds.Select(i => (JsonNode)i).ToArray()),
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["initializer_range"] = InitializerRange,
        ["torch_dtype"] = TorchDtype ?? "float32",
    };

    /// <summary>Reads an HF <c>config.json</c>; dispatches on <c>model_type</c> (llama, gpt_neox).</summary>
    public static ModelConfig Load(string configFile)
    {
        if (!File.Exists(configFile)) throw new CheckpointException($"{configFile}: file not found (expected an HF config.json)");
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(configFile))?.AsObject() ?? throw new JsonException("empty"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw CheckpointException.For(configFile, "config", $"invalid JSON ({e.Message})"); }
        return Parse(o, configFile);
    }

    public static ModelConfig Parse(JsonObject o, string file)
    {
        var r = new JsonReader(o, file);
        var type = r.String("model_type");
        return type switch
        {
            "llama" => LlamaConfig.Parse(r),
            "gpt_neox" => GptNeoXConfig.Parse(r),
            _ => throw CheckpointException.For(file, "model_type", $"unknown model_type '{type}' (supported: llama, gpt_neox)"),
        };
    }

    public void Save(string configFile) =>
        AtomicFile.WriteAllText(configFile, ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}

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

/// <summary>Typed access to config.json fields with errors that name the file and the field.</summary>
internal sealed class JsonReader(JsonObject o, string file)
{
    public string File => file;

    T Get<T>(string field, JsonNode node, string expected)
    {
        try { return node.GetValue<T>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        { throw CheckpointException.For(file, field, $"expected {expected}, found {node.ToJsonString()}"); }
    }

    JsonNode Required(string field) =>
        o[field] ?? throw CheckpointException.For(file, field, "missing required field");

    public string String(string f) => Get<string>(f, Required(f), "a string");
    public int Int(string f) => Get<int>(f, Required(f), "an integer");
    public int? OptInt(string f) => o[f] is { } n ? Get<int>(f, n, "an integer") : null;
    public double? OptDouble(string f) => o[f] is { } n ? Get<double>(f, n, "a number") : null;
    public bool? OptBool(string f) => o[f] is { } n ? Get<bool>(f, n, "true or false") : null;
    public string? OptString(string f) => o[f] is { } n ? Get<string>(f, n, "a string") : null;

    public IReadOnlyList<int>? IntOrList(string f) => o[f] switch
    {
        null => null,
        JsonArray a => a.Select(x => Get<int>(f, x!, "an integer or a list of integers")).ToArray(),
        var n => [Get<int>(f, n, "an integer or a list of integers")],
    };

    public RopeScaling? RopeScaling(string f)
    {
        if (o[f] is not { } node) return null;
        if (node is not JsonObject s) throw CheckpointException.For(file, f, $"expected an object or null, found {node.ToJsonString()}");
        var typeNode = s["rope_type"] ?? s["type"] ?? throw CheckpointException.For(file, $"{f}.rope_type", "missing (expected linear, dynamic or llama3)");
        var type = Get<string>($"{f}.rope_type", typeNode, "a string");
        if (type == "default") return null;
        if (type is not ("linear" or "dynamic" or "llama3"))
            throw CheckpointException.For(file, $"{f}.rope_type", $"unsupported rope scaling type '{type}' (supported: linear, dynamic, llama3)");
        double D(string k, double? def)
        {
            if (s[k] is { } n) return Get<double>($"{f}.{k}", n, "a number");
            return def ?? throw CheckpointException.For(file, $"{f}.{k}", $"missing (required for rope type {type})");
        }
        var factor = D("factor", null);
        if (factor < 1.0) throw CheckpointException.For(file, $"{f}.factor", $"{factor} must be >= 1");
        if (type == "llama3")
            return new RopeScaling(type, factor, D("low_freq_factor", null), D("high_freq_factor", null),
                (int)D("original_max_position_embeddings", null));
        return new RopeScaling(type, factor);
    }
}
