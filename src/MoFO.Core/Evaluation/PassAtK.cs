namespace MoFO.Evaluation;

/// <summary>The unbiased pass@k estimator of Chen et al. (2021): 1 − C(n−c, k) / C(n, k) for n samples of which c
/// pass, computed as a product so that large n does not overflow.</summary>
public static class PassAtK
{
    public static double Estimate(int n, int c, int k)
    {
        if (n <= 0) throw new ArgumentException($"pass@k needs at least one sample, got n = {n}");
        if (c < 0 || c > n) throw new ArgumentException($"the number of passing samples c = {c} must lie in 0..n = {n}");
        if (k < 1 || k > n) throw new ArgumentException($"k = {k} must lie in 1..n = {n} (n samples per problem)");
        if (n - c < k) return 1.0;
        // C(n-c, k)/C(n, k) = Π_{i=n-c+1}^{n} (1 - k/i)
        double ratio = 1.0;
        for (int i = n - c + 1; i <= n; i++) ratio *= 1.0 - (double)k / i;
        return 1.0 - ratio;
    }

    /// <summary>The mean over problems of pass@k, given (n, c) per problem.</summary>
    public static double Mean(IEnumerable<(int N, int C)> problems, int k)
    {
        var list = problems.ToList();
        if (list.Count == 0) throw new ArgumentException("pass@k over zero problems");
        return list.Average(p => Estimate(p.N, p.C, k));
    }
}
