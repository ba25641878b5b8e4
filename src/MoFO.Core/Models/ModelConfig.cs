using System.Text.Json;
using System.Text.Json.Nodes;
using MoFO.Checkpoints;

namespace MoFO.Models;

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
