using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>Which entries of a block receive the Adam update in a step.</summary>
public enum Selection
{
    /// <summary>Every entry (Adam/AdamW; dense blocks of every member).</summary>
    All,
    /// <summary>The k entries with the largest |m| (MoFO).</summary>
    TopMomentum,
    /// <summary>The k entries with the largest |g| (gradient-filtered BCD).</summary>
    TopGradient,
    /// <summary>k entries drawn uniformly at random, afresh each step (randomized BCD).</summary>
    Random,
}

/// <summary>
/// The shared masked-Adam engine. Every entry's moments advance every step; decoupled weight decay
/// <c>p *= 1 - lr·wd</c> scales the whole tensor first; then the selected entries take the Adam step
/// <c>p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)</c> (the mask multiplies the numerator only).
/// A filtered block updates exactly k = ⌊α·numel⌋ entries (see <see cref="BlockOptimizer.SelectedCount"/>); ties
/// in the ranking key go to the lower flat index; k = 0 means no Adam update for that block in that step.
/// On CPU float32 the fused C# kernels run; on other devices/dtypes (or with <see cref="UseFastPath"/> off) the same
/// step runs as TorchSharp ops.
/// </summary>
public abstract class MaskedAdam : BlockOptimizer
{
    protected MaskedAdam(IEnumerable<ParamGroup> groups, double lr, double beta1, double beta2, double eps,
                         double weightDecay, double alpha, Func<string, Tensor, BlockKind>? rule, bool trackTouched)
        : base(groups, lr, weightDecay, alpha, rule, trackTouched, moments: 2)
    {
        Beta1 = Validate.Beta(beta1, "beta1");
        Beta2 = Validate.Beta(beta2, "beta2");
        Eps = Validate.Eps(eps);
    }

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }

    /// <summary>Use the fused C# kernels where they apply (CPU, float32, contiguous). On by default.</summary>
    public bool UseFastPath { get; set; } = true;

    /// <summary>
    /// How the fast path finds the exact threshold: by default from a sample of the keys taken during the moment pass
    /// (one pass over the keys counts and collects the entries near it); when the guess misses, or when set to true,
    /// by two histogram passes over the keys. Both are exact; the switch exists for tests and measurements.
    /// </summary>
    public bool HistogramSelection { get; set; }

    /// <summary>The member's rule for a filtered block.</summary>
    protected abstract Selection FilteredSelection { get; }

    /// <summary>For <see cref="Selection.Random"/>: a flat bool mask with exactly k true entries.</summary>
    protected virtual Tensor RandomMask(Block block, long k) => throw new NotSupportedException();

    protected override void StepBlock(Block b, ParamGroup group, Tensor grad)
    {
        var sel = b.Kind == BlockKind.Filtered ? FilteredSelection : Selection.All;
        long n = b.Numel;
        long k = sel == Selection.All ? n : SelectedCount(n, group.Alpha);
        if (k == n) sel = Selection.All;
        var s = new AdamScalars(group.LearningRate, Beta1, Beta2, Eps, group.WeightDecay, b.Step);
        var p = b.Parameter; var m = b._moments[0]; var v = b._moments[1];
        b.LastUpdated = k;
        if (sel != Selection.Random && UseFastPath && AdamKernels.Eligible(p, grad, m, v))
        {
            if (sel == Selection.All) { AdamKernels.Dense(p, grad, m, v, s); MarkTouched(b, null); }
            else if (k == 0) AdamKernels.MomentsOnly(p, grad, m, v, s);
            else AdamKernels.Filtered(p, grad, m, v, b.Touched, k, sel == Selection.TopGradient, s, HistogramSelection, b.Guess);
            return;
        }
        Tensor? mask = sel switch
        {
            Selection.All => null,
            Selection.Random => k == 0 ? null : RandomMask(b, k).view(p.shape),
            _ => null,
        };
        AdamOps.Step(p, grad, m, v, b.Touched, s, sel, k, mask);
    }
}

/// <summary>The masked-Adam step as TorchSharp ops: the path for CUDA and other dtypes, and the tests' oracle.</summary>
public static class AdamOps
{
    /// <summary>
    /// A flat-index-exact top-k mask: true for the k entries with the largest |x|; among equal |x| the lower flat
    /// index wins (a stable descending sort). k = 0 gives an all-false mask.
    /// </summary>
    public static Tensor TopKMask(Tensor x, long k)
    {
        using var scope = NewDisposeScope();
        var flat = x.abs().flatten();
        var mask = zeros(flat.shape, ScalarType.Bool, x.device);
        if (k > 0)
        {
            var (_, idx) = flat.sort(dim: 0, descending: true, stable: true);
            mask.index_fill_(0, idx.narrow(0, 0, k), Scalars.True);
        }
        return mask.view(x.shape).MoveToOuterDisposeScope();
    }

    internal static void Step(Tensor p, Tensor g, Tensor m, Tensor v, Tensor? touched, AdamScalars s, Selection sel, long k, Tensor? randomMask)
    {
        Step(p, g, m, v, touched, s.Lr, s.Beta1D, s.Beta2D, s.EpsD, s.WeightDecay, s.StepD, s.SqrtBc2D, sel, k, randomMask);
    }

    /// <summary>
    /// One masked AdamW step in place (the authors' order): p *= 1 - lr·wd; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
    /// denom = sqrt(v)/sqrtBc2 + eps; p += -step · (m ⊙ mask) / denom. Returns the number of entries updated.
    /// </summary>
    public static long Step(Tensor p, Tensor g, Tensor m, Tensor v, Tensor? touched, double lr, double beta1, double beta2,
                            double eps, double weightDecay, double step, double sqrtBc2, Selection sel, long k, Tensor? randomMask)
    {
        using var scope = NewDisposeScope();
        // Scalars held in locals: TorchSharp's implicit conversions can be finalized during the native call.
        using Scalar decay = (1 - lr * weightDecay).ToScalar(), b1 = beta1.ToScalar(), ob1 = (1 - beta1).ToScalar(),
                     b2 = beta2.ToScalar(), ob2 = (1 - beta2).ToScalar(), sb = sqrtBc2.ToScalar(), ep = eps.ToScalar(),
                     ns = (-step).ToScalar();
        if (weightDecay != 0) p.mul_(decay);
        m.mul_(b1).add_(g, alpha: ob1);
        v.mul_(b2).addcmul_(g, g, value: ob2);
        if (sel != Selection.All && k == 0) return 0;
        var denom = v.sqrt().div_(sb).add_(ep);
        Tensor? mask = sel switch
        {
            Selection.All => null,
            Selection.TopMomentum => TopKMask(m, k),
            Selection.TopGradient => TopKMask(g, k),
            Selection.Random => randomMask ?? throw new ArgumentException("randomized selection needs a mask", nameof(randomMask)),
            _ => throw new ArgumentException($"unknown selection {sel}", nameof(sel)),
        };
        var num = mask is null ? m : m.mul(mask);
        p.addcdiv_(num, denom, value: ns);
        if (touched is not null)
        {
            if (mask is null) touched.fill_(Scalars.OneL);
            else touched.bitwise_or_(mask.to(ScalarType.Byte));
        }
        return mask is null ? p.numel() : k;
    }
}
