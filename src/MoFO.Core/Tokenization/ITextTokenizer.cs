namespace MoFO.Tokenization;

/// <summary>The tokenizer surface the models, trainer and harnesses use: ids in and out, with explicit BOS handling.</summary>
public interface ITextTokenizer
{
    /// <summary>The file the tokenizer was read from (copied when a model is saved as an HF folder).</summary>
    string SourceFile { get; }

    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, or null when the vocabulary has none.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, or null.</summary>
    int? EosId { get; }

    /// <summary>Whether the original tokenizer adds BOS by default (Llama/SentencePiece: yes; GPT-NeoX: no).</summary>
    bool AddsBosByDefault { get; }

    /// <summary>Token ids of the text, with BOS in front when <paramref name="addBos"/> and the vocabulary has one.</summary>
    IReadOnlyList<int> Encode(string text, bool addBos);

    /// <summary>The text of the ids; special tokens (BOS, EOS, padding) are left out.</summary>
    string Decode(IEnumerable<int> ids);
}

public static class TextTokenizer
{
    /// <summary>Encodes as the original does by default (BOS for SentencePiece Llama tokenizers, none for GPT-NeoX).</summary>
    public static IReadOnlyList<int> Encode(this ITextTokenizer t, string text) => t.Encode(text, t.AddsBosByDefault);

    /// <summary>Loads <c>tokenizer.json</c> (byte-level BPE) or a SentencePiece <c>.model</c> by the file's name.</summary>
    public static ITextTokenizer Load(string file)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"{Path.GetFullPath(file)}: tokenizer file not found (expected a SentencePiece .model or an HF tokenizer.json)", file);
        return file.EndsWith(".json", StringComparison.OrdinalIgnoreCase)
            ? ByteLevelBpeTokenizer.Load(file)
            : SentencePieceTextTokenizer.Load(file);
    }
}
