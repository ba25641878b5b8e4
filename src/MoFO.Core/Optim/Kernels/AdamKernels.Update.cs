using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>The per-step constants of the Adam update, in float32 as libtorch converts them.</summary>
internal readonly struct AdamScalars
{
    public readonly float Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, NegStep, SqrtBc2, InvSqrtBc2, Eps, Decay;
    public readonly double Lr, WeightDecay, Beta1D, Beta2D, EpsD, StepD, SqrtBc2D;

    /// <summary>The authors' conventions: step = lr/(1-β1^t), denom = sqrt(v)/sqrt(1-β2^t) + eps, p *= 1 - lr·wd.</summary>
    public AdamScalars(double lr, double beta1, double beta2, double eps, double weightDecay, long t)
        : this(lr, beta1, beta2, eps, weightDecay, lr / (1 - Math.Pow(beta1, t)), Math.Sqrt(1 - Math.Pow(beta2, t))) { }

    /// <summary>With the bias-corrected step and sqrt(1-β2^t) given.</summary>
    public AdamScalars(double lr, double beta1, double beta2, double eps, double weightDecay, double step, double sqrtBc2)
    {
        Lr = lr; WeightDecay = weightDecay; Beta1D = beta1; Beta2D = beta2; EpsD = eps;
        StepD = step;
        SqrtBc2D = sqrtBc2;
        Beta1 = (float)beta1; OneMinusBeta1 = (float)(1 - beta1);
        Beta2 = (float)beta2; OneMinusBeta2 = (float)(1 - beta2);
        NegStep = (float)(-StepD); SqrtBc2 = (float)SqrtBc2D; InvSqrtBc2 = (float)(1 / SqrtBc2D); Eps = (float)eps;
        Decay = (float)(1 - lr * weightDecay);
    }
}

// The update kernels: the dense step, the moments-only step (k = 0) and the masked apply pass, over chunks in parallel,
// generic over where the weights live (float32, float32 master + bfloat16, bfloat16) and the gradient's dtype.
internal static unsafe partial class AdamKernels
{
    /// <summary>The entries per parallel chunk: a multiple of 8, so that no two chunks share a byte of the packed touched
    /// mask (a bit per entry: <see cref="TouchedBits"/>); every range a thread writes bits in starts a chunk or
    /// continues one on the same thread.</summary>
    const int Chunk = 1 << 16;
    /// <summary>A compile-time check that <see cref="Chunk"/> is a multiple of 8 (-1 does not convert to uint).</summary>
    const uint ChunkInWholeBytes = Chunk % 8 == 0 ? 0 : -1;

    /// <summary>The fused kernels apply: CPU, float32 or bfloat16 parameter and gradient (contiguous), float32 moments
    /// (and master).</summary>
    public static bool Eligible(in WeightTarget t, Tensor g, Tensor m, Tensor v)
    {
        var p = t.Param;
        return p.device_type == DeviceType.CPU && g.device_type == DeviceType.CPU
               && (p.dtype == ScalarType.Float32 || p.dtype == ScalarType.BFloat16)
               && (g.dtype == ScalarType.Float32 || g.dtype == ScalarType.BFloat16)
               && m.dtype == ScalarType.Float32 && v.dtype == ScalarType.Float32
               && p.is_contiguous() && g.is_contiguous() && m.is_contiguous() && v.is_contiguous()
               && (t.Master is null || (t.Master.dtype == ScalarType.Float32 && t.Master.is_contiguous() && t.Master.device_type == DeviceType.CPU))
               && p.numel() < int.MaxValue - 64 && g.numel() == p.numel();
    }

