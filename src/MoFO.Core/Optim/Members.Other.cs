using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Optim;

/// <summary>
/// GD-MoFO (Algorithm 2): a plain gradient step on the k = ⌊α·numel⌋ entries of each filtered block with the largest
/// |g| (ties: lower flat index; k = 0: no update); dense blocks take the full gradient step. No moments.
/// </summary>
public sealed class GDMoFO : BlockOptimizer
{
    public GDMoFO(IEnumerable<ParamGroup> groups, double lr = 1e-3, double alpha = 0.15, double weight_decay = 0,
                  Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : base(groups, lr, weight_decay, alpha, rule, trackTouched, Moments) { }

    /// <summary>No moments: a plain gradient step.</summary>
    public const int Moments = 0;

    public GDMoFO(IEnumerable<(string name, Parameter parameter)> named, double lr = 1e-3, double alpha = 0.15,
                  double weight_decay = 0, Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(named), lr, alpha, weight_decay, rule, trackTouched) { }

    public GDMoFO(IEnumerable<Tensor> parameters, double lr = 1e-3, double alpha = 0.15, double weight_decay = 0,
                  Func<string, Tensor, BlockKind>? rule = null, bool trackTouched = false)
        : this(OneGroup(parameters), lr, alpha, weight_decay, rule, trackTouched) { }

    protected override void StepBlock(Block b, ParamGroup group, Tensor grad)
    {
        // a bfloat16 parameter steps through a float32 working copy (or its master), written back as BFloat16Update says
        var t = Target(b);
        var p = t.Working();
        var g = grad.dtype == p.dtype ? grad : grad.to(p.dtype);
        using Scalar decay = (1 - group.LearningRate * group.WeightDecay).ToScalar(), nlr = (-group.LearningRate).ToScalar();
        if (group.WeightDecay != 0) p.mul_(decay);
        long k = b.Kind == BlockKind.Filtered ? SelectedCount(b.Numel, group.Alpha) : b.Numel;
        b.LastUpdated = k;
        if (k == b.Numel) { p.add_(g, alpha: nlr); t.WriteBack(p); MarkTouched(b, null); return; }
        if (k == 0) { t.WriteBack(p); return; }
        var mask = AdamOps.TopKMask(g, k);
        p.add_(g.mul(mask), alpha: nlr);
        t.WriteBack(p);
        MarkTouched(b, mask);
    }
}

/// <summary>
/// Lion (Chen et al. 2023): c = β1 m + (1-β1) g; p *= 1 - lr·wd; p -= lr·sign(c); m = β2 m + (1-β2) g.
/// Every non-frozen block is updated densely. Defaults lr 1e-4, β = (0.9, 0.99).
/// </summary>
public sealed class Lion : BlockOptimizer
{
    /// <summary>One moment tensor per block: m.</summary>
    public const int Moments = 1;

    public Lion(IEnumerable<ParamGroup> groups, double lr = 1e-4, double beta1 = 0.9, double beta2 = 0.99,
                double weight_decay = 0, bool trackTouched = false)
        : base(groups, lr, weight_decay, 1.0, (_, _) => BlockKind.Dense, trackTouched, Moments)
    {
        Beta1 = Validate.Beta(beta1, "beta1");
        Beta2 = Validate.Beta(beta2, "beta2");
    }

    public Lion(IEnumerable<(string name, Parameter parameter)> named, double lr = 1e-4, double beta1 = 0.9,
                double beta2 = 0.99, double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(named), lr, beta1, beta2, weight_decay, trackTouched) { }

    public Lion(IEnumerable<Tensor> parameters, double lr = 1e-4, double beta1 = 0.9, double beta2 = 0.99,
                double weight_decay = 0, bool trackTouched = false)
        : this(OneGroup(parameters), lr, beta1, beta2, weight_decay, trackTouched) { }

    public double Beta1 { get; }
    public double Beta2 { get; }

    protected override void StepBlock(Block b, ParamGroup group, Tensor grad)
    {
        // a bfloat16 parameter steps through a float32 working copy (or its master) with a float32 moment
        var t = Target(b);
        var p = t.Working(); var m = b._moments[0];
        var g = grad.dtype == m.dtype ? grad : grad.to(m.dtype);
        using Scalar decay = (1 - group.LearningRate * group.WeightDecay).ToScalar(), nlr = (-group.LearningRate).ToScalar(),
                     b1 = Beta1.ToScalar(), ob1 = (1 - Beta1).ToScalar(), b2 = Beta2.ToScalar(), ob2 = (1 - Beta2).ToScalar();
        if (group.WeightDecay != 0) p.mul_(decay);
        var c = m.mul(b1).add_(g, alpha: ob1);
        p.add_(c.sign_(), alpha: nlr);
        m.mul_(b2).add_(g, alpha: ob2);
        t.WriteBack(p);
        b.LastUpdated = b.Numel;
        MarkTouched(b, null);
    }
}
