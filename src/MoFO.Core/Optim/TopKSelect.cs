using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>
/// MoFO's exact top-k mask in O(n) as TorchSharp ops (so it runs wherever the tensor lives, CUDA included): true for the
/// k entries with the largest |x|, the lower flat index first among equals, k = 0 all false — the mask a stable
/// descending sort of |x| gives (<see cref="AdamOps.TopKMaskBySort"/>), bit for bit.
/// <para><b>Method.</b> |x| is read as an integer key: the float's bits with the sign bit cleared (a float's magnitude
/// order is its bits' order), -0.0 → +0.0, and every NaN → one key just above +∞. Radix select by histogram passes over
/// the key, most significant bits first (<see cref="PassWidths"/>): a bincount of the pass's bits among the entries that
/// share the bits chosen so far, then the bin holding the k-th largest. After the last pass the threshold key T is exact,
/// with c entries above it; the mask is key &gt; T plus the first k − c entries equal to T by flat index (a count of
/// the ties per chunk, and a cumulative count inside the one chunk where the cut falls).</para>
/// <para><b>Passes.</b> float32: 2 (15 + 16 bits), bfloat16/float16: 1 (15 bits), float64: 4 (15 + 16 + 16 + 16 bits),
/// then one mask pass. Each pass streams the tensor in chunks of <see cref="ChunkEntries"/>.</para>
/// <para><b>"The same mask" per dtype.</b> The ranking is in the tensor's own dtype, as the sort's: bfloat16/float16
/// magnitudes are compared as 16-bit floats (widening would not change the order or the ties), float64 as 64-bit.
/// Denormals rank by value (the IEEE order libtorch's sort uses with flush-to-zero off, its default). ±0 tie. NaN
/// (any sign or payload) ranks above +∞ and NaNs tie with each other, as in libtorch's descending sort (which puts NaN
/// first); the fused CPU kernels instead rank NaNs among themselves by payload, so the two differ only when NaNs with
/// different payloads straddle the cut. Other dtypes (integers, complex) go through the sort.</para>
/// <para><b>Temporaries</b> (see <see cref="TemporaryBytes"/>): none per entry beyond the returned bool mask (1 B per
/// entry, the result itself); per call at most min(n, ChunkEntries) × (key bytes + 7) bytes of chunk buffers (one key
/// chunk; a bool compare, a bool equality, an int32 cumulative count and its bool compare in the cut's chunk) and at
/// most six histogram-sized int64 arrays of 2¹⁶ + 2 bins (≈ 3 MB). A non-contiguous x is first copied contiguous
/// (callers pass contiguous tensors). The sort needs |x|, sorted values and int64 indices: ≥ 16 B per float32 entry
/// (≈ 32 B measured on the CPU with the stable sort's buffers).</para>
/// <para><b>Host reads.</b> One read of three numbers per histogram pass, and one count per chunk while the tie cut is
/// still ahead (only when the ties at T straddle the cut); on CUDA each bincount also reads its input's min and max.</para>
/// </summary>
public static class TopKSelect
{
    /// <summary>Entries streamed per chunk: bounds the temporaries whatever the tensor's size (4 Mi entries).</summary>
    public const long ChunkEntries = 1L << 22;

    /// <summary>Largest bits per histogram pass (2¹⁶ bins).</summary>
    public const int MaxPassBits = 16;

    /// <summary>Whether the radix path handles this dtype (the floating dtypes); others fall back to the sort.</summary>
    public static bool Supports(ScalarType dtype)
        => dtype is ScalarType.Float32 or ScalarType.Float64 or ScalarType.BFloat16 or ScalarType.Float16;

