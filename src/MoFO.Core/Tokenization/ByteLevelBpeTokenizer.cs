using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using MoFO.Checkpoints;

namespace MoFO.Tokenization;

/// <summary>
/// An HF <c>tokenizer.json</c> with a byte-level BPE model (GPT-NeoX/Pythia, GPT-2 family), built on
/// Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> with <c>ByteLevel</c> on and GPT-2's pre-tokenization regex.
/// Reads <c>model.vocab</c>, <c>model.merges</c> ("a b" strings or [a, b] pairs), <c>added_tokens</c> (matched whole
/// in the text), <c>pre_tokenizer.add_prefix_space</c>, a <c>Split</c> pre-tokenizer's regex (else GPT-2's), and a <c>TemplateProcessing</c> post-processor that puts a
/// special token first (which makes BOS the default, as in Llama-3); Pythia's ByteLevel post-processor adds nothing.
/// The normalizer (NFC for GPT-NeoX) is not applied.
/// </summary>
public sealed class ByteLevelBpeTokenizer : ITextTokenizer
{
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly BpeTokenizer bpe;
    readonly HashSet<int> special;
    readonly bool addPrefixSpace;

    ByteLevelBpeTokenizer(BpeTokenizer bpe, string file, int vocabSize, int? bos, int? eos, bool bosDefault, HashSet<int> special, bool addPrefixSpace)
    {
        this.bpe = bpe; SourceFile = file; VocabSize = vocabSize; BosId = bos; EosId = eos;
        AddsBosByDefault = bosDefault; this.special = special; this.addPrefixSpace = addPrefixSpace;
    }

    public string SourceFile { get; }
    public int VocabSize { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public bool AddsBosByDefault { get; }

    public static ByteLevelBpeTokenizer Load(string file)
    {
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(file))!.AsObject(); }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
        { throw CheckpointException.For(file, "tokenizer", $"invalid JSON ({e.Message})"); }
        var model = root["model"] as JsonObject ?? throw CheckpointException.For(file, "model", "missing (expected the BPE model object)");
        var type = model["type"]?.GetValue<string>();
        if (type != "BPE") throw CheckpointException.For(file, "model.type", $"'{type}' is not supported (expected BPE)");
        var vocabNode = model["vocab"] as JsonObject ?? throw CheckpointException.For(file, "model.vocab", "missing (expected an object token -> id)");
        var vocab = vocabNode.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var merges = (model["merges"] as JsonArray ?? throw CheckpointException.For(file, "model.merges", "missing (expected a list)"))
            .Select(m => m switch
            {
                JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}",
                JsonValue v => v.GetValue<string>(),
                _ => throw CheckpointException.For(file, "model.merges", $"entry {m?.ToJsonString()} is neither \"a b\" nor [a, b]"),
            }).ToList();

        var added = new Dictionary<string, int>();
        var special = new HashSet<int>();
        if (root["added_tokens"] is JsonArray at)
            foreach (var a in at.OfType<JsonObject>())
            {
                var content = a["content"]!.GetValue<string>();
                var id = a["id"]!.GetValue<int>();
                added[content] = id;
                if (a["special"]?.GetValue<bool>() == true) special.Add(id);
            }
        var addPrefix = FindAddPrefixSpace(root["pre_tokenizer"]);

        int? bos = null, eos = null;
        var bosDefault = false;
        if (root["post_processor"] is JsonObject pp && pp["type"]?.GetValue<string>() == "TemplateProcessing" &&
            pp["single"] is JsonArray single && single.Count > 0 && single[0]?["SpecialToken"]?["id"]?.GetValue<string>() is { } first &&
            added.TryGetValue(first, out var firstId))
        {
            bos = firstId;
            bosDefault = true;
        }
        foreach (var name in new[] { "<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>" })
            if (eos is null && added.TryGetValue(name, out var id)) eos = id;
        foreach (var name in new[] { "<|endoftext|>", "<s>", "<|begin_of_text|>" })
            if (bos is null && added.TryGetValue(name, out var id)) bos = id;

        var options = new BpeOptions(vocab.Where(kv => !added.ContainsKey(kv.Key)))
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = added,
            PreTokenizer = new RegexPreTokenizer(new Regex(FindSplitPattern(root["pre_tokenizer"]) ?? Gpt2Pattern, RegexOptions.Compiled), added),
        };
        BpeTokenizer bpe;
        try { bpe = BpeTokenizer.Create(options); }
        catch (Exception e) { throw CheckpointException.For(file, "model", $"cannot build the BPE tokenizer ({e.Message})"); }
        var size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Values.Max() + 1);
        return new ByteLevelBpeTokenizer(bpe, file, size, bos, eos, bosDefault, special, addPrefix);
    }

    /// <summary>The regex of a <c>Split</c> pre-tokenizer (Llama-3 style <c>Sequence[Split, ByteLevel]</c>), or null for
    /// GPT-2's pattern (what <c>ByteLevel</c> with <c>use_regex</c> applies).</summary>
    static string? FindSplitPattern(JsonNode? pre) => pre switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == "Split" => o["pattern"]?["Regex"]?.GetValue<string>(),
        JsonObject o when o["pretokenizers"] is JsonArray list => list.Select(FindSplitPattern).FirstOrDefault(p => p is not null),
        _ => null,
    };

    static bool FindAddPrefixSpace(JsonNode? pre) => pre switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == "ByteLevel" => o["add_prefix_space"]?.GetValue<bool>() ?? false,
        JsonObject o when o["pretokenizers"] is JsonArray list => list.Any(FindAddPrefixSpace),
        _ => false,
    };

    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        if (addPrefixSpace && text.Length > 0 && text[0] != ' ') text = " " + text;
        var ids = bpe.EncodeToIds(text);
        if (!addBos || BosId is not int b) return ids;
        var r = new List<int>(ids.Count + 1) { b };
        r.AddRange(ids);
        return r;
    }

    public string Decode(IEnumerable<int> ids) => bpe.Decode(ids.Where(i => !special.Contains(i))) ?? "";
}
