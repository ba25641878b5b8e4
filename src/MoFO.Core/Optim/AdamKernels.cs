using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>A block's last exact threshold key and the relative width of the window searched around it next step.</summary>
internal sealed class ThresholdGuess
{
    public bool Valid;
    public uint Key;
    public double Width = 0.02;
    public double Trend = 1.0;
}

/// <summary>The per-step constants of the Adam update, in float32 as libtorch converts them.</summary>
internal readonly struct AdamScalars
{
    public readonly float Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, NegStep, SqrtBc2, InvSqrtBc2, Eps, Decay;
    public readonly double Lr, WeightDecay, Beta1D, Beta2D, EpsD, StepD, SqrtBc2D;

    /// <summary>The authors' conventions: step = lr/(1-β1^t), denom = sqrt(v)/sqrt(1-β2^t) + eps, p *= 1 - lr·wd.</summary>
    public AdamScalars(double lr, double beta1, double beta2, double eps, double weightDecay, long t)
    {
        Lr = lr; WeightDecay = weightDecay; Beta1D = beta1; Beta2D = beta2; EpsD = eps;
        var bc1 = 1 - Math.Pow(beta1, t);
        var bc2 = 1 - Math.Pow(beta2, t);
        StepD = lr / bc1;
        SqrtBc2D = Math.Sqrt(bc2);
        Beta1 = (float)beta1; OneMinusBeta1 = (float)(1 - beta1);
        Beta2 = (float)beta2; OneMinusBeta2 = (float)(1 - beta2);
        NegStep = (float)(-StepD); SqrtBc2 = (float)SqrtBc2D; InvSqrtBc2 = (float)(1 / SqrtBc2D); Eps = (float)eps;
        Decay = (float)(1 - lr * weightDecay);
    }
}

/// <summary>
/// Fused CPU float32 kernels of the masked Adam step over raw tensor memory (SIMD via <see cref="Vector{T}"/>,
/// chunks in parallel). The ranking key of an entry is |m| (or |g|) as the bit pattern of a non-negative float, which
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
/// Beyond the two moments (and the optional byte mask) only pooled buffers are used (the sample, 1/64 of the block as
/// uint; the candidates; the speculative record, about 1.25·α·numel floats and 2 bits per entry).
/// </summary>
internal static unsafe class AdamKernels
{
    const int Chunk = 1 << 16;
    const int HiBins = 1 << 15;
    const int LoBins = 1 << 16;

    public static bool Eligible(Tensor p, Tensor g, Tensor m, Tensor v)
        => p.device_type == DeviceType.CPU && p.dtype == ScalarType.Float32 && g.dtype == ScalarType.Float32
           && g.device_type == DeviceType.CPU && p.is_contiguous() && g.is_contiguous() && m.is_contiguous() && v.is_contiguous()
           && p.numel() < int.MaxValue - 64 && g.numel() == p.numel();

    public static float* Ptr(Tensor t) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
    public static byte* BytePtr(Tensor t) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    static void ForChunks(long n, Action<long, long> body)
    {
        long chunks = (n + Chunk - 1) / Chunk;
        if (chunks <= 1) { if (n > 0) body(0, n); return; }
        Parallel.For(0L, chunks, c => body(c * Chunk, Math.Min(n, (c + 1) * Chunk)));
    }

