using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>
/// How a bfloat16 parameter takes its step. The update is always computed in float32 (from the bfloat16 weight, or
/// from the float32 master) with float32 moments; this decides how the result gets back into the bfloat16 tensor.
/// Float32 (and other) parameters ignore it.
/// </summary>
public enum BFloat16Update
{
    /// <summary>
    /// The default: the float32 result is rounded to one of its two neighbouring bfloat16 values, up with probability
    /// equal to its position between them, so that updates smaller than half a bfloat16 ulp move the weight on average
    /// by the right amount. The random bits are a counter-based hash of (seed, step, block, index): no state, the same
    /// on every path and for every chunking (see <see cref="BFloat16Rounding"/>).
    /// </summary>
    StochasticRounding,
    /// <summary>
    /// A float32 copy of each bfloat16 parameter (its master) is kept in the optimizer state (saved and loaded with it)
    /// and takes the float32 step; the bfloat16 parameter is the master rounded to nearest after each step (4 more bytes
    /// per entry). The first step (or a load without masters) starts the master from the bfloat16 weight.
    /// </summary>
    MasterWeights,
    /// <summary>Plain round-to-nearest-even (updates below half an ulp are lost): for comparisons.</summary>
    Nearest,
}

/// <summary>
/// The float32 → bfloat16 roundings of the optimizers, and the counter-based random numbers of stochastic rounding.
/// bfloat16 is the upper half of a float32: stochastic rounding adds 16 random bits r ∈ [0, 2¹⁶) to the lower half of
/// the float32 pattern and truncates, so it rounds up (away from zero) exactly when lower + r ≥ 2¹⁶, with probability
/// lower / 2¹⁶ — the fractional position between the two neighbours; a value that bfloat16 represents is unchanged.
/// Infinities stay, NaN becomes the quiet NaN 0x7FC0 (as libtorch's conversion does). The r of entry i of block b in its
/// step t is the upper 16 bits of lowbias32(i ⊕ key(seed, t, b)), lowbias32 being Wellons' 32-bit integer hash.
/// </summary>
public static class BFloat16Rounding
{
    /// <summary>The per-(seed, step, block) key of the hash (SplitMix64 over the three, upper 32 bits).</summary>
    public static uint StepKey(long seed, long step, int block)
    {
        ulong z = SplitMix((ulong)seed);
        z = SplitMix(z ^ (ulong)step);
        z = SplitMix(z ^ (ulong)(uint)block);
        return (uint)(z >> 32);
    }

    static ulong SplitMix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    internal const uint HashC1 = 0x7feb352d, HashC2 = 0x846ca68b;

    /// <summary>lowbias32 (C. Wellons): a bijective 32-bit integer hash.</summary>
    public static uint Hash(uint x)
    {
        x ^= x >> 16; x *= HashC1;
        x ^= x >> 15; x *= HashC2;
        x ^= x >> 16;
        return x;
    }

    /// <summary>The 16 random bits of entry <paramref name="index"/> under a step key.</summary>
    public static uint Random16(uint key, long index) => Hash((uint)index ^ key) >> 16;

    /// <summary>Round to nearest, ties to even (libtorch's float → bfloat16 conversion).</summary>
    public static ushort Nearest(float x)
    {
        uint b = BitConverter.SingleToUInt32Bits(x);
        if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
        return (ushort)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }

    /// <summary>Stochastic rounding with the given 16 random bits (only the low 16 bits of r are used).</summary>
    public static ushort Stochastic(float x, uint r)
    {
        uint b = BitConverter.SingleToUInt32Bits(x);
        uint a = b & 0x7FFFFFFFu;
        if (a > 0x7F800000u) return 0x7FC0;
        if (a == 0x7F800000u) return (ushort)(b >> 16);
        return (ushort)((b + (r & 0xFFFFu)) >> 16);
    }

    /// <summary>The float32 value of a bfloat16 bit pattern.</summary>
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>
    /// Stochastic rounding as TorchSharp ops (any device): x (float32) → a new bfloat16 tensor; entry i (flat,
    /// row-major) uses <see cref="Random16"/>(key, i). Bit-identical to <see cref="Stochastic(float, uint)"/>.
    /// </summary>
    public static Tensor Stochastic(Tensor x, uint key)
    {
        var dst = empty(x.shape, ScalarType.BFloat16, x.device);
        StochasticInto(dst, x, key);
        return dst;
    }

    const long OpsChunk = 1L << 22; // the ops route works on slices, so its temporaries stay small on large blocks

