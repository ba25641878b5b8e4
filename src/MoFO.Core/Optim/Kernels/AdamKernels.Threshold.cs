using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace MoFO.Optim;

// The exact threshold selection: guided by a sample, by candidates in a window, or by histogram passes.
internal static unsafe partial class AdamKernels
{
    const int HiBins = 1 << 15;
    const int LoBins = 1 << 16;
    const int CandidateCap = Chunk / 16; // at most 1/16 of a chunk collected (8 B each): past that the window missed

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
