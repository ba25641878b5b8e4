using System.Numerics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>
/// The touched mask of a block (<see cref="Block.Touched"/>) as one bit per entry: a flat uint8 tensor of ⌈numel/8⌉
/// bytes, bit j of byte i (little-endian bit order: value 1 &lt;&lt; j) for the flat entry 8i + j. The bits past numel in
/// the last byte stay 0, so that a popcount of the bytes is the number of entries ever updated.
/// </summary>
public static class TouchedBits
{
    /// <summary>The bytes of the packed mask of <paramref name="numel"/> entries: ⌈numel/8⌉.</summary>
    public static long Bytes(long numel) => (numel + 7) / 8;

    /// <summary>A cleared packed mask for <paramref name="numel"/> entries on <paramref name="device"/>.</summary>
    public static Tensor Zeros(long numel, Device device) => zeros(Bytes(numel), ScalarType.Byte, device);

    /// <summary>The bit pattern of the last byte's entries (0xFF when numel is a multiple of 8).</summary>
    static byte LastByteMask(long numel) => (numel & 7) == 0 ? (byte)0xFF : (byte)((1 << (int)(numel & 7)) - 1);

    /// <summary>Every entry touched: 0xFF in the full bytes, the low numel mod 8 bits of a partial last byte.</summary>
    public static void SetAll(Tensor touched, long numel)
    {
        long nb = Bytes(numel);
        if (nb == 0) return;
        using Scalar all = 255L.ToScalar(), last = ((long)LastByteMask(numel)).ToScalar();
        touched.fill_(all);
        if ((numel & 7) != 0)
        {
            using var tail = touched.narrow(0, nb - 1, 1);
            tail.fill_(last);
        }
    }

    /// <summary>Packs a mask (any shape and dtype; nonzero = touched) of numel entries into ⌈numel/8⌉ bytes on its
    /// device, with tensor ops: padded to a multiple of 8, viewed [n/8, 8], weighted by 1, 2, …, 128 and summed.</summary>
    public static Tensor Pack(Tensor mask)
    {
        using var scope = NewDisposeScope();
        long n = mask.numel(), nb = Bytes(n);
        var flat = (mask.dtype == ScalarType.Bool ? mask : mask.ne(Scalars.ZeroL)).reshape(-1).to(ScalarType.Byte);
        var padded = zeros(nb * 8, ScalarType.Byte, mask.device);
        if (n > 0) padded.narrow(0, 0, n).copy_(flat);
        using var weights = tensor(new byte[] { 1, 2, 4, 8, 16, 32, 64, 128 }, device: mask.device);
        // the bits are disjoint, so the sum of the weighted bits is their OR and never exceeds 255
        var packed = padded.view(nb, 8).mul_(weights).sum(new long[] { 1 }, false, ScalarType.Byte);
        return packed.MoveToOuterDisposeScope();
    }

    /// <summary>Marks the entries of <paramref name="mask"/> (null: every entry) as touched.</summary>
    public static void Or(Tensor touched, Tensor? mask, long numel)
    {
        if (mask is null) { SetAll(touched, numel); return; }
        if (mask.numel() != numel)
            throw new ArgumentException($"touched mask: the step's mask has {mask.numel()} entries, the block {numel}", nameof(mask));
        using var packed = Pack(mask);
        touched.bitwise_or_(packed);
    }

    /// <summary>The number of set bits (exact): a popcount over the bytes on the CPU, a 256-entry table elsewhere.</summary>
    public static long Count(Tensor touched)
    {
        if (touched.numel() == 0) return 0;
        if (touched.device_type == DeviceType.CPU && touched.is_contiguous() && touched.dtype == ScalarType.Byte)
        {
            ReadOnlySpan<byte> bytes = touched.bytes;
            var words = MemoryMarshal.Cast<byte, ulong>(bytes);
            long c = 0;
            foreach (var w in words) c += BitOperations.PopCount(w);
            for (int i = words.Length * 8; i < bytes.Length; i++) c += BitOperations.PopCount(bytes[i]);
            return c;
        }
        using var scope = NewDisposeScope();
        var table = tensor(Enumerable.Range(0, 256).Select(b => (long)BitOperations.PopCount((uint)b)).ToArray(), device: touched.device);
        using var s = table.index_select(0, touched.reshape(-1).to(ScalarType.Int64)).sum();
        return s.item<long>();
    }

    /// <summary>The mask unpacked: a flat bool tensor of <paramref name="numel"/> entries on the packed mask's device.</summary>
    public static Tensor Unpack(Tensor touched, long numel)
    {
        using var scope = NewDisposeScope();
        using var weights = tensor(new byte[] { 1, 2, 4, 8, 16, 32, 64, 128 }, device: touched.device);
        var bits = touched.reshape(-1, 1).bitwise_and(weights).ne(Scalars.ZeroL).reshape(-1).narrow(0, 0, numel);
        return bits.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>Clears the bits past numel in the last byte.</summary>
    static void ClearTail(Tensor touched, long numel)
    {
        if ((numel & 7) == 0 || numel == 0) return;
        using var keep = tensor(new[] { LastByteMask(numel) }, device: touched.device);
        using var tail = touched.narrow(0, Bytes(numel) - 1, 1);
        tail.bitwise_and_(keep);
    }

    /// <summary>
    /// Restores a saved touched mask into <paramref name="touched"/>: the packed form (⌈numel/8⌉ bytes) as it is (bits
    /// past numel cleared), or the byte-per-entry form of earlier versions (numel entries, any shape; nonzero =
    /// touched) packed. (For numel ≤ 1 the two forms coincide.) Any other size is an <see cref="ArgumentException"/>
    /// naming the key, the block, the size found and the sizes expected.
    /// </summary>
    public static void Load(Tensor touched, Tensor saved, long numel, string key, string blockName)
    {
        long nb = Bytes(numel), found = saved.numel();
        if (found == nb)
        {
            using var src = saved.reshape(-1).to(ScalarType.Byte, touched.device);
            touched.copy_(src);
            ClearTail(touched, numel);
        }
        else if (found == numel)
        {
            using var src = saved.to(touched.device);
            using var packed = Pack(src);
            touched.copy_(packed);
        }
        else
            throw new ArgumentException($"optimizer state: {key} ({blockName}) has {found} entries; the touched mask of its {numel} entries needs {nb} (a bit per entry, packed) or {numel} (a byte per entry, as saved before)", "state");
    }
}
