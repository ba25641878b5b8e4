using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>One size of the selection benchmark: the best of the repeats for each method, and whether the masks agreed.</summary>
/// <param name="Entries">The tensor's entries (one flat tensor of standard normal values, in the benchmark's dtype).</param>
/// <param name="K">Entries selected: ⌊fraction · entries⌋.</param>
/// <param name="SortSeconds">The sort-based mask (<see cref="AdamOps.TopKMaskBySort"/>).</param>
/// <param name="RadixSeconds">The radix select (<see cref="AdamOps.TopKMask"/>, i.e. <see cref="TopKSelect"/>).</param>
/// <param name="Same">Whether the two masks were equal, entry for entry.</param>
public sealed record SelectionTiming(long Entries, long K, double SortSeconds, double RadixSeconds, bool Same)
{
    /// <summary>How many times faster the radix select ran than the sort.</summary>
    public double Speedup => SortSeconds / RadixSeconds;
}

/// <summary>Helpers for `mofo bench optim`: raw addresses and a plain copy kernel to measure memory bandwidth, and the
/// ops path's selection timed against the sort.</summary>
public static unsafe class Bench
{
    /// <summary>The address of a contiguous CPU tensor's first element.</summary>
    public static nint Address(Tensor t)
    {
        if (t.device_type != TorchSharp.DeviceType.CPU || !t.is_contiguous())
            throw new ArgumentException($"Bench.Address: the tensor must be contiguous and on the CPU (got {t.device}, contiguous = {t.is_contiguous()})", nameof(t));
        return (nint)AdamKernels.Ptr(t);
    }

    /// <summary>Copies count floats from src + offset to dst + offset.</summary>
    public static void Copy(nint src, nint dst, long offset, long count)
        => Buffer.MemoryCopy((float*)src + offset, (float*)dst + offset, count * 4, count * 4);

    /// <summary>
    /// Times the ops path's top-k mask (<see cref="TopKSelect"/>) against the full stable sort on one tensor per size
    /// (standard normals from the seed, float32 unless a dtype is given, on the CPU unless a device is given), selecting
    /// ⌊fraction · n⌋ entries; each method runs once to warm up, then repeats times, and the best time counts. The
    /// masks are compared too. Memory beyond the input and the 1-byte mask: the sort's |x|, sorted values, int64
    /// indices and its stable sort's buffers (≈ 32 B per float32 entry measured on the CPU), the radix select's
    /// bounded chunk buffers (<see cref="TopKSelect.TemporaryBytes"/>, ≈ 50 MB for float32 at any size).
    /// </summary>
    public static IReadOnlyList<SelectionTiming> Selection(IEnumerable<long> sizes, double fraction = 0.15, int repeats = 3,
                                                         long seed = 0, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        if (fraction is < 0 or > 1 || double.IsNaN(fraction))
            throw new ArgumentException($"Bench.Selection: fraction must lie in [0, 1] (got {fraction})", nameof(fraction));
        if (repeats < 1) throw new ArgumentException($"Bench.Selection: repeats must be at least 1 (got {repeats})", nameof(repeats));
        var rows = new List<SelectionTiming>();
        foreach (long n in sizes)
        {
            if (n < 0) throw new ArgumentException($"Bench.Selection: a size must be non-negative (got {n})", nameof(sizes));
            using var scope = NewDisposeScope();
            using var gen = new Generator((ulong)seed);
            var x = randn(new[] { n }, generator: gen).to(dtype, device ?? CPU);
            long k = (long)Math.Floor(fraction * n);
            var (sortS, bySort) = Best(() => AdamOps.TopKMaskBySort(x, k), repeats);
            var (radixS, byRadix) = Best(() => AdamOps.TopKMask(x, k), repeats);
            bool same = bySort.eq(byRadix).all().item<bool>();
            rows.Add(new SelectionTiming(n, k, sortS, radixS, same));
        }
        return rows;
    }

    /// <summary>The best wall time of repeats runs (after one warm-up) and the last run's result.</summary>
    static (double seconds, Tensor result) Best(Func<Tensor> run, int repeats)
    {
        Tensor last = run();
        Synchronize(last);
        double best = double.MaxValue;
        for (int r = 0; r < repeats; r++)
        {
            last.Dispose();
            var sw = Stopwatch.StartNew();
            last = run();
            Synchronize(last);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return (best, last);
    }

    static void Synchronize(Tensor t)
    {
        if (t.device_type == DeviceType.CUDA) cuda.synchronize(t.device);
    }
}
