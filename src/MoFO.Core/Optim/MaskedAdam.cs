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
/// On CPU float32 and bfloat16 the fused C# kernels run; on other devices/dtypes (or with <see cref="UseFastPath"/> off)
/// the same step runs as TorchSharp ops, with the same float32 roundings in the same order (so on CPU the two paths
/// agree bit for bit). bfloat16 parameters keep float32 moments; the update is computed in float32 and written back as
/// <see cref="BlockOptimizer.BFloat16Update"/> says. The selection ranks the float32 moments (or the gradient as float32),
/// so it does not depend on the parameters' precision.
/// </summary>
public abstract class MaskedAdam : BlockOptimizer
{
    protected MaskedAdam(IEnumerable<ParamGroup> groups, double lr, double beta1, double beta2, double eps,
                         double weightDecay, double alpha, Func<string, Tensor, BlockKind>? rule, bool trackTouched)
        : base(groups, lr, weightDecay, alpha, rule, trackTouched, Moments)
    {
        Beta1 = Validate.Beta(beta1, "beta1");
        Beta2 = Validate.Beta(beta2, "beta2");
        Eps = Validate.Eps(eps);
    }

    /// <summary>The moment tensors per block: m and v.</summary>
    public const int Moments = 2;

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }

    /// <summary>Use the fused C# kernels where they apply (CPU, float32 or bfloat16, contiguous). On by default.</summary>
    public bool UseFastPath { get; set; } = true;

    /// <summary>
    /// How the fast path finds the exact threshold: by default from a sample of the keys taken during the moment pass
    /// (one pass over the keys counts and collects the entries near it); when the guess misses, or when set to true,
    /// by two histogram passes over the keys. Both are exact; the switch exists for tests and measurements.
    /// </summary>
    public bool HistogramSelection { get; set; }

    /// <summary>m (moment 0) takes either sign; v (moment 1) is never negative and takes the unsigned 8-bit code.</summary>
    protected override bool MomentIsSigned(int index) => index == 0;

    /// <summary>The member's rule for a filtered block.</summary>
    protected abstract Selection FilteredSelection { get; }

    /// <summary>For <see cref="Selection.Random"/>: a flat bool mask with exactly k true entries.</summary>
    protected virtual Tensor RandomMask(Block block, long k) => throw new NotSupportedException();

    protected override void StepElsewhere(Block b, ParamGroup group)
    {
        if (b.Kind != BlockKind.Filtered || FilteredSelection != Selection.Random) return;
        long k = SelectedCount(b.Numel, group.Alpha);
        using var scope = NewDisposeScope();
        if (k > 0 && k < b.Numel) RandomMask(b, k);
    }

    protected override void StepBlock(Block b, ParamGroup group, Tensor grad)
    {
        var sel = b.Kind == BlockKind.Filtered ? FilteredSelection : Selection.All;
        long n = b.Numel;
        long k = sel == Selection.All ? n : SelectedCount(n, group.Alpha);
        if (k == n) sel = Selection.All;
        var s = new AdamScalars(group.LearningRate, Beta1, Beta2, Eps, group.WeightDecay, b.Step);
        var p = b.Parameter; var m = b._moments[0]; var v = b._moments[1];
        var target = Target(b);
        b.LastUpdated = k;
        if (sel != Selection.Random && UseFastPath && AdamKernels.Eligible(target, grad, m, v))
        {
            if (sel == Selection.All) { AdamKernels.Dense(target, grad, m, v, s); MarkTouched(b, null); }
            else if (k == 0) AdamKernels.MomentsOnly(target, grad, m, v, s);
            else
            {
                bool byGradient = sel == Selection.TopGradient;
                // the gradient-ranked kernel reads |g| as float32 bits: a bfloat16 gradient is widened (exactly) first
                var g = byGradient && grad.dtype != ScalarType.Float32 ? grad.to(ScalarType.Float32) : grad;
                AdamKernels.Filtered(target, g, m, v, b.Touched, k, byGradient, s, HistogramSelection, b.Guess);
            }
            return;
        }
        Tensor? mask = sel switch
        {
            Selection.All => null,
            Selection.Random => k == 0 ? null : RandomMask(b, k).view(p.shape),
            _ => null,
        };
        AdamOps.Step(target, grad, m, v, b.Touched, s, sel, k, mask);
    }
}

/// <summary>The masked-Adam step as TorchSharp ops: the path for CUDA and other dtypes, and the tests' oracle.</summary>
public static class AdamOps
{
    /// <summary>
    /// A flat-index-exact top-k mask: true for the k entries with the largest |x|; among equal |x| the lower flat
    /// index wins (as a stable descending sort). k = 0 gives an all-false mask. O(n) by radix select on the float bits,
    /// with temporaries bounded independently of n (<see cref="TopKSelect"/>); the same mask as
    /// <see cref="TopKMaskBySort"/>, bit for bit.
    /// </summary>
    public static Tensor TopKMask(Tensor x, long k) => TopKSelect.Mask(x, k);

