using System.Text.Json;
using System.Text.Json.Nodes;
using MoFO.Checkpoints;
using MoFO.Tokenization;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Saves a model as an HF folder that <c>transformers</c> can load: config.json (its <c>torch_dtype</c> is the dtype the
/// weights are written in), model.safetensors (or shards with an index) streamed tensor by tensor from the model's
/// memory, generation_config.json, the tokenizer file copied (tokenizer.model for SentencePiece, tokenizer.json for BPE)
/// with tokenizer_config.json and special_tokens_map.json. Each file is written atomically.
/// </summary>
public static class HfFolder
{
    public static IReadOnlyList<string> Save(CausalLM lm, string folder, long maxShardBytes = 5L << 30)
    {
        var config = lm.Module.Config with { TorchDtype = TorchDtypeName(lm.Module.DType) };
        var files = new List<string> { WriteConfig(folder, config) };
        files.AddRange(SafeTensors.SaveCheckpoint(folder, lm.Module.StateDict(), maxShardBytes));
        files.AddRange(WriteCompanions(folder, config, lm.StopTokenIds, lm.Tokenizer));
        return files;
    }

    /// <summary><see cref="Save"/> into a folder beside <paramref name="output"/>, renamed to it when complete: a failed
    /// write leaves no half folder. <paramref name="output"/> must be absent or empty (the caller checks).</summary>
    public static void SaveAtomically(CausalLM lm, string output)
    {
        var full = Path.GetFullPath(output);
        var tmp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}-{Guid.NewGuid():N}");
        try
        {
            Save(lm, tmp);
            if (Directory.Exists(full)) Directory.Delete(full);   // empty
            Directory.Move(tmp, full);
        }
        finally { if (Directory.Exists(tmp)) Directory.Delete(tmp, true); }
    }

    /// <summary>HF's name of a dtype (config.json's <c>torch_dtype</c>).</summary>
    public static string TorchDtypeName(ScalarType t) => t switch
    {
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        ScalarType.Float32 => "float32",
        ScalarType.Float64 => "float64",
        _ => throw new ArgumentException($"no HF torch_dtype for {t}"),
    };

    /// <summary>Writes config.json; returns its path.</summary>
    public static string WriteConfig(string folder, ModelConfig config)
    {
        Directory.CreateDirectory(folder);
        var file = Path.Combine(folder, "config.json");
        config.Save(file);
        return file;
    }

    /// <summary>generation_config.json, and with a tokenizer its file copied plus tokenizer_config.json and
    /// special_tokens_map.json. Returns the files written.</summary>
    public static IReadOnlyList<string> WriteCompanions(string folder, ModelConfig config, IReadOnlyCollection<int> stopTokenIds, ITextTokenizer? tokenizer)
    {
        Directory.CreateDirectory(folder);
        var files = new List<string>();
        var indented = new JsonSerializerOptions { WriteIndented = true };
        var gen = new JsonObject
        {
            ["bos_token_id"] = config.BosTokenId,
            ["eos_token_id"] = stopTokenIds.Count == 1 ? JsonValue.Create(stopTokenIds.First()) : new JsonArray(stopTokenIds.OrderBy(i => i).Select(i => (JsonNode)i).ToArray()),
        };
        var genFile = Path.Combine(folder, "generation_config.json");
        AtomicFile.WriteAllText(genFile, gen.ToJsonString(indented));
        files.Add(genFile);
        if (tokenizer is null) return files;

        var src = tokenizer.SourceFile;
        var isJson = src.EndsWith(".json", StringComparison.OrdinalIgnoreCase);
        var tokFile = Path.Combine(folder, isJson ? "tokenizer.json" : "tokenizer.model");
        if (Path.GetFullPath(src) != Path.GetFullPath(tokFile))
        {
            var bytes = File.ReadAllBytes(src);
            AtomicFile.Write(tokFile, fs => fs.Write(bytes));
        }
        files.Add(tokFile);
        JsonObject tokConfig, specials;
        if (isJson)
        {
            tokConfig = new JsonObject { ["tokenizer_class"] = "GPTNeoXTokenizerFast", ["add_bos_token"] = tokenizer.AddsBosByDefault, ["add_eos_token"] = false };
            specials = new JsonObject();
        }
        else
        {
            tokConfig = new JsonObject
            {
                ["tokenizer_class"] = "LlamaTokenizer", ["add_bos_token"] = true, ["add_eos_token"] = false,
                ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>", ["legacy"] = true,
                ["model_max_length"] = config.MaxPositionEmbeddings,
            };
            specials = new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>" };
        }
        foreach (var (name, obj) in new[] { ("tokenizer_config.json", tokConfig), ("special_tokens_map.json", specials) })
        {
            var f = Path.Combine(folder, name);
            AtomicFile.WriteAllText(f, obj.ToJsonString(indented));
            files.Add(f);
        }
        return files;
    }
}