    /// <summary>Every entry updated: one fused pass.</summary>
    public static void Dense(Tensor pt, Tensor gt, Tensor mt, Tensor vt, AdamScalars s)
    {
        nint p = (nint)Ptr(pt), g = (nint)Ptr(gt), m = (nint)Ptr(mt), v = (nint)Ptr(vt);
        var sc = s;
        ForChunks(pt.numel(), (lo, hi) => DenseRange((float*)p, (float*)g, (float*)m, (float*)v, lo, hi, sc));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DenseRange(float* p, float* g, float* m, float* v, long lo, long hi, in AdamScalars s)
    {
        int W = Vector<float>.Count;
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        var ns = new Vector<float>(s.NegStep); var isb = new Vector<float>(s.InvSqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(s.Decay);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var gv = Unsafe.ReadUnaligned<Vector<float>>(g + i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            var denom = Vector.SquareRoot(vv) * isb + ep;
            var pv = Unsafe.ReadUnaligned<Vector<float>>(p + i) * dc;
            Unsafe.WriteUnaligned(p + i, pv + (ns * mv) / denom);
        }
        for (; i < hi; i++)
        {
            float gi = g[i];
            float mi = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            float vi = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            m[i] = mi; v[i] = vi;
            float denom = MathF.Sqrt(vi) * s.InvSqrtBc2 + s.Eps;
            p[i] = p[i] * s.Decay + (s.NegStep * mi) / denom;
        }
    }

    /// <summary>k = 0: moments advance, weight decay applies, no entry gets the Adam update.</summary>
    public static void MomentsOnly(Tensor pt, Tensor gt, Tensor mt, Tensor vt, AdamScalars s)
    {
        nint p = (nint)Ptr(pt), g = (nint)Ptr(gt), m = (nint)Ptr(mt), v = (nint)Ptr(vt);
        var sc = s;
        ForChunks(pt.numel(), (lo, hi) =>
        {
            MomentsRange((float*)g, (float*)m, (float*)v, lo, hi, sc, null, false);
            if (sc.Decay != 1f) { var pp = (float*)p; for (long i = lo; i < hi; i++) pp[i] *= sc.Decay; }
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MomentsRange(float* g, float* m, float* v, long lo, long hi, in AdamScalars s, uint* sample, bool byGradient)
    {
        int W = Vector<float>.Count;
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        uint* key = (uint*)(byGradient ? g : m);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var gv = Unsafe.ReadUnaligned<Vector<float>>(g + i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            if (sample != null && (i & 63) == 0) sample[i >> 6] = key[i] & 0x7FFFFFFFu;
        }
        for (; i < hi; i++)
        {
            float gi = g[i];
            m[i] = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            v[i] = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            if (sample != null && (i & 63) == 0) sample[i >> 6] = key[i] & 0x7FFFFFFFu;
        }
    }

    const int SampleShift = 6; // one key in 64 is sampled during the moment pass
    const int CandidateCap = Chunk / 16; // at most 1/16 of a chunk collected (8 B each): past that the window missed
    const int GuessCandidateCap = Chunk / 32; // the guess route: 1/32 of a chunk (12 B each, preallocated)

    /// <summary>
    /// The filtered step: exactly k entries (1 ≤ k &lt; numel) with the largest key (|m|, or |g| when
    /// <paramref name="byGradient"/>) get the update; ties at the threshold go to the lower flat index.
    /// </summary>
    public static void Filtered(Tensor pt, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, bool forceHistogram = false)
    {
        var guess = new ThresholdGuess();
        Filtered(pt, gt, mt, vt, touchedT, k, byGradient, s, forceHistogram, guess);
    }

    /// <summary>
    /// As above, with the previous step's threshold of this block as a guess: when the window around it brackets the
    /// k-th key, the moment pass itself counts and collects, and no separate pass over the keys is needed. The guess
    /// only decides how the exact threshold is found, never which entries are selected.
    /// </summary>
    public static void Filtered(Tensor pt, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, bool forceHistogram, ThresholdGuess guess)
    {
        if (!forceHistogram && guess.Valid && pt.numel() >= (1 << 14) && FilteredWithGuess(pt, gt, mt, vt, touchedT, k, byGradient, s, guess)) return;
        FilteredCold(pt, gt, mt, vt, touchedT, k, byGradient, s, forceHistogram, guess);
    }

    static bool FilteredWithGuess(Tensor pt, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, ThresholdGuess guess)
    {
        long n = pt.numel();
        nint p = (nint)Ptr(pt), g = (nint)Ptr(gt), m = (nint)Ptr(mt), v = (nint)Ptr(vt);
        nint touched = touchedT is null ? 0 : (nint)BytePtr(touchedT);
        var sc = s;
        nint keyP = byGradient ? g : m;
        float center = BitConverter.Int32BitsToSingle((int)guess.Key) * (float)guess.Trend;
        uint lo = (uint)BitConverter.SingleToInt32Bits(center * (float)(1 - guess.Width));
        uint hi = (uint)BitConverter.SingleToInt32Bits(center * (float)(1 + guess.Width));
        if (lo > hi || hi > 0x7FFFFFFFu) { guess.Valid = false; return false; } // nothing touched yet: the cold path runs
        if (Vector<float>.Count > 16) return false; // the per-vector masks are 16 bits
        long chunks = (n + Chunk - 1) / Chunk;
        var above = new long[chunks];
        // per chunk: the indices of the keys inside the window (GuessCandidateCap + 1 at most: past that the window missed)
        var candCount = new int[chunks];
        // the speculative update: entries with key > hi are certainly selected when the window brackets the k-th key,
        // so pass 1 applies their update at once and records (offset | old touched byte << 16, p after decay) to undo it
        // on a miss; past specEnd (the record full, or the scalar tail) the chunk's p is left for the exact update
        var specEnd = new long[chunks];
        var specCount = new int[chunks];
        int specCap = (int)Math.Min(Chunk, Math.Ceiling((double)k / n * Chunk * 1.25) + 1024);
        int specStride = specCap + 2 * Vector<float>.Count, candStride = GuessCandidateCap + 1 + 2 * Vector<float>.Count;
        var specOld = ArrayPool<float>.Shared.Rent(checked((int)(chunks * specStride)));
        int maskStride = Chunk / Vector<float>.Count;
        var specIdx = ArrayPool<ushort>.Shared.Rent(checked((int)(chunks * maskStride)));
        var specT = touchedT is null ? null : ArrayPool<byte>.Shared.Rent(checked((int)(chunks * specStride)));
        var candIdx = ArrayPool<int>.Shared.Rent(checked((int)(chunks * candStride)));
        var candKey = ArrayPool<int>.Shared.Rent(checked((int)(chunks * candStride)));
        var candUpd = ArrayPool<float>.Shared.Rent(checked((int)(chunks * candStride)));
        long ns = (n + (1 << SampleShift) - 1) >> SampleShift;
        var sample = ArrayPool<uint>.Shared.Rent((int)ns);
        var pins = new[] { GCHandle.Alloc(specOld, GCHandleType.Pinned), GCHandle.Alloc(specIdx, GCHandleType.Pinned),
                           GCHandle.Alloc(candIdx, GCHandleType.Pinned), GCHandle.Alloc(sample, GCHandleType.Pinned),
                           GCHandle.Alloc(candKey, GCHandleType.Pinned), GCHandle.Alloc(candUpd, GCHandleType.Pinned),
                           GCHandle.Alloc((object?)specT ?? specOld, GCHandleType.Pinned) };
        nint oldP = pins[0].AddrOfPinnedObject(), idxP = pins[1].AddrOfPinnedObject(), candP = pins[2].AddrOfPinnedObject(), spn = pins[3].AddrOfPinnedObject();
        nint candK = pins[4].AddrOfPinnedObject(), candU = pins[5].AddrOfPinnedObject(), tP = specT is null ? 0 : pins[6].AddrOfPinnedObject();
        void Body(long c)
        {
            long a = c * Chunk, b = Math.Min(n, a + Chunk);
            above[c] = MomentsSpeculateRange((float*)p, (float*)g, (float*)m, (float*)v, (byte*)touched, a, b, sc, (uint*)spn, byGradient, lo, hi,
                                             (int*)candP + c * candStride, (uint*)candK + c * candStride, (float*)candU + c * candStride, out candCount[c],
                                             (float*)oldP + c * specStride, (ushort*)idxP + c * maskStride, (byte*)tP + c * specStride, specCap, out specCount[c], out specEnd[c]);
        }
        if (chunks <= 1) Body(0); else Parallel.For(0L, chunks, Body);
        long total = 0;
        bool overflow = false;
        foreach (var cnt in candCount) { total += cnt; overflow |= cnt > GuessCandidateCap; }
        long need = k - above.Sum();
        uint T; long lastTie;
        bool hit = !overflow && need >= 1 && need <= total;
        ulong cStar = 0;
        if (hit)
        {
            cStar = SelectCandidates(candK, candP, candCount, candStride, lo, hi, need);
            T = (uint)(cStar >> 32); lastTie = 0xFFFFFFFFu - (uint)cStar;
            // keep the window about 5x wider than the drift of the threshold, shrinking slowly (a miss costs a pass
            // over the keys, a restore and a full update pass), within [0.3 %, 5 %]
            double drift = Math.Abs(BitConverter.Int32BitsToSingle((int)T) - center) / Math.Max(center, 1e-30f);
            guess.Width = Math.Clamp(Math.Max(4 * drift + 0.003, 0.75 * guess.Width), 0.003, 0.05);
        }
        else
        {
            // the moments are already updated: find the threshold from the keys alone
            bool ok;
            (T, lastTie, ok) = SelectGuided((uint*)keyP, n, k, sample, ns);
            if (!ok) (T, lastTie) = SelectByHistogram((uint*)keyP, n, k);
            double drift = Math.Abs(BitConverter.Int32BitsToSingle((int)T) - center) / Math.Max(center, 1e-30f);
            // too many candidates: the window was too wide; too few or too many above it: too narrow or off-centre
            guess.Width = overflow ? Math.Clamp(Math.Min(guess.Width / 2, 4 * drift + 0.003), 0.003, 0.05)
                                   : Math.Clamp(Math.Max(2 * guess.Width, 4 * drift + 0.003), 0.003, 0.05);
        }
        float prev = BitConverter.Int32BitsToSingle((int)guess.Key);
        float now = BitConverter.Int32BitsToSingle((int)T);
        guess.Trend = prev > 0 && now > 0 ? Math.Clamp(now / prev, 0.5, 2.0) : 1.0;
        guess.Key = T; guess.Valid = T != 0;
        int tInt = (int)T, lastInt = (int)lastTie;
        void Finish(long c)
        {
            long a = c * Chunk, b = Math.Min(n, a + Chunk), e = specEnd[c];
            if (hit)
            {
                // [a, e): the entries above the window are done; the selected candidates take the update computed in
                // pass 1 (p holds p·decay there): p = p·decay + (−step·m)/denom, as ApplyRange computes it
                uint* ci = (uint*)candP + c * candStride, ck = (uint*)candK + c * candStride;
                float* cu = (float*)candU + c * candStride;
                float* pp = (float*)p;
                byte* tt = (byte*)touched;
                // the selected ones first, branch-free (sequential), then their scattered updates with prefetching
                int cnt = candCount[c], nsel = 0;
                uint* si = stackalloc uint[cnt + 1];
                float* su = stackalloc float[cnt + 1];
                for (int j = 0; j < cnt; j++)
                {
                    uint i = ci[j];
                    ulong x = ((ulong)ck[j] << 32) | (0xFFFFFFFFu - i);
                    si[nsel] = i; su[nsel] = cu[j];
                    nsel += (x >= cStar ? 1 : 0) & (i < e ? 1 : 0);
                }
                for (int j = 0; j < nsel; j++)
                {
                    uint i = si[j];
                    if (Sse.IsSupported && j + 8 < nsel) Sse.Prefetch0(pp + si[j + 8]);
                    pp[i] = pp[i] + su[j];
                    if (tt != null) tt[i] = 1;
                }
            }
            else
            {
                // undo the speculative updates, then the exact update over [a, e) without the decay already applied there
                RestoreRange((float*)p, (byte*)touched, a, e, (float*)oldP + c * specStride, (ushort*)idxP + c * maskStride, (byte*)tP + c * specStride);
                if (e > a) ApplyRange((float*)p, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, a, e, tInt, lastInt, sc, true);
            }
            // [e, b): no speculation there: the plain update
            if (b > e) ApplyRange((float*)p, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, e, b, tInt, lastInt, sc, false);
        }
        if (chunks <= 1) Finish(0); else Parallel.For(0L, chunks, Finish);
        foreach (var h in pins) h.Free();
        ArrayPool<uint>.Shared.Return(sample);
        ArrayPool<float>.Shared.Return(specOld);
        ArrayPool<ushort>.Shared.Return(specIdx);
        if (specT is not null) ArrayPool<byte>.Shared.Return(specT);
        ArrayPool<int>.Shared.Return(candIdx);
        ArrayPool<int>.Shared.Return(candKey);
        ArrayPool<float>.Shared.Return(candUpd);
        return true;
    }

    /// <summary>
    /// The need-th largest composite key among the candidates (keys in [lo, hi]): a histogram of the keys over the
    /// window finds the bucket holding it, and a quickselect among that bucket's composites finishes exactly.
    /// </summary>
    static ulong SelectCandidates(nint candK, nint candP, int[] candCount, int stride, uint lo, uint hi, long need)
    {
        uint range = hi - lo;
        int shift = Math.Max(0, 32 - BitOperations.LeadingZeroCount(range) - 10);
        int nb = (int)(range >> shift) + 1;
        Span<int> hist = stackalloc int[nb];
        hist.Clear();
        for (int c = 0; c < candCount.Length; c++)
        {
            uint* ck = (uint*)candK + (long)c * stride;
            for (int j = 0; j < candCount[c]; j++) hist[(int)((ck[j] - lo) >> shift)]++;
        }
        long above = 0; int b = nb - 1;
        for (; b > 0; b--) { if (above + hist[b] >= need) break; above += hist[b]; }
        int inBucket = hist[b];
        var bucket = ArrayPool<ulong>.Shared.Rent(inBucket);
        int o = 0;
        for (int c = 0; c < candCount.Length; c++)
        {
            uint* ck = (uint*)candK + (long)c * stride, ci = (uint*)candP + (long)c * stride;
            for (int j = 0; j < candCount[c]; j++)
                if ((int)((ck[j] - lo) >> shift) == b) bucket[o++] = ((ulong)ck[j] << 32) | (0xFFFFFFFFu - ci[j]);
        }
        ulong r = QuickSelect(bucket, inBucket, (int)(inBucket - (need - above)));
        ArrayPool<ulong>.Shared.Return(bucket);
        return r;
    }

    /// <summary>Puts back p (and the touched bytes) of the entries updated speculatively over [a, e): per vector, the
    /// mask of those entries; their old values in order.</summary>
    static void RestoreRange(float* p, byte* touched, long a, long e, float* old, ushort* masks, byte* oldTouched)
    {
        int W = Vector<float>.Count, o = 0;
        long vecs = (e - a) / W;
        for (long q = 0; q < vecs; q++)
        {
            uint bits = masks[q];
            while (bits != 0)
            {
                long i = a + q * W + BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                p[i] = old[o];
                if (touched != null) touched[i] = oldTouched[o];
                o++;
            }
        }
    }

    /// <summary>For each 8-bit mask, the lane indices of its set bits first (AVX2 left-packing by a permutation).</summary>
    static readonly int* PackTable;

    static AdamKernels() { PackTable = MakePackTable(); }

    static int* MakePackTable()
    {
        var t = (int*)NativeMemory.AlignedAlloc(256 * 8 * sizeof(int), 32);
        for (int mask = 0; mask < 256; mask++)
        {
            int o = 0;
            for (int j = 0; j < 8; j++) if ((mask & (1 << j)) != 0) t[mask * 8 + o++] = j;
            for (; o < 8; o++) t[mask * 8 + o] = 0;
        }
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static uint MaskBits(Vector<int> x)
    {
        if (Vector<int>.Count == 8) return Vector256.ExtractMostSignificantBits(x.AsVector256());
        if (Vector<int>.Count == 16) return (uint)Vector512.ExtractMostSignificantBits(x.AsVector512());
        if (Vector<int>.Count == 4) return Vector128.ExtractMostSignificantBits(x.AsVector128());
        uint r = 0;
        for (int j = 0; j < Vector<int>.Count; j++) if (x[j] != 0) r |= 1u << j;
        return r;
    }

    /// <summary>Stores the lanes of x selected by bits contiguously at dst (may write up to a full vector past them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Pack(Vector<int> x, uint bits, int* dst, int* table)
    {
        if (Vector<int>.Count == 8 && System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            var perm = Vector256.Load(table + bits * 8);
            System.Runtime.Intrinsics.X86.Avx2.PermuteVar8x32(x.AsVector256(), perm).Store(dst);
            return;
        }
        int o = 0;
        for (int j = 0; j < Vector<int>.Count; j++) if ((bits & (1u << j)) != 0) dst[o++] = x[j];
    }

    /// <summary>
    /// The moment pass fused with counting the keys above hi, collecting the indices of those in [lo, hi], and the
    /// speculative update of the entries above hi (and p·decay of the others when decay ≠ 1) over [lo0, specEnd); past
    /// specEnd (the record full, and the scalar tail) p is left untouched.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long MomentsSpeculateRange(float* p, float* g, float* m, float* v, byte* touched, long lo0, long hi0, in AdamScalars s, uint* sample,
                                      bool byGradient, uint lo, uint hi, int* cand, uint* candKey, float* candUpd, out int candCount,
                                      float* specOld, ushort* specMask, byte* specTouched, int specCap, out int specCount, out long specEnd)
    {
        int W = Vector<float>.Count;
        int* table = PackTable; // a local: no static access in the loop
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        var nsV = new Vector<float>(s.NegStep); var isb = new Vector<float>(s.InvSqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(s.Decay);
        bool decayOn = s.Decay != 1f;
        var absMask = new Vector<int>(0x7FFFFFFF);
        var hiV = new Vector<int>((int)hi);
        var loV = new Vector<int>((int)lo);
        var flip = new Vector<int>(int.MinValue);
        var spanV = new Vector<int>((int)((hi - lo) ^ 0x80000000u));
        Span<int> iotaS = stackalloc int[W];
        for (int j = 0; j < W; j++) iotaS[j] = j;
        var iota = new Vector<int>(iotaS);
        var acc = Vector<int>.Zero;
        uint* key = (uint*)(byGradient ? g : m);
        long i = lo0, count = 0;
        int sc = 0, cc = 0;
        bool specOn = true;
        long end = -1;
        const int CandLimit = GuessCandidateCap + 1;
        for (; i + W <= hi0; i += W)
        {
            var gv = Unsafe.ReadUnaligned<Vector<float>>(g + i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            var kv = Vector.AsVectorInt32(byGradient ? gv : mv) & absMask;
            if ((i & 63) == 0) sample[i >> 6] = (uint)kv[0];
            var up = Vector.GreaterThan(kv, hiV);
            acc -= up;
            uint bits = MaskBits(up);
            var upd = (nsV * mv) / (Vector.SquareRoot(vv) * isb + ep);
            if (specOn)
            {
                int cnt = BitOperations.PopCount(bits);
                if (sc + cnt > specCap) { specOn = false; end = i; } // the record is full: the rest of the chunk later
                else
                {
                    var pdv = Unsafe.ReadUnaligned<Vector<float>>(p + i);
                    if (decayOn) pdv *= dc;
                    specMask[(i - lo0) / W] = (ushort)bits;
                    if (touched != null)
                    {
                        // the old touched bytes in order; the new ones set
                        int o = sc;
                        for (int j = 0; j < W; j++)
                            if ((bits & (1u << j)) != 0) { specTouched[o++] = touched[i + j]; touched[i + j] = 1; }
                    }
                    Pack(Vector.AsVectorInt32(pdv), bits, (int*)specOld + sc, table);
                    sc += cnt;
                    Unsafe.WriteUnaligned(p + i, Vector.ConditionalSelect(up, pdv + upd, pdv));
                }
            }
            // the window: lo <= x <= hi  ⇔  signed((x - lo) ^ 2³¹) <= signed((hi - lo) ^ 2³¹)
            var inside = ~Vector.GreaterThan((kv - loV) ^ flip, spanV);
            if (inside == Vector<int>.Zero) continue;
            uint ib = MaskBits(inside);
            Pack(new Vector<int>((int)i) + iota, ib, cand + cc, table);
            Pack(kv, ib, (int*)candKey + cc, table);
            Pack(Vector.AsVectorInt32(upd), ib, (int*)candUpd + cc, table);
            cc = Math.Min(cc + BitOperations.PopCount(ib), CandLimit);
        }
        specEnd = specOn ? i : end;
        specCount = sc;
        count += Vector.Sum(acc);
        for (; i < hi0; i++)
        {
            float gi = g[i];
            m[i] = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            v[i] = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            uint x = key[i] & 0x7FFFFFFFu;
            if ((i & 63) == 0) sample[i >> 6] = x;
            if (x > hi) count++;
            else if (x >= lo && cc < CandLimit) { candKey[cc] = x; candUpd[cc] = 0; cand[cc++] = (int)i; } // past specEnd: no update here
        }
        candCount = cc;
        return count;
    }

    static void FilteredCold(Tensor pt, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s, bool forceHistogram, ThresholdGuess guess)
    {
        long n = pt.numel();
        nint p = (nint)Ptr(pt), g = (nint)Ptr(gt), m = (nint)Ptr(mt), v = (nint)Ptr(vt);
        nint touched = touchedT is null ? 0 : (nint)BytePtr(touchedT);
        var sc = s;
        nint keyP = byGradient ? g : m;

        // pass 1: moments, and every 64th key as a sample
        long ns = (n + (1 << SampleShift) - 1) >> SampleShift;
        var sample = ArrayPool<uint>.Shared.Rent((int)ns);
        fixed (uint* sp = sample)
        {
            nint spn = (nint)sp;
            ForChunks(n, (lo, hi) => MomentsRange((float*)g, (float*)m, (float*)v, lo, hi, sc, (uint*)spn, byGradient));
        }
        // pass 2: count the keys above a window guessed from the sample, collect those inside it, select exactly
        var (T, lastTie, ok) = forceHistogram ? (0u, 0L, false) : SelectGuided((uint*)keyP, n, k, sample, ns);
        ArrayPool<uint>.Shared.Return(sample);
        if (!ok) { (T, lastTie) = SelectByHistogram((uint*)keyP, n, k); }
        guess.Key = T; guess.Valid = T != 0; guess.Width = 0.02; guess.Trend = 1.0;

        // pass 3: the masked update
        int tInt = (int)T, lastInt = (int)lastTie;
        ForChunks(n, (lo, hi) => ApplyRange((float*)p, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, lo, hi, tInt, lastInt, sc, false));
    }

    /// <summary>The k-th largest composite key, where composite = key·2³² + (2³² − 1 − index): larger key first, then lower index.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static (uint T, long lastTie, bool ok) SelectGuided(uint* key, long n, long k, uint[] sample, long ns)
    {
        if (ns < 64) return (0, 0, false);
        // the window [lo, hi] around the expected threshold: ±4 binomial standard deviations of the sample rank
        double q = (double)k / n;
        double expect = q * ns;
        long margin = (long)Math.Ceiling(4 * Math.Sqrt(ns * q * (1 - q))) + 8;
        long rHi = (long)Math.Floor(expect) - margin;   // descending rank of hi in the sample
        long rLo = (long)Math.Ceiling(expect) + margin; // descending rank of lo
        var tmp = ArrayPool<uint>.Shared.Rent((int)ns);
        uint hi, lo;
        try
        {
            for (long i = 0; i < ns; i++) tmp[i] = sample[i];
            // ascending position of descending rank r is ns - 1 - r
            hi = rHi < 0 ? 0x7FFFFFFFu : QuickSelect(tmp, (int)ns, (int)(ns - 1 - rHi));
            lo = rLo >= ns ? 0u : QuickSelect(tmp, (int)ns, (int)(ns - 1 - rLo));
        }
        finally { ArrayPool<uint>.Shared.Return(tmp); }
        if (lo > hi) return (0, 0, false);
        long cap = Math.Max(4096, n / 16);
        long chunks = (n + Chunk - 1) / Chunk;
        var above = new long[chunks];
        var cands = new List<ulong>[chunks];
        long total = 0;
        bool overflow = false;
        nint kp = (nint)key;
        void Body(long c)
        {
            long a = c * Chunk, b = Math.Min(n, a + Chunk);
            var list = new List<ulong>();
            above[c] = CountAndCollect((uint*)kp, a, b, lo, hi, list);
            cands[c] = list;
            if (Interlocked.Add(ref total, list.Count) > cap) Volatile.Write(ref overflow, true);
        }
        if (chunks <= 1) Body(0); else Parallel.For(0L, chunks, Body);
        if (overflow) return (0, 0, false);
        long cAbove = above.Sum();
        long need = k - cAbove;
        if (need < 1 || need > total) return (0, 0, false);
        var all = ArrayPool<ulong>.Shared.Rent((int)total);
        int o = 0;
        foreach (var l in cands) { l.CopyTo(all, o); o += l.Count; }
        // the need-th largest composite
        ulong cStar = QuickSelect(all, (int)total, (int)(total - need));
        ArrayPool<ulong>.Shared.Return(all);
        return ((uint)(cStar >> 32), (long)(0xFFFFFFFFu - (uint)cStar), true);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long CountAndCollect(uint* key, long a, long b, uint lo, uint hi, List<ulong> list)
    {
        int W = Vector<int>.Count;
        var absMask = new Vector<int>(0x7FFFFFFF);
        var hiV = new Vector<int>((int)hi);
        var loV = new Vector<int>((int)lo);
        var flip = new Vector<int>(int.MinValue);
        // lo <= x <= hi  ⇔  (uint)(x - lo) <= hi - lo  ⇔  signed((x - lo) ^ 2³¹) <= signed((hi - lo) ^ 2³¹)
        var spanV = new Vector<int>((int)((hi - lo) ^ 0x80000000u));
        var allOut = new Vector<int>(-1);
        var acc = Vector<int>.Zero;
        long i = a, count = 0;
        for (; i + W <= b; i += W)
        {
            var kv = Unsafe.ReadUnaligned<Vector<int>>(key + i) & absMask;
            acc -= Vector.GreaterThan(kv, hiV);
            var outside = Vector.GreaterThan((kv - loV) ^ flip, spanV);
            if (outside == allOut) continue;
            for (int j = 0; j < W; j++)
            {
                uint x = key[i + j] & 0x7FFFFFFFu;
                if (x >= lo && x <= hi) list.Add(((ulong)x << 32) | (0xFFFFFFFFu - (uint)(i + j)));
            }
        }
        count += Vector.Sum(acc);
        for (; i < b; i++)
        {
            uint x = key[i] & 0x7FFFFFFFu;
            if (x > hi) count++;
            else if (x >= lo) list.Add(((ulong)x << 32) | (0xFFFFFFFFu - (uint)i));
        }
        return count;
    }

    /// <summary>The element that would sit at position pos (ascending) after sorting a[0..n).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static T QuickSelect<T>(T[] a, int n, int pos) where T : IComparable<T>
    {
        int left = 0, right = n - 1;
        var rng = new Random(12345);
        while (left < right)
        {
            T pivot = a[left + rng.Next(right - left + 1)];
            int i = left, j = right;
            while (i <= j)
            {
                while (a[i].CompareTo(pivot) < 0) i++;
                while (a[j].CompareTo(pivot) > 0) j--;
                if (i <= j) { (a[i], a[j]) = (a[j], a[i]); i++; j--; }
            }
            if (pos <= j) right = j;
            else if (pos >= i) left = i;
            else break;
        }
        return a[pos];
    }

    /// <summary>The exact fallback: two histogram passes over the key (upper 15 bits, then lower 16 bits inside the
    /// threshold's bin), and a scan for the last tie when ties straddle the cut.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static (uint T, long lastTie) SelectByHistogram(uint* key, long n, long k)
    {
        nint kp = (nint)key;
        var hiHist = ArrayPool<long>.Shared.Rent(HiBins);
        Array.Clear(hiHist, 0, HiBins);
        RunWithHistograms(n, HiBins, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (lo, hi, h) =>
        {
            var kk = (uint*)kp;
            for (long i = lo; i < hi; i++) h[(kk[i] & 0x7FFFFFFFu) >> 16]++;
        }, hiHist);
        long above = 0; int bin = HiBins - 1;
        for (; bin >= 0; bin--) { if (above + hiHist[bin] >= k) break; above += hiHist[bin]; }
        long needInBin = k - above;
        var loHist = ArrayPool<long>.Shared.Rent(LoBins);
        Array.Clear(loHist, 0, LoBins);
        uint binU = (uint)bin;
        RunWithHistograms(n, LoBins, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (lo, hi, h) =>
        {
            var kk = (uint*)kp;
            for (long i = lo; i < hi; i++)
            {
                uint x = kk[i] & 0x7FFFFFFFu;
                if ((x >> 16) == binU) h[x & 0xFFFF]++;
            }
        }, loHist);
        long aboveInBin = 0; int low = LoBins - 1;
        for (; low >= 0; low--) { if (aboveInBin + loHist[low] >= needInBin) break; aboveInBin += loHist[low]; }
        uint T = (binU << 16) | (uint)low;
        long needTies = needInBin - aboveInBin;
        long lastTie = n - 1;
        if (needTies < loHist[low])
        {
            long seen = 0;
            for (long i = 0; i < n; i++)
                if ((key[i] & 0x7FFFFFFFu) == T && ++seen == needTies) { lastTie = i; break; }
        }
        ArrayPool<long>.Shared.Return(hiHist);
        ArrayPool<long>.Shared.Return(loHist);
        return (T, lastTie);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ApplyRange(float* p, float* m, float* v, uint* key, byte* touched, long lo, long hi, int T, int lastTie, in AdamScalars s, bool decayDone)
    {
        int W = Vector<float>.Count;
        float decay = decayDone ? 1f : s.Decay;
        var ns = new Vector<float>(s.NegStep); var isb = new Vector<float>(s.InvSqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(decay);
        var absMask = new Vector<int>(0x7FFFFFFF);
        var tv = new Vector<int>(T); var lastV = new Vector<int>(lastTie);
        Span<int> iotaS = stackalloc int[W];
        for (int j = 0; j < W; j++) iotaS[j] = j;
        var iota = new Vector<int>(iotaS);
        // when no tie at T is cut off inside this range, "key > T or (key = T and i ≤ I*)" is just key > T − 1
        bool allTies = lastTie >= hi - 1;
        var tm1 = new Vector<int>(T - 1);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var kv = Unsafe.ReadUnaligned<Vector<int>>(key + i) & absMask;
            var sel = allTies ? Vector.GreaterThan(kv, tm1)
                              : Vector.GreaterThan(kv, tv) | (Vector.Equals(kv, tv) & Vector.LessThanOrEqual(new Vector<int>((int)i) + iota, lastV));
            var pd = Unsafe.ReadUnaligned<Vector<float>>(p + i) * dc;
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i);
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i);
            var denom = Vector.SquareRoot(vv) * isb + ep;
            Unsafe.WriteUnaligned(p + i, Vector.ConditionalSelect(sel, pd + (ns * mv) / denom, pd));
            if (touched != null && sel != Vector<int>.Zero)
                for (int j = 0; j < W; j++) if (sel[j] != 0) touched[i + j] = 1;
        }
        for (; i < hi; i++)
        {
            int kx = (int)(key[i] & 0x7FFFFFFFu);
            float pd = p[i] * decay;
            if (kx > T || (kx == T && i <= lastTie))
            {
                float denom = MathF.Sqrt(v[i]) * s.InvSqrtBc2 + s.Eps;
                p[i] = pd + (s.NegStep * m[i]) / denom;
                if (touched != null) touched[i] = 1;
            }
            else p[i] = pd;
        }
    }

    /// <summary>Runs body over the chunks with a histogram per worker; sums them into total.</summary>
    static void RunWithHistograms(long n, int bins, Action<long, long, int[]> body, long[] total)
    {
        long chunks = (n + Chunk - 1) / Chunk;
        if (chunks <= 1)
        {
            var h = ArrayPool<int>.Shared.Rent(bins);
            Array.Clear(h, 0, bins);
            body(0, n, h);
            for (int b = 0; b < bins; b++) total[b] += h[b];
            ArrayPool<int>.Shared.Return(h);
            return;
        }
        var gate = new object();
        Parallel.For(0L, chunks,
            () => { var h = ArrayPool<int>.Shared.Rent(bins); Array.Clear(h, 0, bins); return h; },
            (c, _, h) => { body(c * Chunk, Math.Min(n, (c + 1) * Chunk), h); return h; },
            h => { lock (gate) { for (int b = 0; b < bins; b++) total[b] += h[b]; } ArrayPool<int>.Shared.Return(h); });
    }
}
