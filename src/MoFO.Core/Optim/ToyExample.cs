using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>One optimizer's run on the toy problem of Section 4.</summary>
public sealed record ToyRun(string Method, double[] Theta1Path, double[] Theta2Path, double Theta1, double Theta2,
                            double FinetuneLoss, double PretrainLoss, double DistanceFromStart);

/// <summary>
/// Section 4 of the MoFO paper: pretraining loss θ1² + θ2² (minimum at the start (0, 0)), fine-tuning loss
/// (θ1 − 1)²(θ2 − 1)² (minima on the lines θ1 = 1 and θ2 = 1). Full Adam walks the diagonal to (1, 1) (pretraining
/// loss 2); MoFO with α = 50 % on the single block of two entries updates one coordinate and stops at (1, 0)
/// (pretraining loss 1). At (0, 0) both |m| are equal: the tie rule (lower index wins) picks θ1.
/// </summary>
public static class ToyExample
{
    public static double Finetune(double t1, double t2) => (t1 - 1) * (t1 - 1) * (t2 - 1) * (t2 - 1);
    public static double Pretrain(double t1, double t2) => t1 * t1 + t2 * t2;

    /// <summary>Runs "Adam" or "MoFO" (α = <paramref name="alpha"/>, one filtered block of two entries) from (0, 0).</summary>
    public static ToyRun Run(string method, double lr = 0.01, int steps = 1000, double alpha = 0.5)
    {
        if (steps < 1) throw new ArgumentException($"steps = {steps}: it must be >= 1", nameof(steps));
        using var scope = NewDisposeScope();
        var theta = zeros(2, ScalarType.Float32).requires_grad_(true);
        BlockOptimizer opt = method switch
        {
            "Adam" => new AdamW(new[] { theta }, lr: lr),
            "MoFO" => new MoFOOptimizer(new[] { theta }, lr: lr, alpha: alpha, rule: BlockRule.AllFiltered),
            _ => throw new ArgumentException($"method = '{method}': expected \"Adam\" or \"MoFO\"", nameof(method)),
        };
        using var _ = opt;
        var p1 = new double[steps + 1]; var p2 = new double[steps + 1];
        for (int t = 0; t <= steps; t++)
        {
            var v = theta.detach().data<float>().ToArray();
            p1[t] = v[0]; p2[t] = v[1];
            if (t == steps) break;
            opt.zero_grad();
            using var inner = NewDisposeScope();
            using Scalar one = 1.0.ToScalar();
            var d1 = theta[0].sub(one); var d2 = theta[1].sub(one);
            var loss = d1 * d1 * d2 * d2;
            loss.backward();
            opt.step();
        }
        double a = p1[steps], b = p2[steps];
        return new ToyRun(method, p1, p2, a, b, Finetune(a, b), Pretrain(a, b), Math.Sqrt(a * a + b * b));
    }
}

/// <summary>One point of the convergence experiment: T, the running minima of the gradient norms, and the bound.</summary>
public sealed record ConvergencePoint(int T, double MinGradInf, double MinGradTopAlpha, double MinGradL2, double Bound);

/// <summary>
/// Theorem 1 on a smooth non-convex test function: f(x) = Σ_i (x_i²/2 + s·cos x_i) + (c/2)·Σ_i (x_{i+1} − x_i)²,
/// whose Hessian is diag(1 − s·cos x_i) + c·(a path Laplacian), so ∇f is L-Lipschitz with L = 1 + s + 4c, f is
/// non-convex for s &gt; 1, and f ≥ −s·d. GD-MoFO (Algorithm 2) with η = 1/L; the theorem's bound is
/// min_{t&lt;T} ‖g_t‖_top-α ≤ sqrt(2L(f(x0) − f*)/T) ≤ sqrt(2L(f(x0) + s·d)/T), and ‖g‖_∞ ≤ ‖g‖_top-α.
/// </summary>
public static class ConvergenceExperiment
{
    public static double Lipschitz(double s, double c) => 1 + s + 4 * c;

    public static Tensor Objective(Tensor x, double s, double c)
    {
        var n = x.shape[0];
        var diff = x.narrow(0, 1, n - 1) - x.narrow(0, 0, n - 1);
        using Scalar half = 0.5.ToScalar(), ss = s.ToScalar(), hc = (c / 2).ToScalar();
        return (x * x).mul(half).add_(x.cos().mul(ss)).sum() + (diff * diff).sum().mul(hc);
    }

    /// <summary>Runs T steps; returns the curve at the given checkpoints of T.</summary>
    public static List<ConvergencePoint> Run(int dims = 4096, int blocks = 8, double alpha = 0.15, double s = 3, double c = 0.5,
                                             int steps = 2000, long seed = 0, IReadOnlyList<int>? checkpoints = null)
    {
        if (dims % blocks != 0) throw new ArgumentException($"dims = {dims} must split into {blocks} equal blocks", nameof(dims));
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed, CPU);
        using Scalar two = 2.0.ToScalar();
        var x0 = randn(new long[] { dims }, ScalarType.Float64, generator: gen).mul(two);
        var parts = Enumerable.Range(0, blocks).Select(i => x0.narrow(0, i * (dims / blocks), dims / blocks).clone().requires_grad_(true)).ToArray();
        double L = Lipschitz(s, c);
        var opt = new GDMoFO(parts, lr: 1 / L, alpha: alpha, rule: BlockRule.AllFiltered);
        double f0;
        using (no_grad()) f0 = Objective(x0, s, c).item<double>();
        double bound0 = Math.Sqrt(2 * L * (f0 + s * dims));
        var marks = new SortedSet<int>(checkpoints ?? DefaultCheckpoints(steps));
        double minInf = double.PositiveInfinity, minTop = double.PositiveInfinity, minL2 = double.PositiveInfinity;
        var result = new List<ConvergencePoint>();
        long k = BlockOptimizer.SelectedCount(dims / blocks, alpha);
        for (int t = 0; t < steps; t++)
        {
            using var inner = NewDisposeScope();
            opt.zero_grad();
            var f = Objective(cat(parts, 0), s, c);
            f.backward();
            using (no_grad())
            {
                double inf = 0, top = 0, l2 = 0;
                foreach (var p in parts)
                {
                    var g = p.grad!;
                    inf = Math.Max(inf, g.abs().max().item<double>());
                    l2 += (g * g).sum().item<double>();
                    var (vals, _) = g.abs().topk((int)k);
                    top += (vals * vals).sum().item<double>();
                }
                minInf = Math.Min(minInf, inf); minTop = Math.Min(minTop, Math.Sqrt(top)); minL2 = Math.Min(minL2, Math.Sqrt(l2));
            }
            opt.step();
            int T = t + 1;
            if (marks.Contains(T)) result.Add(new ConvergencePoint(T, minInf, minTop, minL2, bound0 / Math.Sqrt(T)));
        }
        return result;
    }

    public static IEnumerable<int> DefaultCheckpoints(int steps)
    {
        var set = new SortedSet<int>();
        for (double x = 1; x <= steps; x *= 1.25) set.Add((int)Math.Round(x));
        set.Add(steps);
        return set;
    }
}
