using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>The per-step constants of the Adam update, in float32 as libtorch converts them.</summary>
internal readonly struct AdamScalars
{
    public readonly float Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, NegStep, SqrtBc2, Eps, Decay;
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
        NegStep = (float)(-StepD); SqrtBc2 = (float)SqrtBc2D; Eps = (float)eps;
        Decay = (float)(1 - lr * weightDecay);
    }
}

/// <summary>
/// Fused CPU float32 kernels of the masked Adam step over raw tensor memory (SIMD via <see cref="Vector{T}"/>,
/// chunks in parallel). A dense step is a single pass (reads g, m, v, p; writes m, v, p). A filtered step is
/// <list type="number">
/// <item>moments + a histogram of the upper 15 bits of the ranking key (|m| or |g| as a non-negative float's bit
/// pattern, which orders like an unsigned integer);</item>
/// <item>a pass over the key alone that histograms the lower 16 bits inside the bin holding the k-th largest key,
/// giving the exact threshold key T;</item>
/// <item>(only when ties at T straddle the cut) a scan for the index I* of the last tie taken: lower flat index wins;</item>
/// <item>the update pass: entry i is selected iff key_i &gt; T, or key_i = T and i ≤ I*.</item>
/// </list>
/// No buffer beyond the two moments (and the optional byte mask) is allocated per block.
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

    static void DenseRange(float* p, float* g, float* m, float* v, long lo, long hi, in AdamScalars s)
    {
        int W = Vector<float>.Count;
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        var ns = new Vector<float>(s.NegStep); var sb = new Vector<float>(s.SqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(s.Decay);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var gv = Unsafe.ReadUnaligned<Vector<float>>(g + i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            var denom = Vector.SquareRoot(vv) / sb + ep;
            var pv = Unsafe.ReadUnaligned<Vector<float>>(p + i) * dc;
            Unsafe.WriteUnaligned(p + i, pv + (ns * mv) / denom);
        }
        for (; i < hi; i++)
        {
            float gi = g[i];
            float mi = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            float vi = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            m[i] = mi; v[i] = vi;
            float denom = MathF.Sqrt(vi) / s.SqrtBc2 + s.Eps;
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

    static void MomentsRange(float* g, float* m, float* v, long lo, long hi, in AdamScalars s, int[]? hist, bool byGradient)
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
            if (hist != null)
                for (int j = 0; j < W; j++) hist[(key[i + j] & 0x7FFFFFFFu) >> 16]++;
        }
        for (; i < hi; i++)
        {
            float gi = g[i];
            m[i] = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            v[i] = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            if (hist != null) hist[(key[i] & 0x7FFFFFFFu) >> 16]++;
        }
    }

    /// <summary>
    /// The filtered step: exactly k entries (1 ≤ k &lt; numel) with the largest key (|m|, or |g| when
    /// <paramref name="byGradient"/>) get the update; ties at the threshold go to the lower flat index.
    /// </summary>
    public static void Filtered(Tensor pt, Tensor gt, Tensor mt, Tensor vt, Tensor? touchedT, long k, bool byGradient, AdamScalars s)
    {
        long n = pt.numel();
        nint p = (nint)Ptr(pt), g = (nint)Ptr(gt), m = (nint)Ptr(mt), v = (nint)Ptr(vt);
        nint touched = touchedT is null ? 0 : (nint)BytePtr(touchedT);
        var sc = s;

        // pass 1: moments + histogram of the key's upper bits
        var hiHist = new long[HiBins];
        RunWithHistograms(n, HiBins, (lo, hi, h) => MomentsRange((float*)g, (float*)m, (float*)v, lo, hi, sc, h, byGradient), hiHist);
        uint* key = (uint*)(byGradient ? g : m);
        long above = 0; int bin = HiBins - 1;
        for (; bin >= 0; bin--) { if (above + hiHist[bin] >= k) break; above += hiHist[bin]; }
        long needInBin = k - above;

        // pass 2: the lower 16 bits inside that bin → the exact threshold key T
        var loHist = new long[LoBins];
        uint binU = (uint)bin;
        RunWithHistograms(n, LoBins, (lo, hi, h) =>
        {
            var kk = (uint*)(byGradient ? g : m);
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
            // pass 3 (rare): the needTies-th entry equal to T in index order
            long seen = 0;
            for (long i = 0; i < n; i++)
                if ((key[i] & 0x7FFFFFFFu) == T && ++seen == needTies) { lastTie = i; break; }
        }

        // pass 4: the masked update
        int tInt = (int)T, lastInt = (int)lastTie;
        ForChunks(n, (lo, hi) => ApplyRange((float*)p, (float*)m, (float*)v, (uint*)(byGradient ? g : m), (byte*)touched, lo, hi, tInt, lastInt, sc));
    }

    static void ApplyRange(float* p, float* m, float* v, uint* key, byte* touched, long lo, long hi, int T, int lastTie, in AdamScalars s)
    {
        int W = Vector<float>.Count;
        var ns = new Vector<float>(s.NegStep); var sb = new Vector<float>(s.SqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(s.Decay);
        var absMask = new Vector<int>(0x7FFFFFFF);
        var tv = new Vector<int>(T); var lastV = new Vector<int>(lastTie);
        Span<int> iotaS = stackalloc int[W];
        for (int j = 0; j < W; j++) iotaS[j] = j;
        var iota = new Vector<int>(iotaS);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var kv = Unsafe.ReadUnaligned<Vector<int>>(key + i) & absMask;
            var idx = new Vector<int>((int)i) + iota;
            var sel = Vector.GreaterThan(kv, tv) | (Vector.Equals(kv, tv) & Vector.LessThanOrEqual(idx, lastV));
            var pd = Unsafe.ReadUnaligned<Vector<float>>(p + i) * dc;
            if (sel == Vector<int>.Zero) { Unsafe.WriteUnaligned(p + i, pd); continue; }
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i);
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i);
            var denom = Vector.SquareRoot(vv) / sb + ep;
            Unsafe.WriteUnaligned(p + i, Vector.ConditionalSelect(sel, pd + (ns * mv) / denom, pd));
            if (touched != null)
                for (int j = 0; j < W; j++) if (sel[j] != 0) touched[i + j] = 1;
        }
        for (; i < hi; i++)
        {
            int kx = (int)(key[i] & 0x7FFFFFFFu);
            float pd = p[i] * s.Decay;
            if (kx > T || (kx == T && i <= lastTie))
            {
                float denom = MathF.Sqrt(v[i]) / s.SqrtBc2 + s.Eps;
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
