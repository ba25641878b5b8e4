using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>How an optimizer keeps its moment tensors between steps.</summary>
public enum MomentStorage
{
    /// <summary>float32 moments (4 bytes per entry and moment).</summary>
    Float32,
    /// <summary>Blockwise 8-bit moments (<see cref="QuantizedMoment"/>): a byte per entry and a float32 scale per block of
    /// <see cref="DynamicCode.BlockSize"/> entries, ≈ 1.002 bytes per entry and moment.</summary>
    Blockwise8Bit,
}

/// <summary>
/// The 8-bit code of quantized moments: 256 values in [−1, 1] (signed, for m) or [0, 1] (unsigned, for v), dense near
/// 1 and spread over seven decades toward 0 — the "dynamic" code of the 8-bit optimizers literature (Dettmers et al.,
/// 8-bit optimizers via block-wise quantization, 2022). Decade d = 0…6 covers magnitudes 10^(d−6)·[0.1, 1] with 2^d
/// values (the unsigned code, which needs no sign, 2^(d+1)), each the middle of an equal slice of [0.1, 1]; then 1 and 0.
/// The signed code holds 128 positive values and the 127 largest of their negatives (−1 included), and 0.
/// A block's entries are divided by its largest |x| (its scale) and each takes the code value nearest to the quotient:
/// the number of midpoints between consecutive values (float32) below the quotient. The values and midpoints are float32
/// constants, so every path (the CPU kernel, the ops on any device) finds the same code.
/// </summary>
public static class DynamicCode
{
    /// <summary>Entries per block (one float32 scale each).</summary>
    public const int BlockSize = 2048;

    /// <summary>The signed code's 256 values, ascending (m).</summary>
    public static IReadOnlyList<float> Signed => SignedTable.Values;
    /// <summary>The unsigned code's 256 values, ascending (v).</summary>
    public static IReadOnlyList<float> Unsigned => UnsignedTable.Values;

    internal static readonly Table SignedTable = new(Build(signed: true));
    internal static readonly Table UnsignedTable = new(Build(signed: false));

    internal static Table For(bool signed) => signed ? SignedTable : UnsignedTable;

    static float[] Build(bool signed)
    {
        var positive = new List<double>();
        for (int d = 0; d <= 6; d++)
        {
            int items = signed ? 1 << d : 1 << (d + 1);
            double scale = Math.Pow(10, d - 6);
            for (int j = 0; j < items; j++) positive.Add(scale * (0.1 + 0.9 * (j + 0.5) / items));
        }
        positive.Add(1.0);
        var values = new List<double>(positive) { 0.0 };
        if (signed) values.AddRange(positive.Skip(1).Select(x => -x)); // −1 kept, the smallest negative left out
        var sorted = values.Select(x => (float)x).OrderBy(x => x).ToArray();
        if (sorted.Length != 256 || sorted.Distinct().Count() != 256)
            throw new InvalidOperationException($"the {(signed ? "signed" : "unsigned")} dynamic code has {sorted.Length} values ({sorted.Distinct().Count()} distinct); it needs 256");
        return sorted;
    }

    /// <summary>A code's values, the midpoints between them, and a table from the top 16 bits of a float32 quotient to the
    /// first code its value can take (the kernel then steps past the midpoints below the quotient).</summary>
    internal sealed class Table
    {
        public Table(float[] values)
        {
            Values = values;
            Midpoints = new float[255];
            for (int i = 0; i < 255; i++) Midpoints[i] = (float)(((double)values[i] + values[i + 1]) / 2);
            Zero = (byte)Array.IndexOf(values, 0f);
            Start = new byte[65536];
            for (int top = 0; top < 65536; top++)
            {
                // the smallest float32 with these top bits: low bits 0 for a positive pattern, 0xFFFF for a negative one
                uint bits = ((uint)top << 16) | (top >= 0x8000 ? 0xFFFFu : 0u);
                float lo = BitConverter.UInt32BitsToSingle(bits);
                int c = 0;
                if (float.IsNaN(lo)) c = 0;
                else while (c < 255 && Midpoints[c] < lo) c++;
                Start[top] = (byte)c;
            }
        }

        public float[] Values { get; }
        public float[] Midpoints { get; }
        public byte[] Start { get; }
        /// <summary>The code of 0 (an all-zero block, and a fresh state).</summary>
        public byte Zero { get; }

        /// <summary>The code of a quotient q in [−1, 1]: the number of midpoints below q.</summary>
        public byte Encode(float q)
        {
            int c = Start[BitConverter.SingleToUInt32Bits(q) >> 16];
            var mid = Midpoints;
            while (c < 255 && mid[c] < q) c++;
            return (byte)c;
        }
    }
}

