using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// The configs of the paper's models, field for field as in their public HF config.json files, for rehearsals with
/// random weights of the exact shape (<see cref="RandomCheckpoint"/>): TinyLlama-1.1B (Table 5), Llama-2-7B (Tables 3,
/// 4, 6), Pythia-160m (Tables 1–2). <c>torch_dtype</c> is the published checkpoint's; a folder written from a preset
/// states the dtype it was written in.
/// </summary>
public static class ModelPresets
{
    /// <summary>TinyLlama/TinyLlama-1.1B (intermediate-step-1431k-3T, Chat-v1.0): 1,100,048,384 parameters.</summary>
    public static LlamaConfig TinyLlama11B { get; } = new()
    {
        VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22, NumAttentionHeads = 32,
        NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048, RopeTheta = 10000.0, RmsNormEps = 1e-5,
        TieWordEmbeddings = false, InitializerRange = 0.02, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "bfloat16",
    };

    /// <summary>meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters.</summary>
    public static LlamaConfig Llama2_7B { get; } = new()
    {
        VocabSize = 32000, HiddenSize = 4096, IntermediateSize = 11008, NumHiddenLayers = 32, NumAttentionHeads = 32,
        NumKeyValueHeads = 32, MaxPositionEmbeddings = 4096, RopeTheta = 10000.0, RmsNormEps = 1e-5,
        TieWordEmbeddings = false, InitializerRange = 0.02, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float16",
    };

    /// <summary>EleutherAI/pythia-160m (GPT-NeoX): 162,322,944 parameters.</summary>
    public static GptNeoXConfig Pythia160M { get; } = new()
    {
        VocabSize = 50304, HiddenSize = 768, IntermediateSize = 3072, NumHiddenLayers = 12, NumAttentionHeads = 12,
        MaxPositionEmbeddings = 2048, RotaryPct = 0.25, RotaryEmbBase = 10000.0, LayerNormEps = 1e-5,
        UseParallelResidual = true, HiddenAct = "gelu", AttentionBias = true, TieWordEmbeddings = false,
        InitializerRange = 0.02, BosTokenId = 0, EosTokenIds = [0], TorchDtype = "float16",
    };

    /// <summary>The presets by name: tinyllama-1.1b, pythia-160m, llama-2-7b.</summary>
    public static IReadOnlyDictionary<string, ModelConfig> All { get; } = new Dictionary<string, ModelConfig>
    {
        ["tinyllama-1.1b"] = TinyLlama11B,
        ["pythia-160m"] = Pythia160M,
        ["llama-2-7b"] = Llama2_7B,
    };

    /// <summary>The preset of that name; an unknown name is an <see cref="OptionException"/> on <paramref name="field"/>
    /// that lists the names.</summary>
    public static ModelConfig Get(string name, string field = "Like") =>
        All.TryGetValue(name.ToLowerInvariant(), out var c) ? c
            : throw new OptionException(field, $"{field} '{name}' is not a known model shape (expected one of {string.Join(", ", All.Keys)})");

    /// <summary>The config with another number of layers (every other dimension kept).</summary>
    public static ModelConfig WithLayers(ModelConfig config, int layers) =>
        layers >= 1 ? config with { NumHiddenLayers = layers } : throw new OptionException("layers", $"layers {layers} must be at least 1");

    /// <summary>The number of parameters of a config, counted on the meta device (nothing allocated).</summary>
    public static long ParameterCount(ModelConfig config)
    {
        using var m = ModelLoader.CreateEmpty(config);
        return m.parameters().Sum(p => p.numel());
    }
}
