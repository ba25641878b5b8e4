using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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

// The speculative filtered step: the moment pass around last step's threshold, its update undone on a miss.
internal static unsafe partial class AdamKernels
{
    const int GuessCandidateCap = Chunk / 32; // the guess route: 1/32 of a chunk (12 B each, preallocated)

    static bool FilteredWithGuess<TW, TG>(TW w, TG gr, nint m, nint v, nint keyP, nint touched, long n, long k, bool byGradient, AdamScalars s, ThresholdGuess guess)
        where TW : struct, IWeights where TG : struct, IGrad
    {
        var sc = s;
        bool touchedOn = touched != 0;
        // bfloat16 without a master: p is written once, with its final value (see MomentsSpeculateRange)
        bool rounds = TW.Rounds;
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
        // so pass 1 applies their update at once and records (offset | old touched bit << 16, p after decay) to undo it
        // on a miss; past specEnd (the record full, or the scalar tail) the chunk's p is left for the exact update
        var specEnd = new long[chunks];
        var specCount = new int[chunks];
        int specCap = (int)Math.Min(Chunk, Math.Ceiling((double)k / n * Chunk * 1.25) + 1024);
        int specStride = specCap + 2 * Vector<float>.Count, candStride = GuessCandidateCap + 1 + 2 * Vector<float>.Count;
        var specOld = ArrayPool<float>.Shared.Rent(checked((int)(chunks * specStride)));
        int maskStride = Chunk / Vector<float>.Count;
        var specIdx = ArrayPool<ushort>.Shared.Rent(checked((int)(chunks * maskStride)));
        var specT = !touchedOn ? null : ArrayPool<byte>.Shared.Rent(checked((int)(chunks * specStride)));
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
            above[c] = MomentsSpeculateRange(w, gr, (float*)m, (float*)v, (byte*)touched, a, b, sc, (uint*)spn, byGradient, lo, hi,
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
                // pass 1: p·decay + (−step·m)/denom, as ApplyRange computes it (float32: p already holds p·decay there;
                // bfloat16 without a master: p is untouched there, and the decay of the others follows below)
                uint* ci = (uint*)candP + c * candStride, ck = (uint*)candK + c * candStride;
                float* cu = (float*)candU + c * candStride;
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
                float decay = rounds ? sc.Decay : 1f;
                for (int j = 0; j < nsel; j++)
                {
                    uint i = si[j];
                    if (j + 8 < nsel) w.Prefetch(si[j + 8]);
                    su[j] = w.Load1(i) * decay + su[j];
                    if (!rounds) w.Store1(i, su[j]);
                    if (tt != null) SetBit(tt, i);
                }
                if (rounds)
                {
                    // the others of [a, e) take p·decay now, then the selected candidates their one rounding
                    if (sc.Decay != 1f) DecayExceptRange(w, a, e, sc.Decay, (ushort*)idxP + c * maskStride);
                    for (int j = 0; j < nsel; j++) w.Store1(si[j], su[j]);
                }
            }
            else
            {
                // undo the speculative updates, then the exact update over [a, e) (float32: without the decay already
                // applied there; bfloat16: p is back to its value before the step)
                RestoreRange(w, (byte*)touched, a, e, (float*)oldP + c * specStride, (ushort*)idxP + c * maskStride, (byte*)tP + c * specStride);
                if (e > a) ApplyRange(w, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, a, e, tInt, lastInt, sc, !rounds);
            }
            // [e, b): no speculation there: the plain update
            if (b > e) ApplyRange(w, (float*)m, (float*)v, (uint*)keyP, (byte*)touched, e, b, tInt, lastInt, sc, false);
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
    /// The moment pass fused with counting the keys above hi, collecting the indices of those in [lo, hi], and the
    /// speculative update of the entries above hi (and p·decay of the others when decay ≠ 1) over [lo0, specEnd); past
    /// specEnd (the record full, and the scalar tail) p is left untouched.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static long MomentsSpeculateRange<TW, TG>(TW w, TG g, float* m, float* v, byte* touched, long lo0, long hi0, in AdamScalars s, uint* sample,
                                              bool byGradient, uint lo, uint hi, int* cand, uint* candKey, float* candUpd, out int candCount,
                                              float* specOld, ushort* specMask, byte* specTouched, int specCap, out int specCount, out long specEnd)
        where TW : struct, IWeights where TG : struct, IGrad
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
        bool rounds = TW.Rounds;
        long i = lo0, count = 0;
        int sc = 0, cc = 0;
        bool specOn = true;
        long end = -1;
        const int CandLimit = GuessCandidateCap + 1;
        for (; i + W <= hi0; i += W)
        {
            var gv = g.Load(i);
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
                    specMask[(i - lo0) / W] = (ushort)bits;
                    // float32 (and a master): every p becomes p·decay here, the entries above the window p·decay + upd.
                    // Storing a bfloat16 rounds, so there only the entries above the window change (the others are
                    // stored back as they were, which rounding leaves alone) and the record keeps their original p.
                    // Branch-free: about 3/4 of the vectors hold an entry above the window at α = 15 %.
                    var p0 = w.Load(i);
                    var pdv = decayOn ? p0 * dc : p0;
                    if (touched != null)
                    {
                        // the old touched bits (0 or 1, a byte each) in order; the new ones set
                        int o = sc;
                        for (int j = 0; j < W; j++)
                            if ((bits & (1u << j)) != 0) { specTouched[o++] = GetBit(touched, i + j); SetBit(touched, i + j); }
                    }
                    Pack(Vector.AsVectorInt32(rounds ? p0 : pdv), bits, (int*)specOld + sc, table);
                    sc += cnt;
                    w.Store(i, Vector.ConditionalSelect(up, pdv + upd, rounds ? p0 : pdv));
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
        uint* key = (uint*)m; // the tail's key: |m|, or |g| of a float32 g (the vector loop read it from gv)
        for (; i < hi0; i++)
        {
            float gi = g.Load1(i);
            m[i] = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            v[i] = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            uint x = byGradient ? BitConverter.SingleToUInt32Bits(gi) & 0x7FFFFFFFu : key[i] & 0x7FFFFFFFu;
            if ((i & 63) == 0) sample[i >> 6] = x;
            if (x > hi) count++;
            else if (x >= lo && cc < CandLimit) { candKey[cc] = x; candUpd[cc] = 0; cand[cc++] = (int)i; } // past specEnd: no update here
        }
        candCount = cc;
        return count;
    }

