using System.Buffers;
using System.Numerics;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>
/// Fused CPU kernels of the masked Adam step over raw tensor memory (SIMD via <see cref="Vector{T}"/>, chunks in
/// parallel), generic over where the weights live (<see cref="IWeights"/>: float32; a float32 master with its bfloat16
/// copy; bfloat16 rounded stochastically or to nearest) and the gradient's dtype (float32 or bfloat16). The moments
/// are float32 and every update is computed in float32, in one order of roundings that the ops route repeats. The ranking key of an entry is |m| (or |g|) as the bit pattern of a non-negative float, which
/// orders like an integer; with the flat index as the tie-breaker (lower index wins) every entry has a distinct
/// composite key key·2³² + (2³² − 1 − index), and the selection is exactly the k largest composites.
/// <list type="bullet">
/// <item>Dense step: one pass (reads g, m, v, p; writes m, v, p: 28 B/entry).</item>
/// <item>Filtered step, steady state: the moment pass also counts the keys above a narrow window around last step's
/// threshold, collects the (few) entries inside it (index, key and their Adam update, computed there), and applies the
/// update at once to the entries above the window — with p·decay for the rest when weight decay is on — keeping the
/// old p of those entries (packed, with a bit mask per vector) so that a miss can be undone exactly. If the count
/// brackets k, the exact k-th composite is selected among the collected ones (a histogram over the window, then a
/// quickselect in one bucket) and only the selected candidates are written (≈ 28 B/entry plus a few % in all).
/// A miss (too many above, too few candidates, or too many) restores p and runs the exact route below over the keys,
/// then the plain update pass.</item>
/// <item>Otherwise (first step, or the window missed): a window from a 1-in-64 sample of the keys and one counting
/// pass over the keys; if that misses too, two histogram passes (upper 15, then lower 16 bits inside the threshold's
/// bin) and, when ties straddle the cut, a scan for I*. Every route gives the same, exact selection.</item>
/// </list>
/// bfloat16 without a master: a stored value is rounded, so no entry may be stored twice in a step. The speculative
/// pass stores only the entries above the window (the others go back unchanged, which rounding leaves alone) and keeps
/// their original value; after a hit, weight decay is applied to the others of the range and each selected candidate
/// is rounded once from p·decay + update; after a miss, p is restored and the plain update runs with the decay. Every
/// route writes each entry's final value through the same rounding (stochastic: the bits of entry i depend only on
/// the key and i), so the routes, the chunking and the ops route agree bit for bit.
/// Beyond the two moments (and the optional touched mask, a bit per entry) only pooled buffers are used (the sample, 1/64 of the block as
/// uint; the candidates; the speculative record, about 1.25·α·numel floats and 2 bits per entry).
/// </summary>
internal static unsafe partial class AdamKernels
{
    const int SampleShift = 6; // one key in 64 is sampled during the moment pass

    /// <summary>
    /// The filtered step: exactly k entries (1 ≤ k &lt; numel) with the largest key (|m|, or |g| when
    /// <paramref name="byGradient"/>; then g must be float32) get the update; ties at the threshold go to the lower flat
    /// index. With the previous step's threshold of this block as a guess: when the window around it brackets the k-th
    /// key, the moment pass itself counts and collects, and no separate pass over the keys is needed. The guess only
    /// decides how the exact threshold is found, never which entries are selected; neither does the weights' dtype.
    /// </summary>
    public static void Filtered(in WeightTarget t, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, bool forceHistogram, ThresholdGuess guess)
    {
        if (byGradient && gt.dtype != ScalarType.Float32)
            throw new ArgumentException($"the gradient-ranked kernel reads |g| as float32 bits (got {gt.dtype})", nameof(gt));
        if (touchedT is not null && (touchedT.numel() != TouchedBits.Bytes(mt.numel()) || touchedT.dtype != ScalarType.Byte
                                     || !touchedT.is_contiguous() || touchedT.device_type != DeviceType.CPU))
            throw new ArgumentException($"the touched mask must be {TouchedBits.Bytes(mt.numel())} contiguous CPU bytes (a bit per entry), got {touchedT.numel()} {touchedT.dtype} on {touchedT.device_type}", nameof(touchedT));
        var body = new FilteredBody(gt, mt, vt, touchedT, k, byGradient, s, forceHistogram, guess);
        Dispatch(ref body, t, gt);
    }

    readonly struct FilteredBody(Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, bool forceHistogram, ThresholdGuess guess) : IKernelBody
    {
        public void Run<TW, TG>(TW w, TG g) where TW : struct, IWeights where TG : struct, IGrad
        {
            long n = mt.numel();
            nint m = (nint)Ptr(mt), v = (nint)Ptr(vt);
            nint touched = touchedT is null ? 0 : (nint)BytePtr(touchedT);
            nint keyP = byGradient ? (nint)Ptr(gt) : m;
            if (!forceHistogram && guess.Valid && n >= (1 << 14)
                && FilteredWithGuess(w, g, m, v, keyP, touched, n, k, byGradient, s, guess)) return;
            FilteredCold(w, g, m, v, keyP, touched, n, k, s, forceHistogram, guess);
        }
    }

    static void FilteredCold<TW, TG>(TW w, TG g, nint m, nint v, nint keyP, nint touched, long n, long k, AdamScalars s, bool forceHistogram, ThresholdGuess guess)
        where TW : struct, IWeights where TG : struct, IGrad
    {
        var sc = s;
        // pass 1: moments, and every 64th key as a sample
        long ns = (n + (1 << SampleShift) - 1) >> SampleShift;
        var sample = ArrayPool<uint>.Shared.Rent((int)ns);
        fixed (uint* sp = sample)
        {
            nint spn = (nint)sp;
            ForChunks(n, (lo, hi) => MomentsRange(g, (float*)m, (float*)v, lo, hi, sc, (uint*)spn, (uint*)keyP));
        }
        // pass 2: count the keys above a window guessed from the sample, collect those inside it, select exactly
        var (T, lastTie, ok) = forceHistogram ? (0u, 0L, false) : SelectGuided((uint*)keyP, n, k, sample, ns);
        ArrayPool<uint>.Shared.Return(sample);
        if (!ok) { (T, lastTie) = SelectByHistogram((uint*)keyP, n, k); }
        guess.Key = T; guess.Valid = T != 0; guess.Width = 0.02; guess.Trend = 1.0;

        // pass 3: the masked update
        int tInt = (int)T, lastInt = (int)lastTie;
        ForChunks(n, (lo, hi) => ApplyRange(w, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, lo, hi, tInt, lastInt, sc, false));
    }
}
