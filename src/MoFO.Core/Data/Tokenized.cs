using MoFO.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Data;

/// <summary>Token ids and labels of one example; a label of <see cref="Tokenized.Ignore"/> carries no loss. A packed row
/// (<see cref="Tokenized.Pack"/>) also carries each token's example number within the row, 1, 2, … (<see cref="Segments"/>).</summary>
public sealed record TokenizedExample(int[] InputIds, int[] Labels, string Source, int[]? Segments = null)
{
    public int TrainedTokens => Labels.Count(l => l != Tokenized.Ignore);
}

/// <summary>A padded batch: input ids, labels (-100 where ignored) and the attention mask, each [batch, length].</summary>
public sealed record Batch(Tensor InputIds, Tensor Labels, Tensor AttentionMask) : IDisposable
{
    public long TrainedTokens => Labels.ne(Tokenized.Ignore).sum().item<long>();
    public void Dispose() { InputIds.Dispose(); Labels.Dispose(); AttentionMask.Dispose(); }
}

/// <summary>
/// Tokenization with label masking. The text between two EOS tokens is encoded as one string (so tokens merge across
/// segment boundaries as they would in the whole text); a token belongs to the segment in which its prefix encoding
/// ends, and is trained when that segment is. BOS is prepended where the tokenizer does so by default; the EOS of a
/// segment is an id, trained with its segment. Truncation keeps the first <c>maxLength</c> tokens.
/// </summary>
public static class Tokenized
{
    public const int Ignore = -100;

    public static TokenizedExample Encode(TrainingExample example, ITextTokenizer tokenizer, int maxLength)
    {
        if (maxLength < 2) throw new ArgumentException($"max length {maxLength}: must be at least 2");
        var ids = new List<int>();
        var labels = new List<int>();
        if (tokenizer.AddsBosByDefault && tokenizer.BosId is int bos) { ids.Add(bos); labels.Add(Ignore); }
        var chunk = new List<Segment>();
        foreach (var seg in example.Segments)
        {
            chunk.Add(seg);
            if (!seg.EndOfSequence) continue;
            Flush(chunk, tokenizer, ids, labels);
            var eos = tokenizer.EosId ?? throw new ArgumentException($"{example.Source}: the example asks for EOS but the tokenizer {tokenizer.SourceFile} has none");
            ids.Add(eos);
            labels.Add(seg.Train ? eos : Ignore);
            chunk.Clear();
        }
        Flush(chunk, tokenizer, ids, labels);
        if (ids.Count > maxLength)
        {
            ids.RemoveRange(maxLength, ids.Count - maxLength);
            labels.RemoveRange(maxLength, labels.Count - maxLength);
        }
        return new TokenizedExample(ids.ToArray(), labels.ToArray(), example.Source);
    }

    static void Flush(List<Segment> chunk, ITextTokenizer tokenizer, List<int> ids, List<int> labels)
    {
        if (chunk.Count == 0) return;
        var full = tokenizer.Encode(string.Concat(chunk.Select(s => s.Text)), addBos: false);
        int start = 0;
        var prefix = new System.Text.StringBuilder();
        for (int j = 0; j < chunk.Count; j++)
        {
            prefix.Append(chunk[j].Text);
            int end = j == chunk.Count - 1 ? full.Count : Math.Clamp(tokenizer.Encode(prefix.ToString(), addBos: false).Count, start, full.Count);
            for (int t = start; t < end; t++)
            {
                ids.Add(full[t]);
                labels.Add(chunk[j].Train ? full[t] : Ignore);
            }
            start = end;
        }
    }

    /// <summary>Right-pads examples into one batch (pad id: the tokenizer's EOS, else 0; padded labels ignored). The
    /// attention mask is 1 on real tokens and 0 on padding — or, for packed rows, each token's example number (1, 2, …),
    /// from which the model builds a block-diagonal causal mask and restarts positions at each example.</summary>
    public static Batch Pad(IReadOnlyList<TokenizedExample> examples, int padId)
    {
        if (examples.Count == 0) throw new ArgumentException("an empty batch");
        int len = examples.Max(e => e.InputIds.Length);
        var ids = new long[examples.Count * len];
        var lab = new long[examples.Count * len];
        var mask = new long[examples.Count * len];
        for (int b = 0; b < examples.Count; b++)
        {
            var e = examples[b];
            for (int t = 0; t < len; t++)
            {
                int k = b * len + t;
                bool real = t < e.InputIds.Length;
                ids[k] = real ? e.InputIds[t] : padId;
                lab[k] = real ? e.Labels[t] : Ignore;
                mask[k] = real ? (e.Segments is null ? 1 : e.Segments[t]) : 0;
            }
        }
        long[] shape = [examples.Count, len];
        return new Batch(tensor(ids, shape), tensor(lab, shape), tensor(mask, shape));
    }

    /// <summary>
    /// Packs whole examples in order into rows of at most <paramref name="length"/> tokens (an example that does not fit
    /// in the current row starts the next one; an example longer than a row is cut to it), with boundaries: each token
    /// carries its example's number in the row (<see cref="TokenizedExample.Segments"/>), so that the model attends only
    /// within an example and restarts its positions there, and the first label of every example is ignored (no example
    /// is trained to predict the next one's first token). The loss of a packed row is the sum of the loss of its
    /// examples unpacked.
    /// </summary>
    public static List<TokenizedExample> Pack(IEnumerable<TokenizedExample> examples, int length)
    {
        if (length < 2) throw new ArgumentException($"pack length {length}: must be at least 2");
        var rows = new List<TokenizedExample>();
        var ids = new List<int>();
        var labels = new List<int>();
        var segments = new List<int>();
        int segment = 0;
        void Flush()
        {
            if (ids.Count > 0) rows.Add(new TokenizedExample(ids.ToArray(), labels.ToArray(), $"packed row {rows.Count}", segments.ToArray()));
            ids.Clear(); labels.Clear(); segments.Clear();
            segment = 0;
        }
        foreach (var e in examples)
        {
            int n = Math.Min(e.InputIds.Length, length);
            if (n == 0) continue;
            if (ids.Count + n > length) Flush();
            segment++;
            for (int t = 0; t < n; t++)
            {
                ids.Add(e.InputIds[t]);
                labels.Add(t == 0 ? Ignore : e.Labels[t]);
                segments.Add(segment);
            }
        }
        Flush();
        return rows;
    }
}

/// <summary>Deterministic data order and sub-sampling.</summary>
public static class DataOrder
{
    /// <summary>The order of the examples in an epoch: a permutation from the seed and the epoch (the same on every
    /// run and after a resume), or the identity when <paramref name="shuffle"/> is false.</summary>
    public static int[] Epoch(int count, long seed, int epoch, bool shuffle = true)
    {
        var order = Enumerable.Range(0, count).ToArray();
        if (!shuffle) return order;
        var rng = new Random(unchecked((int)(seed * 1_000_003 + epoch * 7919 + 17)));
        for (int i = count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    /// <summary>floor(fraction·n) examples chosen with the seed, kept in their original order (the paper trains on
    /// a 10 % sample of MetaMathQA).</summary>
    public static List<T> Subsample<T>(IReadOnlyList<T> items, double fraction, long seed)
    {
        if (!(fraction > 0 && fraction <= 1)) throw new ArgumentException($"sample fraction {fraction}: must lie in (0, 1]");
        int k = (int)Math.Floor(fraction * items.Count);
        return Epoch(items.Count, seed, -1).Take(k).OrderBy(i => i).Select(i => items[i]).ToList();
    }
}
