using TorchSharp;
using static TorchSharp.torch;
using static MoFO.Optim.TensorMath;

namespace MoFO.Optim;

internal static class TensorMath
{
    /// <summary>Σ d² (without square(), whose implicit Scalar TorchSharp may finalize mid-call).</summary>
    public static Tensor SumSq(Tensor d) => (d * d).sum();
}

/// <summary>A copy of parameters at one moment (the pretrained weights θ0), and distances to it.</summary>
public sealed class ParameterSnapshot : IDisposable
{
    readonly Tensor[] _params;
    readonly Tensor[] _initial;

    /// <summary>Snapshots the current values (one extra copy of the parameters).</summary>
    public ParameterSnapshot(IEnumerable<Tensor> parameters)
    {
        _params = parameters.ToArray();
        if (_params.Length == 0) throw new ArgumentException("parameters: the snapshot got an empty parameter list", nameof(parameters));
        using var noGrad = no_grad();
        _initial = _params.Select(p => p.detach().clone().DetachFromDisposeScope()).ToArray();
    }

    public IReadOnlyList<Tensor> Parameters => _params;
    public IReadOnlyList<Tensor> Initial => _initial;

    /// <summary>‖θ − θ0‖₂ over all parameters (no gradient).</summary>
    public double L2Distance()
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        double sum = 0;
        for (int i = 0; i < _params.Length; i++)
            sum += SumSq((_params[i] - _initial[i]).to(ScalarType.Float64)).item<double>();
        return Math.Sqrt(sum);
    }

    /// <summary>‖θ − θ0‖₂ of each parameter.</summary>
    public double[] L2DistancePerParameter()
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        return _params.Select((p, i) => Math.Sqrt(SumSq((p - _initial[i]).to(ScalarType.Float64)).item<double>())).ToArray();
    }

    public void Dispose() { foreach (var t in _initial) t.Dispose(); }
}

/// <summary>A term added to the training loss.</summary>
public interface ILossTerm
{
    /// <summary>The term as a scalar tensor with gradient.</summary>
    Tensor Loss();
}

/// <summary>λ·Σ penalty(θ − θ0) over the parameters, toward a snapshot of their initial (pretrained) values.</summary>
public abstract class PenaltyToPretrained : ILossTerm, IDisposable
{
    protected PenaltyToPretrained(IEnumerable<Tensor> parameters, double lambda)
    {
        Lambda = Validate.Lambda(lambda);
        Snapshot = new ParameterSnapshot(parameters);
    }

    public double Lambda { get; }
    public ParameterSnapshot Snapshot { get; }

    /// <summary>The penalty of one tensor's difference, summed to a scalar.</summary>
    protected abstract Tensor Penalty(Tensor difference);

    public Tensor Loss()
    {
        Tensor? total = null;
        for (int i = 0; i < Snapshot.Parameters.Count; i++)
        {
            var t = Penalty(Snapshot.Parameters[i] - Snapshot.Initial[i]);
            total = total is null ? t : total + t;
        }
        using Scalar lambda = Lambda.ToScalar();
        return total!.mul(lambda);
    }

    public void Dispose() => Snapshot.Dispose();
}

/// <summary>L1 toward the pretrained weights: λ·Σ|θ − θ0| (the paper uses λ1 = 1e-6). Composable with any optimizer:
/// <c>loss = task + reg.Loss()</c>.</summary>
public sealed class L1ToPretrained(IEnumerable<Tensor> parameters, double lambda = 1e-6) : PenaltyToPretrained(parameters, lambda)
{
    protected override Tensor Penalty(Tensor difference) => difference.abs().sum();
}

/// <summary>L2 toward the pretrained weights: λ·Σ(θ − θ0)² (the paper uses λ2 = 1e-3).</summary>
public sealed class L2ToPretrained(IEnumerable<Tensor> parameters, double lambda = 1e-3) : PenaltyToPretrained(parameters, lambda)
{
    protected override Tensor Penalty(Tensor difference) => SumSq(difference);
}
