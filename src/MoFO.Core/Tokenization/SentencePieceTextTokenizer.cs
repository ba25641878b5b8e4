using Microsoft.ML.Tokenizers;
using MoFO.Checkpoints;

namespace MoFO.Tokenization;

/// <summary>A SentencePiece <c>.model</c> (Llama-2, TinyLlama, llama2.c's tok512) through Microsoft.ML.Tokenizers'
/// <see cref="LlamaTokenizer"/>: BOS added by default, never EOS (as HF's LlamaTokenizer).</summary>
public sealed class SentencePieceTextTokenizer : ITextTokenizer
{
    readonly SentencePieceTokenizer sp;
    readonly HashSet<int> special;

    SentencePieceTextTokenizer(SentencePieceTokenizer sp, string file)
    {
        this.sp = sp;
        SourceFile = file;
        special = [sp.BeginningOfSentenceId, sp.EndOfSentenceId];
        if (sp.Vocabulary.TryGetValue("<pad>", out var pad)) special.Add(pad);
    }

    public static SentencePieceTextTokenizer Load(string file)
    {
        try
        {
            using var s = File.OpenRead(file);
            return new SentencePieceTextTokenizer(LlamaTokenizer.Create(s, addBeginOfSentence: false, addEndOfSentence: false), file);
        }
        catch (Exception e) when (e is not FileNotFoundException)
        {
            throw new CheckpointException($"{file}: not a readable SentencePiece model ({e.GetType().Name}: {e.Message})", e);
        }
    }

    public string SourceFile { get; }
    public int VocabSize => sp.Vocabulary.Count;
    public int? BosId => sp.BeginningOfSentenceId;
    public int? EosId => sp.EndOfSentenceId;
    public bool AddsBosByDefault => true;

    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        // BOS is prepended here: the library returns no ids at all (not even BOS) for an empty text.
        var ids = sp.EncodeToIds(text, false, false, true, true);
        if (!addBos) return ids;
        var r = new List<int>(ids.Count + 1) { sp.BeginningOfSentenceId };
        r.AddRange(ids);
        return r;
    }

    public string Decode(IEnumerable<int> ids) => sp.Decode(ids.Where(i => !special.Contains(i)));
}
