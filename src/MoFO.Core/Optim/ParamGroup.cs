using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>How the optimizer treats one parameter tensor ("block").</summary>
public enum BlockKind
{
    /// <summary>Decided by the optimizer's <see cref="BlockRule"/> (the default).</summary>
    Auto,
    /// <summary>Only the selected entries (top-α by the member's rule) receive the update.</summary>
    Filtered,
    /// <summary>Every entry receives the update (biases, norm weights by default).</summary>
    Dense,
    /// <summary>No update at all: no moments, no weight decay (HFT's frozen blocks).</summary>
    Frozen,
}

/// <summary>
/// Which blocks are filtered and which dense. The default follows the authors' code: matrices (weights, embeddings,
/// the LM head; rank ≥ 2) are filtered, vectors (biases, norm weights; rank ≤ 1) and any tensor whose name ends in
/// ".bias" or contains "norm" get a dense Adam update.
/// </summary>
public static class BlockRule
{
    /// <summary>The authors' choice (see the type's summary).</summary>
    public static BlockKind Default(string name, Tensor parameter)
    {
        if (parameter.dim() <= 1) return BlockKind.Dense;
        var n = name.ToLowerInvariant();
        if (n.EndsWith(".bias") || n == "bias" || n.Contains("norm")) return BlockKind.Dense;
        return BlockKind.Filtered;
    }

    /// <summary>Every block filtered (the toy example and the convergence experiment).</summary>
    public static BlockKind AllFiltered(string name, Tensor parameter) => BlockKind.Filtered;
}

/// <summary>
/// A parameter group: tensors with their names and per-group options. Options left null take the optimizer's
/// defaults. Implements TorchSharp's <see cref="torch.optim.ILearningRateController"/> so that a scheduler can set
/// the learning rate of each group.
/// </summary>
public sealed class ParamGroup : torch.optim.ILearningRateController
{
    /// <summary>A group of parameters; names default to "param.&lt;i&gt;".</summary>
    public ParamGroup(IEnumerable<Tensor> parameters, IEnumerable<string>? names = null, double? lr = null,
                      double? weightDecay = null, double? alpha = null, BlockKind kind = BlockKind.Auto)
    {
        Parameters = parameters.ToList();
        var ns = names?.ToList();
        if (ns != null && ns.Count != Parameters.Count)
            throw new ArgumentException($"names: {ns.Count} names for {Parameters.Count} parameters", nameof(names));
        Names = ns ?? Parameters.Select((_, i) => $"param.{i}").ToList();
        LearningRateOption = lr;
        WeightDecayOption = weightDecay;
        AlphaOption = alpha;
        Kind = kind;
    }

    /// <summary>A group from (name, tensor) pairs, as <c>module.named_parameters()</c> returns them.</summary>
    public ParamGroup(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> named, double? lr = null,
                      double? weightDecay = null, double? alpha = null, BlockKind kind = BlockKind.Auto)
        : this(named.Select(x => (Tensor)x.parameter).ToList(), named.Select(x => x.name).ToList(), lr, weightDecay, alpha, kind) { }

    public IReadOnlyList<Tensor> Parameters { get; }
    public IReadOnlyList<string> Names { get; }
    public double? LearningRateOption { get; }
    public double? WeightDecayOption { get; }
    public double? AlphaOption { get; }
    /// <summary>Forces every block of the group to one kind; <see cref="BlockKind.Auto"/> asks the block rule.</summary>
    public BlockKind Kind { get; }

    /// <summary>The current learning rate (set by the optimizer from the defaults, then by a scheduler).</summary>
    public double LearningRate
    {
        get => _lr;
        set => _lr = Validate.LearningRate(value);
    }
    double _lr;

    /// <summary>The learning rate the group started with.</summary>
    public double InitialLearningRate { get; set; }

    /// <summary>The decoupled weight decay of this group (resolved).</summary>
    public double WeightDecay { get; internal set; }

    /// <summary>The update fraction α of this group (resolved).</summary>
    public double Alpha { get; internal set; }
}

/// <summary>Argument checks shared by the family; each throws <see cref="ArgumentException"/> naming the value.</summary>
public static class Validate
{
    public static double LearningRate(double lr, string name = "lr")
    {
        if (double.IsNaN(lr) || double.IsInfinity(lr) || lr < 0)
            throw new ArgumentException($"Invalid learning rate {name} = {lr}: it must be finite and >= 0.", name);
        return lr;
    }

    public static double Beta(double beta, string name)
    {
        if (double.IsNaN(beta) || beta < 0 || beta >= 1)
            throw new ArgumentException($"Invalid {name} = {beta}: it must lie in [0, 1).", name);
        return beta;
    }

    public static double Eps(double eps, string name = "eps")
    {
        if (double.IsNaN(eps) || double.IsInfinity(eps) || eps <= 0)
            throw new ArgumentException($"Invalid {name} = {eps}: it must be finite and > 0.", name);
        return eps;
    }

    public static double WeightDecay(double wd, string name = "weight_decay")
    {
        if (double.IsNaN(wd) || double.IsInfinity(wd) || wd < 0)
            throw new ArgumentException($"Invalid {name} = {wd}: it must be finite and >= 0.", name);
        return wd;
    }

    public static double Alpha(double alpha, string name = "alpha")
    {
        if (double.IsNaN(alpha) || alpha <= 0 || alpha > 1)
            throw new ArgumentException($"Invalid update fraction {name} = {alpha}: it must lie in (0, 1].", name);
        return alpha;
    }

    public static double Lambda(double lambda, string name = "lambda")
    {
        if (double.IsNaN(lambda) || double.IsInfinity(lambda) || lambda < 0)
            throw new ArgumentException($"Invalid regularization strength {name} = {lambda}: it must be finite and >= 0.", name);
        return lambda;
    }
}