    /// <summary>
    /// The top-k mask of |x| (shape of x, bool, on x's device). k ≤ 0 gives all false, k = numel all true;
    /// k &gt; numel is an error (as for the sort).
    /// </summary>
    public static Tensor Mask(Tensor x, long k)
    {
        if (!Supports(x.dtype)) return AdamOps.TopKMaskBySort(x, k);
        long n = x.numel();
        if (k > n)
            throw new ArgumentOutOfRangeException(nameof(k), k, $"TopKSelect.Mask: k must be at most the tensor's {n} entries (got {k})");
        using var scope = NewDisposeScope();
        Tensor mask;
        if (k <= 0) mask = zeros(x.shape, ScalarType.Bool, x.device);
        else if (k == n) mask = ones(x.shape, ScalarType.Bool, x.device);
        else
        {
            using var keys = new Keys(x);
            var (t, above, ties) = Threshold(keys, k);
            mask = Build(keys, t, k - above, ties).view(x.shape);
        }
        return mask.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Bytes of temporaries one <see cref="Mask"/> call allocates besides the returned mask (numel bytes), for the
    /// memory plan: chunk buffers of min(numel, ChunkEntries) × (key bytes + 7) and the histograms (6 × 8 × (2¹⁶ + 2) B).
    /// The key bytes are the dtype's width (4 for float32, 2 for bfloat16/float16, 8 for float64). For dtypes the
    /// radix path does not take, the sort's: numel × (|x| + sorted values + 8-byte indices).
    /// </summary>
    public static long TemporaryBytes(long numel, ScalarType dtype)
    {
        long width = ElementBytes(dtype);
        if (!Supports(dtype)) return numel * (2 * width + 8);
        long c = Math.Min(numel, ChunkEntries);
        const long histograms = 6L * 8 * ((1L << MaxPassBits) + 2);
        return c * (width + 7) + histograms;
    }

    /// <summary>The bits of each histogram pass, most significant first, for a key of the dtype's width.</summary>
    public static int[] PassWidths(ScalarType dtype)
    {
        int keyBits = (int)ElementBytes(dtype) * 8 - 1; // the sign bit is cleared
        int first = keyBits - MaxPassBits * ((keyBits - 1) / MaxPassBits);
        var widths = new List<int> { first };
        for (int b = keyBits - first; b > 0; b -= MaxPassBits) widths.Add(MaxPassBits);
        return widths.ToArray();
    }

    static long ElementBytes(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 or ScalarType.Int64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Int16 => 2,
        ScalarType.ComplexFloat64 => 16,
        _ => 1,
    };

    /// <summary>
    /// The threshold key T (the k-th largest), the count c of keys above it and the count of keys equal to it, by one
    /// histogram pass per entry of <see cref="PassWidths"/>.
    /// </summary>
    static (long T, long above, long ties) Threshold(Keys keys, long k)
    {
        var widths = PassWidths(keys.FloatType);
        int shift = widths.Sum();
        long prefix = 0, above = 0, need = k, ties = 0;
        for (int p = 0; p < widths.Length; p++)
        {
            int w = widths[p];
            shift -= w;
            using var scope = NewDisposeScope();
            var hist = Histogram(keys, shift, w, prefix, first: p == 0);
            var (bin, prev, inBin) = Locate(hist, need);
            above += prev;
            need -= prev;
            ties = inBin;
            prefix = (prefix << w) | bin;
        }
        return (prefix, above, ties);
    }

    /// <summary>
    /// The counts of (key &gt;&gt; shift) − (prefix &lt;&lt; w) over 0 .. 2^w − 1, i.e. of the next w bits among the
    /// entries whose higher bits are the prefix (later passes clamp the others into two bins beside these, which are
    /// dropped).
    /// </summary>
    static Tensor Histogram(Keys keys, int shift, int w, long prefix, bool first)
    {
        long bins = 1L << w;
        long total = first ? bins : bins + 2;
        var hist = zeros(total, ScalarType.Int64, keys.Device);
        using var sh = tensor((long)shift, keys.IntType, keys.Device);
        using Scalar offset = (prefix << w).ToScalar(), lo = (-1L).ToScalar(), hi = bins.ToScalar();
        for (long a = 0; a < keys.Count; a += ChunkEntries)
        {
            using var scope = NewDisposeScope();
            var kc = keys.Chunk(a, Math.Min(ChunkEntries, keys.Count - a));
            kc.bitwise_right_shift_(sh);
            if (!first) kc.sub_(offset).clamp_(lo, hi).add_(Scalars.OneL);
            hist.add_(kc.bincount(null, total));
        }
        return first ? hist : hist.narrow(0, 1, bins);
    }

    /// <summary>
    /// In a histogram (bins in ascending key order): the bin holding the need-th largest entry, the count in the bins
    /// above it (&lt; need) and its own count. One device-to-host read of three numbers.
    /// </summary>
    static (long bin, long prev, long inBin) Locate(Tensor hist, long need)
    {
        using var scope = NewDisposeScope();
        using Scalar needS = need.ToScalar();
        var down = hist.flip(0);                      // descending key order
        var cum = down.cumsum(0);
        var before = cum.lt(needS);                   // the bins entirely above the need-th entry
        var j = before.sum(ScalarType.Int64);
        var prev = where(before, cum, zeros_like(cum)).max();
        var own = down.index_select(0, j.reshape(1));
        var read = cat(new[] { j.reshape(1), prev.reshape(1), own }, 0).cpu().data<long>().ToArray();
        return (hist.shape[0] - 1 - read[0], read[1], read[2]);
    }

    /// <summary>
    /// The flat mask: key &gt; T, plus the first need entries with key = T in flat order (all of them when need = ties).
    /// </summary>
    static Tensor Build(Keys keys, long t, long need, long ties)
    {
        var result = empty(keys.Count, ScalarType.Bool, device: keys.Device);
        using Scalar ts = t.ToScalar();
        bool allTies = need == ties;
        long remaining = allTies ? 0 : need;
        for (long a = 0; a < keys.Count; a += ChunkEntries)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(ChunkEntries, keys.Count - a);
            var kc = keys.Chunk(a, len);
            var rc = result.narrow(0, a, len);
            rc.copy_(allTies ? kc.ge(ts) : kc.gt(ts));
            if (remaining > 0) remaining = AddTies(kc, rc, ts, remaining);
        }
        return result;
    }