/// <summary>
/// One moment tensor kept in 8 bits: a code per entry (<see cref="DynamicCode"/>) and a float32 scale, the block's
/// largest |x|, per block of <see cref="DynamicCode.BlockSize"/> entries (flat order; the last block may be short).
/// An optimizer step dequantizes the moment of the block it steps into a float32 working copy, runs its float32 step on
/// it, and quantizes the result back (<see cref="BlockOptimizer.MomentStorage"/>). On the CPU a C# kernel runs; elsewhere
/// the same arithmetic as tensor ops, over slices of <see cref="OpsSlice"/> entries so that their temporaries stay
/// small; both give the same codes and scales, bit for bit.
/// </summary>
public sealed class QuantizedMoment : IDisposable
{
    QuantizedMoment(Tensor codes, Tensor scales, bool signed, long numel)
    {
        Codes = codes; Scales = scales; Signed = signed; Numel = numel;
    }

    /// <summary>Entries per slice of the ops path (a multiple of the block size).</summary>
    public const long OpsSlice = 512L * DynamicCode.BlockSize;

    /// <summary>A code per entry (uint8, flat).</summary>
    public Tensor Codes { get; }
    /// <summary>A float32 scale per block.</summary>
    public Tensor Scales { get; }
    /// <summary>Whether the code is the signed one (m) or the unsigned one (v).</summary>
    public bool Signed { get; }
    public long Numel { get; }

    /// <summary>The number of blocks of <paramref name="numel"/> entries.</summary>
    public static long Blocks(long numel) => (numel + DynamicCode.BlockSize - 1) / DynamicCode.BlockSize;

    /// <summary>The bytes a moment of <paramref name="numel"/> entries takes.</summary>
    public static long Bytes(long numel) => numel + 4 * Blocks(numel);

    /// <summary>A moment of zeros on <paramref name="device"/>.</summary>
    public static QuantizedMoment Zeros(long numel, bool signed, Device device)
    {
        var codes = full(new[] { numel }, (long)DynamicCode.For(signed).Zero, ScalarType.Byte, device).DetachFromDisposeScope();
        var scales = zeros(new[] { Blocks(numel) }, ScalarType.Float32, device).DetachFromDisposeScope();
        return new QuantizedMoment(codes, scales, signed, numel);
    }

    /// <summary>The codes as saved (checked against the moment's size; copied at once, so that a state streamed one
    /// tensor at a time may free it).</summary>
    public void LoadCodes(Tensor codes, string key)
    {
        if (codes.dtype != ScalarType.Byte || codes.numel() != Numel)
            throw new ArgumentException($"optimizer state: {key}.codes has {codes.numel()} {codes.dtype} entries; the moment needs {Numel} Byte", nameof(codes));
        using var noGrad = no_grad();
        Codes.copy_(codes.reshape(Numel));
    }

    /// <summary>The scales as saved (checked against the moment's number of blocks).</summary>
    public void LoadScales(Tensor scales, string key)
    {
        if (scales.dtype != ScalarType.Float32 || scales.numel() != Blocks(Numel))
            throw new ArgumentException($"optimizer state: {key}.scales has {scales.numel()} {scales.dtype} entries; the moment needs {Blocks(Numel)} Float32 (one per block of {DynamicCode.BlockSize})", nameof(scales));
        using var noGrad = no_grad();
        Scales.copy_(scales.reshape(Blocks(Numel)));
    }

    static bool OnCpu(Tensor t) => t.device_type == DeviceType.CPU;

    /// <summary>Quantizes <paramref name="x"/> (float32, <see cref="Numel"/> entries) into this moment.</summary>
    public void Quantize(Tensor x)
    {
        if (x.numel() != Numel) throw new ArgumentException($"quantize: {x.numel()} entries into a moment of {Numel}", nameof(x));
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var src = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        if (OnCpu(src) && OnCpu(Codes) && src.is_contiguous()) QuantizeCpu(src.contiguous());
        else QuantizeOps(src.reshape(Numel));
    }

    /// <summary>The moment as a new float32 tensor of <paramref name="shape"/> on the moment's device.</summary>
    public Tensor Dequantize(long[] shape)
    {
        using var noGrad = no_grad();
        var dst = empty(shape, ScalarType.Float32, Codes.device);
        if (OnCpu(dst)) DequantizeCpu(dst);
        else DequantizeOps(dst.view(Numel));
        return dst;
    }

