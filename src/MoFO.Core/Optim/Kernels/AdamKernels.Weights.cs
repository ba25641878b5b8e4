using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>
/// Where a block's weights live and how a float32 result is written back: float32 in place; a float32 master with
/// its bfloat16 copy (rounded to nearest); or bfloat16 rounded stochastically or to nearest. The kernels are generic
/// over it (a struct: the JIT compiles one specialization each), and compute every update in float32.
/// </summary>
internal interface IWeights
{
    /// <summary>Storing rounds (bfloat16 without a master): a value stored and updated later would be rounded twice,
    /// so the speculative kernel keeps the weight untouched until its final value is known.</summary>
    static abstract bool Rounds { get; }
    Vector<float> Load(long i);
    float Load1(long i);
    void Store(long i, Vector<float> x);
    void Store1(long i, float x);
    void Prefetch(long i);
}

/// <summary>Where a block's gradient lives (float32 or bfloat16); loads give float32.</summary>
internal interface IGrad
{
    Vector<float> Load(long i);
    float Load1(long i);
}

internal readonly unsafe struct F32Weights(float* p) : IWeights
{
    public static bool Rounds => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Unsafe.ReadUnaligned<Vector<float>>(p + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => p[i];
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(long i, Vector<float> x) => Unsafe.WriteUnaligned(p + i, x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store1(long i, float x) => p[i] = x;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(long i) { if (Sse.IsSupported) Sse.Prefetch0(p + i); }
}

/// <summary>The float32 master takes the step; the bfloat16 parameter is written as its nearest value.</summary>
internal readonly unsafe struct MasterWeights(float* master, ushort* p) : IWeights
{
    public static bool Rounds => false;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Unsafe.ReadUnaligned<Vector<float>>(master + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => master[i];
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(long i, Vector<float> x) { Unsafe.WriteUnaligned(master + i, x); Bf16.StoreNearest(p + i, x); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store1(long i, float x) { master[i] = x; p[i] = BFloat16Rounding.Nearest(x); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(long i) { if (Sse.IsSupported) { Sse.Prefetch0(master + i); Sse.Prefetch0(p + i); } }
}

internal readonly unsafe struct NearestBf16(ushort* p) : IWeights
{
    public static bool Rounds => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Bf16.Load(p + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => BFloat16Rounding.ToSingle(p[i]);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(long i, Vector<float> x) => Bf16.StoreNearest(p + i, x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store1(long i, float x) => p[i] = BFloat16Rounding.Nearest(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(long i) { if (Sse.IsSupported) Sse.Prefetch0(p + i); }
}

/// <summary>Stochastic rounding with the counter-based bits of <see cref="BFloat16Rounding.Random16"/>(key, i).</summary>
internal readonly unsafe struct StochasticBf16(ushort* p, uint key) : IWeights
{
    public static bool Rounds => true;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Bf16.Load(p + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => BFloat16Rounding.ToSingle(p[i]);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(long i, Vector<float> x) => Bf16.StoreStochastic(p + i, x, Bf16.Random16(key, i));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store1(long i, float x) => p[i] = BFloat16Rounding.Stochastic(x, BFloat16Rounding.Random16(key, i));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(long i) { if (Sse.IsSupported) Sse.Prefetch0(p + i); }
}

internal readonly unsafe struct F32Grad(float* g) : IGrad
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Unsafe.ReadUnaligned<Vector<float>>(g + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => g[i];
}

internal readonly unsafe struct Bf16Grad(ushort* g) : IGrad
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector<float> Load(long i) => Bf16.Load(g + i);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Load1(long i) => BFloat16Rounding.ToSingle(g[i]);
}

/// <summary>bfloat16 ↔ float32 over <see cref="Vector{T}"/> (bfloat16 is the upper half of a float32).</summary>
internal static unsafe class Bf16
{
    static readonly Vector<uint> Iota = MakeIota();

    static Vector<uint> MakeIota()
    {
        Span<uint> s = stackalloc uint[Vector<uint>.Count];
        for (int j = 0; j < s.Length; j++) s[j] = (uint)j;
        return new Vector<uint>(s);
    }

    /// <summary>W bfloat16 values at p as float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Load(ushort* p)
    {
        if (Vector<float>.Count == 8)
        {
            Vector256<uint> w = Avx2.IsSupported ? Avx2.ConvertToVector256Int32(Vector128.Load(p)).AsUInt32()
                                                 : Vector256.WidenLower(Vector128.Load(p).ToVector256Unsafe());
            return Vector256.ShiftLeft(w, 16).AsSingle().AsVector();
        }
        if (Vector<float>.Count == 16)
        {
            var w = Vector512.WidenLower(Vector256.Load(p).ToVector512Unsafe());
            return Vector512.ShiftLeft(w, 16).AsSingle().AsVector();
        }
        Span<float> s = stackalloc float[Vector<float>.Count];
        for (int j = 0; j < s.Length; j++) s[j] = BFloat16Rounding.ToSingle(p[j]);
        return new Vector<float>(s);
    }

    /// <summary>Stores the upper halves of W float32 patterns (already rounded) at p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreUpper(ushort* p, Vector<uint> bits)
    {
        var hi = Vector.ShiftRightLogical(bits, 16);
        if (Vector<float>.Count == 8)
        {
            var v = hi.AsVector256();
            Vector128<ushort> n = Avx512F.VL.IsSupported ? Avx512F.VL.ConvertToVector128UInt16(v) : Vector256.Narrow(v, v).GetLower();
            n.Store(p);
            return;
        }
        if (Vector<float>.Count == 16)
        {
            var v = hi.AsVector512();
            Vector512.Narrow(v, v).GetLower().Store(p);
            return;
        }
        for (int j = 0; j < Vector<uint>.Count; j++) p[j] = (ushort)hi[j];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<uint> Hash(Vector<uint> x)
    {
        x ^= Vector.ShiftRightLogical(x, 16); x *= new Vector<uint>(BFloat16Rounding.HashC1);
        x ^= Vector.ShiftRightLogical(x, 15); x *= new Vector<uint>(BFloat16Rounding.HashC2);
        x ^= Vector.ShiftRightLogical(x, 16);
        return x;
    }

    /// <summary><see cref="BFloat16Rounding.Random16"/> of the W entries i, i + 1, …</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<uint> Random16(uint key, long i)
        => Vector.ShiftRightLogical(Hash((new Vector<uint>((uint)i) + Iota) ^ new Vector<uint>(key)), 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreStochastic(ushort* p, Vector<float> x, Vector<uint> r)
    {
        var bits = Vector.AsVectorUInt32(x);
        var abs = Vector.AsVectorInt32(bits & new Vector<uint>(0x7FFFFFFFu));
        var special = Vector.AsVectorUInt32(Vector.GreaterThanOrEqual(abs, new Vector<int>(0x7F800000)));
        var nan = Vector.AsVectorUInt32(Vector.GreaterThan(abs, new Vector<int>(0x7F800000)));
        var y = bits + Vector.AndNot(r, special);
        StoreUpper(p, Vector.ConditionalSelect(nan, new Vector<uint>(0x7FC00000u), y));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreNearest(ushort* p, Vector<float> x)
    {
        var bits = Vector.AsVectorUInt32(x);
        var abs = Vector.AsVectorInt32(bits & new Vector<uint>(0x7FFFFFFFu));
        var nan = Vector.AsVectorUInt32(Vector.GreaterThan(abs, new Vector<int>(0x7F800000)));
        var y = bits + new Vector<uint>(0x7FFFu) + (Vector.ShiftRightLogical(bits, 16) & Vector<uint>.One);
        StoreUpper(p, Vector.ConditionalSelect(nan, new Vector<uint>(0x7FC00000u), y));
    }
}

/// <summary>A kernel body generic over the weights and the gradient (what <see cref="AdamKernels.Dispatch"/> calls).</summary>
internal interface IKernelBody
{
    void Run<TW, TG>(TW w, TG g) where TW : struct, IWeights where TG : struct, IGrad;
}

/// <summary>The parameter of one block step as the kernels and the ops route see it.</summary>
internal readonly struct WeightTarget(Tensor param, Tensor? master, BFloat16Update mode, uint key)
{
    public Tensor Param { get; } = param;
    /// <summary>The float32 master (bfloat16 parameters with <see cref="BFloat16Update.MasterWeights"/>).</summary>
    public Tensor? Master { get; } = master;
    public BFloat16Update Mode { get; } = mode;
    /// <summary>The stochastic-rounding key of this block and step.</summary>
    public uint Key { get; } = key;
    public bool IsBFloat16 => Param.dtype == ScalarType.BFloat16;

    /// <summary>The float32 tensor the ops route updates: the master, the parameter itself (not bfloat16), or a float32
    /// copy of a bfloat16 parameter (a temporary of the caller's dispose scope).</summary>
    public Tensor Working() => Master ?? (IsBFloat16 ? Param.to(ScalarType.Float32) : Param);

    /// <summary>Writes the working tensor back into a bfloat16 parameter (a no-op otherwise).</summary>
    public void WriteBack(Tensor working)
    {
        if (!IsBFloat16) return;
        if (Master is not null || Mode == BFloat16Update.Nearest) Param.copy_(working);
        else BFloat16Rounding.StochasticInto(Param, working, Key);
    }
}

internal static unsafe partial class AdamKernels
{
    public static ushort* U16Ptr(Tensor t) => (ushort*)BytePtr(t);

    /// <summary>Runs body with the weights of the target and the gradient g, each as its struct.</summary>
    public static void Dispatch<TBody>(ref TBody body, in WeightTarget t, Tensor g) where TBody : struct, IKernelBody
    {
        if (g.dtype == ScalarType.Float32) DispatchWeights(ref body, t, new F32Grad(Ptr(g)));
        else DispatchWeights(ref body, t, new Bf16Grad(U16Ptr(g)));
    }

    static void DispatchWeights<TBody, TG>(ref TBody body, in WeightTarget t, TG g) where TBody : struct, IKernelBody where TG : struct, IGrad
    {
        var p = t.Param;
        if (!t.IsBFloat16) body.Run(new F32Weights(Ptr(p)), g);
        else if (t.Master is not null) body.Run(new MasterWeights(Ptr(t.Master), U16Ptr(p)), g);
        else if (t.Mode == BFloat16Update.Nearest) body.Run(new NearestBf16(U16Ptr(p)), g);
        else body.Run(new StochasticBf16(U16Ptr(p), t.Key), g);
    }
}
