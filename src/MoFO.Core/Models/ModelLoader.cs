using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using MoFO.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Loads a causal LM from an HF folder (config.json + model.safetensors or model.safetensors.index.json shards +
/// tokenizer.model or tokenizer.json) or a llama2.c <c>.bin</c> (tokenizer beside it: tokenizer.model, or
/// tok{vocab}.model such as tok512.model). Default device CPU with float32; on CUDA the default dtype is bfloat16.
/// </summary>
public static class ModelLoader
{
    public static CausalLMModule Create(ModelConfig config) => config switch
    {
        LlamaConfig c => new LlamaForCausalLM(c),
        GptNeoXConfig c => new GPTNeoXForCausalLM(c),
        _ => throw new ArgumentException($"no model for model_type '{config.ModelType}'"),
    };

    /// <summary>A llama2.c <c>.bin</c>: the config its header implies and its tensors under HF's names (see <see cref="Llama2c"/>).</summary>
    public static (LlamaConfig Config, Dictionary<string, Tensor> Tensors) LoadLlama2c(string file, int bosTokenId = 1, int eosTokenId = 2)
    {
        var (header, tensors) = Llama2c.Load(file);
        return (LlamaConfig.FromLlama2c(header, bosTokenId, eosTokenId), tensors);
    }

    static ScalarType DefaultDType(Device device) => device.type == DeviceType.CUDA ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>The model weights only (no tokenizer), plus the stop token ids the checkpoint implies.</summary>
    public static (CausalLMModule Module, IReadOnlyList<int> StopTokenIds) LoadModule(string path, Device? device = null, ScalarType? dtype = null)
    {
        device ??= torch.CPU;
        var dt = dtype ?? DefaultDType(device);
        if (File.Exists(path) && path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            var (lc, tensors) = LoadLlama2c(path);
            try { return (Build(lc, [(path, tensors)], path, dt, device), [.. lc.EosTokenIds, lc.BosTokenId!.Value]); }  // run.c ends a story at BOS
            finally { foreach (var t in tensors.Values) t.Dispose(); }
        }
        if (Directory.Exists(path))
        {
            var configFile = Path.Combine(path, "config.json");
            if (!File.Exists(configFile)) throw new CheckpointException($"{configFile}: missing (an HF model folder needs config.json)");
            var config = ModelConfig.Load(configFile);
            var checkpoint = SafeTensors.CheckpointFile(path);
            var stops = ReadGenerationStops(Path.Combine(path, "generation_config.json")) ?? config.EosTokenIds;
            return (Build(config, Parts(path), checkpoint, dt, device), stops);
        }
        if (File.Exists(path))
            throw new CheckpointException($"{path}: unsupported model file (expected a llama2.c .bin or an HF folder with config.json)");
        throw new MissingAssetException($"{path}: not found (expected an HF model folder or a llama2.c .bin file)");
    }

    /// <summary>Shards one at a time; each is disposed once copied into the model.</summary>
    static IEnumerable<(string, IReadOnlyDictionary<string, Tensor>)> Parts(string path)
    {
        foreach (var (file, tensors) in SafeTensors.EnumerateCheckpoint(path))
        {
            try { yield return (file, tensors); }
            finally { foreach (var t in tensors.Values) t.Dispose(); }
        }
    }

    /// <summary>Creates the module in the target dtype (so a bfloat16 model never exists in float32), copies the
    /// weights, then moves it to the device.</summary>
    static CausalLMModule Build(ModelConfig config, IEnumerable<(string, IReadOnlyDictionary<string, Tensor>)> parts, string checkpoint, ScalarType dt, Device device)
    {
        var module = Create(config);
        try
        {
            module.to(dt);
            module.LoadWeights(parts, checkpoint);
            module.to(device);
            module.eval();
            return module;
        }
        catch { module.Dispose(); throw; }
    }

    static IReadOnlyList<int>? ReadGenerationStops(string file)
    {
        if (!File.Exists(file)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(file))?["eos_token_id"] switch
            {
                JsonArray a => a.Select(x => x!.GetValue<int>()).ToArray(),
                JsonValue v => [v.GetValue<int>()],
                _ => null,
            };
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        { throw CheckpointException.For(file, "eos_token_id", $"expected an integer or a list of integers ({e.Message})"); }
    }

    /// <summary>The tokenizer file for a model path: the explicit one, else tokenizer.model / tokenizer.json in the
    /// folder (or beside the .bin, where tok{vocab}.model also counts).</summary>
    public static string FindTokenizer(string modelPath, int vocabSize, string? tokenizerPath = null)
    {
        if (tokenizerPath is not null)
            return File.Exists(tokenizerPath) ? tokenizerPath : throw new FileNotFoundException($"{tokenizerPath}: tokenizer file not found", tokenizerPath);
        var dir = Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        var candidates = new List<string> { Path.Combine(dir, "tokenizer.model"), Path.Combine(dir, "tokenizer.json") };
        if (!Directory.Exists(modelPath)) candidates.Add(Path.Combine(dir, $"tok{vocabSize}.model"));
        return candidates.FirstOrDefault(File.Exists)
               ?? throw new MissingAssetException($"no tokenizer for {modelPath}: looked for {string.Join(", ", candidates)}; give the tokenizer's path (tokenizerPath)", remedy: "tokenizerPath");
    }

    /// <summary>Loads model and tokenizer (see the class summary).</summary>
    public static CausalLM Load(string path, string? tokenizerPath = null, Device? device = null, ScalarType? dtype = null)
    {
        var (module, stops) = LoadModule(path, device, dtype);
        try
        {
            var tokFile = FindTokenizer(path, module.Config.VocabSize, tokenizerPath);
            var tok = TextTokenizer.Load(tokFile);
            if (tok.VocabSize > module.Config.VocabSize)
                throw new CheckpointException($"{tokFile}: the tokenizer has {tok.VocabSize} tokens but the model {path} only {module.Config.VocabSize} (vocab_size)");
            var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
            var name = Directory.Exists(full) ? Path.GetFileName(full) : Path.GetFileNameWithoutExtension(full);
            return new CausalLM(module, tok, name, stops);
        }
        catch { module.Dispose(); throw; }
    }
}