    // ---------------------------------------------------------------- the CPU kernel

    const long BlocksPerTask = 64;

    unsafe void QuantizeCpu(Tensor x)
    {
        var table = DynamicCode.For(Signed);
        float* xs = AdamKernels.Ptr(x);
        byte* cs = AdamKernels.BytePtr(Codes);
        float* ss = AdamKernels.Ptr(Scales);
        long n = Numel, blocks = Blocks(n);
        ForBlocks(blocks, (b0, b1) =>
        {
            for (long b = b0; b < b1; b++)
            {
                long lo = b * DynamicCode.BlockSize, hi = Math.Min(n, lo + DynamicCode.BlockSize);
                float absmax = 0;
                for (long i = lo; i < hi; i++) absmax = MathF.Max(absmax, MathF.Abs(xs[i]));
                ss[b] = absmax;
                if (absmax == 0) { new Span<byte>(cs + lo, (int)(hi - lo)).Fill(table.Zero); continue; }
                for (long i = lo; i < hi; i++) cs[i] = table.Encode(xs[i] / absmax);
            }
        });
    }

    unsafe void DequantizeCpu(Tensor dst)
    {
        var values = DynamicCode.For(Signed).Values;
        float* d = AdamKernels.Ptr(dst);
        byte* cs = AdamKernels.BytePtr(Codes);
        float* ss = AdamKernels.Ptr(Scales);
        long n = Numel;
        ForBlocks(Blocks(n), (b0, b1) =>
        {
            for (long b = b0; b < b1; b++)
            {
                long lo = b * DynamicCode.BlockSize, hi = Math.Min(n, lo + DynamicCode.BlockSize);
                float s = ss[b];
                for (long i = lo; i < hi; i++) d[i] = values[cs[i]] * s;
            }
        });
    }

    static void ForBlocks(long blocks, Action<long, long> body)
    {
        long tasks = (blocks + BlocksPerTask - 1) / BlocksPerTask;
        if (tasks <= 1) { if (blocks > 0) body(0, blocks); return; }
        Parallel.For(0L, tasks, t => body(t * BlocksPerTask, Math.Min(blocks, (t + 1) * BlocksPerTask)));
    }

    // ---------------------------------------------------------------- the ops path (CUDA, and the kernel's oracle)

    void QuantizeOps(Tensor flat)
    {
        var table = DynamicCode.For(Signed);
        using var mid = tensor(table.Midpoints, ScalarType.Float32).to(flat.device);
        int B = DynamicCode.BlockSize;
        for (long off = 0; off < Numel; off += OpsSlice)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(OpsSlice, Numel - off), nb = Blocks(len), padded = nb * B;
            var x = flat.narrow(0, off, len);
            var xb = (padded == len ? x : nn.functional.pad(x, new[] { 0L, padded - len })).view(nb, B);
            var absmax = xb.abs().amax(new[] { 1L });
            var safe = where(absmax.eq(0), ones_like(absmax), absmax);
            var q = xb.div(safe.unsqueeze(1)).view(padded).narrow(0, 0, len);
            var codes = searchsorted(mid, q, out_int32: true);
            Codes.narrow(0, off, len).copy_(codes);
            Scales.narrow(0, off / B, nb).copy_(absmax);
        }
    }

    void DequantizeOps(Tensor dst)
    {
        using var values = tensor(DynamicCode.For(Signed).Values, ScalarType.Float32).to(dst.device);
        int B = DynamicCode.BlockSize;
        for (long off = 0; off < Numel; off += OpsSlice)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(OpsSlice, Numel - off), nb = Blocks(len);
            var v = values.index_select(0, Codes.narrow(0, off, len).to(ScalarType.Int32));
            var s = Scales.narrow(0, off / B, nb).repeat_interleave(B).narrow(0, 0, len);
            dst.narrow(0, off, len).copy_(v.mul_(s));
        }
    }

    /// <summary>Quantizes by the ops path on any device (the CPU kernel's oracle in tests).</summary>
    public void QuantizeWithOps(Tensor x) { using var noGrad = no_grad(); using var scope = NewDisposeScope(); QuantizeOps(x.to(ScalarType.Float32).reshape(Numel)); }

    /// <summary>Dequantizes by the ops path on any device, flat (the CPU kernel's oracle in tests).</summary>
    public Tensor DequantizeWithOps()
    {
        using var noGrad = no_grad();
        var dst = empty(new[] { Numel }, ScalarType.Float32, Codes.device);
        DequantizeOps(dst);
        return dst;
    }

    public void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
    }
}
