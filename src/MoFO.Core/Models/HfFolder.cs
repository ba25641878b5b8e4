using System.Text.Json;
using System.Text.Json.Nodes;
using MoFO.Checkpoints;

namespace MoFO.Models;

/// <summary>
/// Saves a model as an HF folder that <c>transformers</c> can load: config.json, model.safetensors (or shards with an
/// index), generation_config.json, the tokenizer file copied (tokenizer.model for SentencePiece, tokenizer.json for
/// BPE) with tokenizer_config.json and special_tokens_map.json. Each file is written atomically.
/// </summary>
public static class HfFolder
{
    public static IReadOnlyList<string> Save(CausalLM lm, string folder, long maxShardBytes = 5L << 30)
    {
        Directory.CreateDirectory(folder);
        var files = new List<string>();
        var indented = new JsonSerializerOptions { WriteIndented = true };
        var config = lm.Module.Config with { TorchDtype = lm.Module.DType == TorchSharp.torch.ScalarType.BFloat16 ? "bfloat16" : "float32" };
        var configFile = Path.Combine(folder, "config.json");
        config.Save(configFile);
        files.Add(configFile);
        files.AddRange(SafeTensors.SaveCheckpoint(folder, lm.Module.StateDict(), maxShardBytes));

        var gen = new JsonObject
        {
            ["bos_token_id"] = config.BosTokenId,
            ["eos_token_id"] = lm.StopTokenIds.Count == 1 ? JsonValue.Create(lm.StopTokenIds.First()) : new JsonArray(lm.StopTokenIds.OrderBy(i => i).Select(i => (JsonNode)i).ToArray()),
        };
        var genFile = Path.Combine(folder, "generation_config.json");
        AtomicFile.WriteAllText(genFile, gen.ToJsonString(indented));
        files.Add(genFile);

        var src = lm.Tokenizer.SourceFile;
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
            tokConfig = new JsonObject { ["tokenizer_class"] = "GPTNeoXTokenizerFast", ["add_bos_token"] = lm.Tokenizer.AddsBosByDefault, ["add_eos_token"] = false };
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