    /// <summary>Puts back p (and the touched bits) of the entries updated speculatively over [a, e): per vector, the
    /// mask of those entries; their old values in order (the old touched bits a byte each, 0 or 1).</summary>
    static void RestoreRange<TW>(TW w, byte* touched, long a, long e, float* old, ushort* masks, byte* oldTouched) where TW : struct, IWeights
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
                w.Store1(i, old[o]);
                if (touched != null)
                {
                    if (oldTouched[o] != 0) SetBit(touched, i);
                    else ClearBit(touched, i);
                }
                o++;
            }
        }
    }

    /// <summary>bfloat16 with weight decay, after a hit: p·decay over [a, e) except the entries updated in pass 1 (their
    /// bits in the per-vector masks).</summary>
    static void DecayExceptRange<TW>(TW w, long a, long e, float decay, ushort* masks) where TW : struct, IWeights
    {
        int W = Vector<float>.Count;
        var dc = new Vector<float>(decay);
        Span<int> laneS = stackalloc int[W];
        for (int j = 0; j < W; j++) laneS[j] = 1 << j;
        var lane = new Vector<int>(laneS);
        long vecs = (e - a) / W;
        for (long q = 0; q < vecs; q++)
        {
            long i = a + q * W;
            var done = Vector.Equals(new Vector<int>(masks[q]) & lane, lane);
            var x = w.Load(i);
            w.Store(i, Vector.ConditionalSelect(done, x, x * dc));
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
}