    /// <summary>Writes the stochastic rounding of x (float32) into dst (bfloat16, same shape).</summary>
    public static void StochasticInto(Tensor dst, Tensor x, uint key)
    {
        if (dst.dtype != ScalarType.BFloat16 || x.dtype != ScalarType.Float32)
            throw new ArgumentException($"stochastic rounding goes from float32 to bfloat16 (got {x.dtype} → {dst.dtype})", nameof(dst));
        if (!dst.shape.SequenceEqual(x.shape))
            throw new ArgumentException($"stochastic rounding: shapes differ ([{string.Join(",", x.shape)}] → [{string.Join(",", dst.shape)}])", nameof(dst));
        using var noGrad = no_grad();
        if (!dst.is_contiguous()) { using var tmp = Stochastic(x, key); dst.copy_(tmp); return; }
        using var flatX = x.reshape(-1);
        using var flatD = dst.view(-1);
        long n = flatX.numel();
        for (long a = 0; a < n; a += OpsChunk)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(OpsChunk, n - a);
            flatD.narrow(0, a, len).copy_(StochasticSlice(flatX.narrow(0, a, len), a, key));
        }
    }

    /// <summary>
    /// One slice: with a = |x|, lo and hi its bfloat16 neighbours toward and away from zero (from the nearest value and
    /// nextafter), the lower 16 bits of a's pattern are (a − lo)/(hi − lo)·2¹⁶ (exact: hi − lo is a power of two); the
    /// result is hi when that plus r reaches 2¹⁶, else lo, with x's sign. Non-finite x passes through.
    /// </summary>
    static Tensor StochasticSlice(Tensor x, long start, uint key)
    {
        var dev = x.device;
        // 2^120: the ulp of bfloat16's last binade (stands in for hi − lo when hi is the infinity above the largest value)
        using Scalar two16 = 65536.0.ToScalar(), lastUlp = Math.ScaleB(1.0, 120).ToScalar(), infS = double.PositiveInfinity.ToScalar();
        var zero = zeros(Array.Empty<long>(), ScalarType.BFloat16, dev);
        var inf = full(Array.Empty<long>(), infS, ScalarType.BFloat16, dev);
        var a = x.abs();
        var yb = a.to(ScalarType.BFloat16);                 // the nearest neighbour
        var y = yb.to(ScalarType.Float32);
        var over = y.gt(a);                                  // it lies away from zero: it is hi, the one below is lo
        var lo = where(over, yb.nextafter(zero).to(ScalarType.Float32), y);
        var hi = where(over, y, yb.nextafter(inf).to(ScalarType.Float32));
        var ulp = hi.sub(lo).masked_fill_(hi.isinf(), lastUlp);
        var lower = a.sub(lo).div_(ulp).mul_(two16);         // the lower 16 bits of a's pattern, exactly
        var up = lower.add_(Random16Ops(start, x.numel(), key, dev).to(ScalarType.Float32)).ge(two16);
        var res = where(up, hi, lo).copysign_(x);
        return where(x.isfinite(), res, x);
    }

    /// <summary><see cref="Random16"/> for the entries start … start + count − 1, as int32 ops (wrapping products).</summary>
    static Tensor Random16Ops(long start, long count, uint key, Device dev)
    {
        using Scalar s0 = start.ToScalar(), s1 = (start + count).ToScalar();
        var x = start + count <= int.MaxValue ? arange(s0, s1, ScalarType.Int32, dev)
                                              : arange(s0, s1, ScalarType.Int64, dev).to(ScalarType.Int32);
        Tensor I32(uint c) => tensor((long)unchecked((int)c), ScalarType.Int32, dev);
        var k = I32(key);
        var c1 = I32(HashC1); var c2 = I32(HashC2);
        var sh15 = I32(15); var sh16 = I32(16);
        var m17 = I32(0x1FFFF); var m16 = I32(0xFFFF);
        // a logical right shift: the arithmetic one, then the sign-extended bits cleared
        x.bitwise_xor_(k);
        x.bitwise_xor_(x.bitwise_right_shift(sh16).bitwise_and_(m16)); x.mul_(c1);
        x.bitwise_xor_(x.bitwise_right_shift(sh15).bitwise_and_(m17)); x.mul_(c2);
        x.bitwise_xor_(x.bitwise_right_shift(sh16).bitwise_and_(m16));
        return x.bitwise_right_shift(sh16).bitwise_and_(m16);
    }
}
