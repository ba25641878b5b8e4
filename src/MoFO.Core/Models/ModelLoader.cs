using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using MoFO.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Loads a causal LM from an HF folder (config.json + model.safetensors or model.safetensors.index.json shards +
/// tokenizer.model or tokenizer.json) or a llama2.c <c>.bin</c> (tokenizer beside it: tokenizer.model, or
/// tok{vocab}.model such as tok512.model). Default device CPU. Default dtype: bfloat16 on CUDA; on CPU the checkpoint's
/// own when config.json says <c>"torch_dtype": "bfloat16"</c>, else float32.
/// Loading is lean: the module is built on the meta device (shapes, no memory, no random initialization) and each
/// parameter is then read from the checkpoint straight into fresh memory of the target dtype and device, tensor by
/// tensor, shard by shard (<see cref="CausalLMModule.LoadWeights(IEnumerable{ITensorSource}, string, Device?)"/>): peak
/// memory is the model in its target dtype plus one read chunk.
/// </summary>
public static class ModelLoader
{
    /// <summary>A randomly initialized module on CPU in float32 (TorchSharp's initializers; see also
    /// <see cref="CausalLMModule.InitializeWeights"/>).</summary>
    public static CausalLMModule Create(ModelConfig config) => Create(config, torch.CPU, ScalarType.Float32);

    /// <summary>A module on <paramref name="device"/> in <paramref name="dtype"/>; randomly initialized unless the device
    /// is meta (see <see cref="CreateEmpty"/>).</summary>
    public static CausalLMModule Create(ModelConfig config, Device device, ScalarType dtype) => config switch
    {
        LlamaConfig c => new LlamaForCausalLM(c, device, dtype),
        GptNeoXConfig c => new GPTNeoXForCausalLM(c, device, dtype),
        _ => throw new ArgumentException($"no model for model_type '{config.ModelType}'"),
    };

    /// <summary>The module's structure with every parameter on the meta device in <paramref name="dtype"/>: names and
    /// shapes, no memory and no random draws. Count parameters with it, or fill it with
    /// <see cref="CausalLMModule.LoadWeights(IEnumerable{ITensorSource}, string, Device?)"/>.</summary>
    public static CausalLMModule CreateEmpty(ModelConfig config, ScalarType dtype = ScalarType.Float32) => Create(config, torch.META, dtype);

    /// <summary>A llama2.c <c>.bin</c>: the config its header implies and its tensors under HF's names (see <see cref="Llama2c"/>).</summary>
    public static (LlamaConfig Config, Dictionary<string, Tensor> Tensors) LoadLlama2c(string file, int bosTokenId = 1, int eosTokenId = 2)
    {
        var (header, tensors) = Llama2c.Load(file);
        return (LlamaConfig.FromLlama2c(header, bosTokenId, eosTokenId), tensors);
    }

    /// <summary>bfloat16 on CUDA; on CPU a bfloat16 checkpoint stays bfloat16 (half the memory of float32; CPU bfloat16
    /// matmuls are native on AVX512-BF16/AMX), anything else is float32.</summary>
    static ScalarType DefaultDType(Device device, string? torchDtype) =>
        device.type == DeviceType.CUDA || torchDtype == "bfloat16" ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>The model weights only (no tokenizer), plus the stop token ids the checkpoint implies.</summary>
    public static (CausalLMModule Module, IReadOnlyList<int> StopTokenIds) LoadModule(string path, Device? device = null, ScalarType? dtype = null)
    {
        device ??= torch.CPU;
        if (File.Exists(path) && path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            // llama2.c files are small and float32: read whole, then copied (converted) into the parameters.
            var (lc, tensors) = LoadLlama2c(path);
            try { return (Build(lc, [new TensorDictionarySource(path, tensors)], path, dtype ?? DefaultDType(device, null), device), [.. lc.EosTokenIds, lc.BosTokenId!.Value]); }  // run.c ends a story at BOS
            finally { foreach (var t in tensors.Values) t.Dispose(); }
        }
        if (Directory.Exists(path))
        {
            var configFile = Path.Combine(path, "config.json");
            if (!File.Exists(configFile)) throw new CheckpointException($"{configFile}: missing (an HF model folder needs config.json)");
            var config = ModelConfig.Load(configFile);
            var checkpoint = SafeTensors.CheckpointFile(path);
            var stops = ReadGenerationStops(Path.Combine(path, "generation_config.json")) ?? config.EosTokenIds;
            return (Build(config, SafeTensors.OpenCheckpoint(path), checkpoint, dtype ?? DefaultDType(device, config.TorchDtype), device), stops);
        }
        if (File.Exists(path))
            throw new CheckpointException($"{path}: unsupported model file (expected a llama2.c .bin or an HF folder with config.json)");
        throw new MissingAssetException($"{Path.GetFullPath(path)}: not found (expected an HF model folder or a llama2.c .bin file)");
    }

    /// <summary>Builds the module on the meta device in the target dtype and reads every parameter from the parts
    /// straight into <paramref name="device"/>'s memory: no random initialization, no float32 detour, no second copy.</summary>
    static CausalLMModule Build(ModelConfig config, IEnumerable<ITensorSource> parts, string checkpoint, ScalarType dt, Device device)
    {
        var module = CreateEmpty(config, dt);
        try
        {
            module.LoadWeights(parts, checkpoint, device);
            if (device.type != DeviceType.CPU) module.to(device);   // the parameters are there already; the modules record it
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
            return new CausalLM(module, tok, name, stops) { SourcePath = full };
        }
        catch { module.Dispose(); throw; }
    }
}