    public static float* Ptr(Tensor t) => (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
    public static byte* BytePtr(Tensor t) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    static void ForChunks(long n, Action<long, long> body)
    {
        long chunks = (n + Chunk - 1) / Chunk;
        if (chunks <= 1) { if (n > 0) body(0, n); return; }
        Parallel.For(0L, chunks, c => body(c * Chunk, Math.Min(n, (c + 1) * Chunk)));
    }

    /// <summary>Every entry updated: one fused pass.</summary>
    public static void Dense(in WeightTarget t, Tensor gt, Tensor mt, Tensor vt, AdamScalars s)
    {
        var body = new DenseBody((nint)Ptr(mt), (nint)Ptr(vt), t.Param.numel(), s);
        Dispatch(ref body, t, gt);
    }

    readonly struct DenseBody(nint m, nint v, long n, AdamScalars s) : IKernelBody
    {
        public void Run<TW, TG>(TW w, TG g) where TW : struct, IWeights where TG : struct, IGrad
        {
            nint mm = m, vv = v; var sc = s;
            ForChunks(n, (lo, hi) => DenseRange(w, g, (float*)mm, (float*)vv, lo, hi, sc));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DenseRange<TW, TG>(TW w, TG g, float* m, float* v, long lo, long hi, in AdamScalars s)
        where TW : struct, IWeights where TG : struct, IGrad
    {
        int W = Vector<float>.Count;
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        var ns = new Vector<float>(s.NegStep); var isb = new Vector<float>(s.InvSqrtBc2);
        var ep = new Vector<float>(s.Eps); var dc = new Vector<float>(s.Decay);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var gv = g.Load(i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            var denom = Vector.SquareRoot(vv) * isb + ep;
            var pv = w.Load(i) * dc;
            w.Store(i, pv + (ns * mv) / denom);
        }
        for (; i < hi; i++)
        {
            float gi = g.Load1(i);
            float mi = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            float vi = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            m[i] = mi; v[i] = vi;
            float denom = MathF.Sqrt(vi) * s.InvSqrtBc2 + s.Eps;
            w.Store1(i, w.Load1(i) * s.Decay + (s.NegStep * mi) / denom);
        }
    }

    /// <summary>k = 0: moments advance, weight decay applies, no entry gets the Adam update.</summary>
    public static void MomentsOnly(in WeightTarget t, Tensor gt, Tensor mt, Tensor vt, AdamScalars s)
    {
        var body = new MomentsOnlyBody((nint)Ptr(mt), (nint)Ptr(vt), t.Param.numel(), s);
        Dispatch(ref body, t, gt);
    }

    readonly struct MomentsOnlyBody(nint m, nint v, long n, AdamScalars s) : IKernelBody
    {
        public void Run<TW, TG>(TW w, TG g) where TW : struct, IWeights where TG : struct, IGrad
        {
            nint mm = m, vv = v; var sc = s;
            ForChunks(n, (lo, hi) =>
            {
                MomentsRange(g, (float*)mm, (float*)vv, lo, hi, sc, null, null);
                if (sc.Decay != 1f) DecayRange(w, lo, hi, sc.Decay);
            });
        }
    }

    static void DecayRange<TW>(TW w, long lo, long hi, float decay) where TW : struct, IWeights
    {
        int W = Vector<float>.Count;
        var dc = new Vector<float>(decay);
        long i = lo;
        for (; i + W <= hi; i += W) w.Store(i, w.Load(i) * dc);
        for (; i < hi; i++) w.Store1(i, w.Load1(i) * decay);
    }

    /// <summary>The moment pass; every 64th key (from <paramref name="key"/>: m, or a float32 g) into the sample.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MomentsRange<TG>(TG g, float* m, float* v, long lo, long hi, in AdamScalars s, uint* sample, uint* key) where TG : struct, IGrad
    {
        int W = Vector<float>.Count;
        var b1 = new Vector<float>(s.Beta1); var ob1 = new Vector<float>(s.OneMinusBeta1);
        var b2 = new Vector<float>(s.Beta2); var ob2 = new Vector<float>(s.OneMinusBeta2);
        long i = lo;
        for (; i + W <= hi; i += W)
        {
            var gv = g.Load(i);
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i) * b1 + gv * ob1;
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i) * b2 + (gv * ob2) * gv;
            Unsafe.WriteUnaligned(m + i, mv);
            Unsafe.WriteUnaligned(v + i, vv);
            if (sample != null && (i & 63) == 0) sample[i >> 6] = key[i] & 0x7FFFFFFFu;
        }
        for (; i < hi; i++)
        {
            float gi = g.Load1(i);
            m[i] = m[i] * s.Beta1 + gi * s.OneMinusBeta1;
            v[i] = v[i] * s.Beta2 + (gi * s.OneMinusBeta2) * gi;
            if (sample != null && (i & 63) == 0) sample[i >> 6] = key[i] & 0x7FFFFFFFu;
        }
    }

    /// <summary>The masked update: p·decay for every entry, plus the Adam step for the entries with key &gt; T, or key = T
    /// and index ≤ lastTie (an entry stored back unchanged stays: rounding leaves a bfloat16 value alone).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ApplyRange<TW>(TW w, float* m, float* v, uint* key, byte* touched, long lo, long hi, int T, int lastTie, in AdamScalars s, bool decayDone)
        where TW : struct, IWeights
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
            var pd = w.Load(i) * dc;
            var mv = Unsafe.ReadUnaligned<Vector<float>>(m + i);
            var vv = Unsafe.ReadUnaligned<Vector<float>>(v + i);
            var denom = Vector.SquareRoot(vv) * isb + ep;
            w.Store(i, Vector.ConditionalSelect(sel, pd + (ns * mv) / denom, pd));
            if (touched != null && sel != Vector<int>.Zero) SetBits(touched, i, MaskBits(sel));
        }
        for (; i < hi; i++)
        {
            int kx = (int)(key[i] & 0x7FFFFFFFu);
            bool selected = kx > T || (kx == T && i <= lastTie);
            float pd = w.Load1(i) * decay;
            if (selected)
            {
                float denom = MathF.Sqrt(v[i]) * s.InvSqrtBc2 + s.Eps;
                w.Store1(i, pd + (s.NegStep * m[i]) / denom);
                if (touched != null) SetBit(touched, i);
            }
            else w.Store1(i, pd);
        }
    }

    /// <summary>Sets the touched bit of entry i (bit i mod 8 of byte i / 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void SetBit(byte* touched, long i) => touched[i >> 3] |= (byte)(1 << (int)(i & 7));

    /// <summary>Reads the touched bit of entry i (0 or 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static byte GetBit(byte* touched, long i) => (byte)((touched[i >> 3] >> (int)(i & 7)) & 1);

    /// <summary>Clears the touched bit of entry i.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ClearBit(byte* touched, long i) => touched[i >> 3] &= (byte)~(1 << (int)(i & 7));

    /// <summary>Sets the touched bits of entries i + j for the set bits j of <paramref name="bits"/> (one vector, at most
    /// 16 lanes; i need not be a multiple of 8). Only the bytes holding entries i … i + 15 are written (and only where a
    /// bit is set), all inside the calling thread's chunk.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void SetBits(byte* touched, long i, uint bits)
    {
        ulong x = (ulong)bits << (int)(i & 7);
        byte* p = touched + (i >> 3);
        for (; x != 0; x >>= 8, p++)
        {
            byte b = (byte)x;
            if (b != 0) *p |= b;
        }
    }
}