    /// <summary>Sets the first (up to) remaining entries of the chunk equal to T; returns how many are still to set.</summary>
    static long AddTies(Tensor kc, Tensor rc, Scalar ts, long remaining)
    {
        var eq = kc.eq(ts);
        long count = eq.count_nonzero().item<long>(); // (a bool sum is ~20× slower on the CPU)
        if (count <= remaining)
        {
            if (count > 0) rc.bitwise_or_(eq);
            return remaining - count;
        }
        using Scalar r = remaining.ToScalar();
        // positions before the remaining-th tie: those whose running count of ties is still below it
        long cut = eq.cumsum(0, ScalarType.Int32).lt(r).count_nonzero().item<long>() + 1;
        rc.narrow(0, 0, cut).bitwise_or_(eq.narrow(0, 0, cut));
        return 0;
    }

    /// <summary>
    /// |x| as integer keys, a chunk at a time: the float bits read as a same-width integer (a view of x's storage),
    /// sign bit cleared, NaNs clamped to one key above +∞. One reusable chunk buffer.
    /// </summary>
    sealed class Keys : IDisposable
    {
        readonly Tensor _bits, _scratch, _absMask;
        readonly Scalar _nan;

        public Keys(Tensor x)
        {
            FloatType = x.dtype;
            Device = x.device;
            Count = x.numel();
            (IntType, long abs, long inf) = FloatType switch
            {
                ScalarType.Float32 => (ScalarType.Int32, 0x7FFF_FFFFL, 0x7F80_0000L),
                ScalarType.Float64 => (ScalarType.Int64, long.MaxValue, 0x7FF0_0000_0000_0000L),
                ScalarType.BFloat16 => (ScalarType.Int16, 0x7FFFL, 0x7F80L),
                ScalarType.Float16 => (ScalarType.Int16, 0x7FFFL, 0x7C00L),
                _ => throw new ArgumentException($"TopKSelect: no integer key for dtype {FloatType}", nameof(x)),
            };
            // a same-width integer tensor over x's storage (set_ shares the storage; sizes, strides and offset follow x)
            var src = x.detach().contiguous();
            _bits = empty(0, IntType, device: Device);
            _bits.set_(src);
            _bits = _bits.view(-1);
            _absMask = tensor(abs, IntType, Device);
            _nan = (inf + 1).ToScalar();
            _scratch = empty(Math.Min(Count, ChunkEntries), IntType, device: Device);
        }

        public ScalarType FloatType { get; }
        public ScalarType IntType { get; }
        public Device Device { get; }
        public long Count { get; }

        /// <summary>The keys of entries [start, start + len), in the shared buffer (valid until the next call).</summary>
        public Tensor Chunk(long start, long len)
        {
            var kc = _scratch.narrow(0, 0, len);
            kc.copy_(_bits.narrow(0, start, len));
            kc.bitwise_and_(_absMask);
            kc.clamp_max_(_nan);
            return kc;
        }

        public void Dispose()
        {
            _bits.Dispose(); _scratch.Dispose(); _absMask.Dispose(); _nan.Dispose();
        }
    }
}