    /// <summary>
    /// The same mask by a full stable descending sort of |x| (O(n log n); temporaries |x|, sorted values and int64
    /// indices): the tests' oracle and the benchmark's baseline.
    /// </summary>
    public static Tensor TopKMaskBySort(Tensor x, long k)
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

    /// <summary>
    /// One masked AdamW step in place (the authors' order): p *= 1 - lr·wd; m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
    /// denom = sqrt(v)/sqrtBc2 + eps; p += -step · (m ⊙ mask) / denom (computed as the internal overload below does; a
    /// bfloat16 p is rounded stochastically with key 0). <paramref name="touched"/>, when given, is a packed touched mask
    /// (<see cref="TouchedBits"/>: a bit per entry) that takes the updated entries. Returns the number of entries updated.
    /// </summary>
    public static long Step(Tensor p, Tensor g, Tensor m, Tensor v, Tensor? touched, double lr, double beta1, double beta2,
                            double eps, double weightDecay, double step, double sqrtBc2, Selection sel, long k, Tensor? randomMask)
    {
        var s = new AdamScalars(lr, beta1, beta2, eps, weightDecay, step, sqrtBc2);
        return Step(new WeightTarget(p, null, BFloat16Update.StochasticRounding, 0), g, m, v, touched, s, sel, k, randomMask);
    }

    /// <summary>
    /// sqrt, correctly rounded as the kernels' (and CUDA's) is: libtorch's CPU float32 sqrt (through MKL's vector math)
    /// is not, in about 0.5 % of entries, so on the CPU a float32 sqrt goes through float64 (exact after rounding back).
    /// </summary>
    static Tensor Sqrt(Tensor v)
    {
        if (v.dtype != ScalarType.Float32 || v.device_type != DeviceType.CPU) return v.sqrt();
        using var wide = v.to(ScalarType.Float64);
        return wide.sqrt_().to(ScalarType.Float32);
    }

    /// <summary>
    /// The step of one block as ops, in the fused kernel's order of float32 roundings (each op rounds once; the scalars
    /// are the kernel's float32 constants): m = m·β1 + g·(1-β1); v = v·β2 + (g·(1-β2))·g; p = p·decay; then for the
    /// selected entries p + (m·(-step))/(sqrt(v)·(1/sqrtBc2) + eps). A bfloat16 parameter is updated through a float32
    /// working copy (or its master) and written back as the target's mode says.
    /// </summary>
    internal static long Step(in WeightTarget t, Tensor g, Tensor m, Tensor v, Tensor? touched, AdamScalars s, Selection sel, long k, Tensor? randomMask)
    {
        using var scope = NewDisposeScope();
        // Scalars held in locals: TorchSharp's implicit conversions can be finalized during the native call. For float32
        // tensors libtorch rounds each to float32, which gives the kernel's constants.
        using Scalar decay = (1 - s.Lr * s.WeightDecay).ToScalar(), b1 = s.Beta1D.ToScalar(), ob1 = (1 - s.Beta1D).ToScalar(),
                     b2 = s.Beta2D.ToScalar(), ob2 = (1 - s.Beta2D).ToScalar(), isb = (1 / s.SqrtBc2D).ToScalar(),
                     ep = s.EpsD.ToScalar(), ns = (-s.StepD).ToScalar();
        // each transient is freed as soon as it is used (not at the scope's end), so that the step's temporaries are at
        // most the widened gradient and working weight of a bfloat16 parameter, the update, the mask and the selected
        // result (MemoryPlanner counts them for the ops path)
        var gw = g.dtype == m.dtype ? g : g.to(m.dtype);
        var w = t.Working();
        using (var t1 = gw.mul(ob1)) m.mul_(b1).add_(t1);
        using (var t2 = gw.mul(ob2)) v.mul_(b2).add_(t2.mul_(gw));
        if (s.WeightDecay != 0) w.mul_(decay);
        if (sel != Selection.All && k == 0) { t.WriteBack(w); return 0; }
        var upd = m.mul(ns);
        using (var den = Sqrt(v)) upd.div_(den.mul_(isb).add_(ep));
        Tensor? mask = sel switch
        {
            Selection.All => null,
            Selection.TopMomentum => TopKMask(m, k),
            Selection.TopGradient => TopKMask(gw, k),
            Selection.Random => randomMask ?? throw new ArgumentException("randomized selection needs a mask", nameof(randomMask)),
            _ => throw new ArgumentException($"unknown selection {sel}", nameof(sel)),
        };
        if (mask is null) w.add_(upd);
        else using (var selected = where(mask, upd.add_(w), w)) w.copy_(selected);
        upd.Dispose();
        t.WriteBack(w);
        if (touched is not null) TouchedBits.Or(touched, mask, w.numel());
        return mask is null ? w.numel() : k;
    }
}
