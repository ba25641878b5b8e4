using MoFO.Checkpoints;
using MoFO.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Training;

/// <summary>
/// The L2 distance of the weights from the base (pretrained) weights, as the trainer logs it. Small models and runs
/// whose loss terms already hold θ0 measure against a copy in memory, every step; larger models measure against the
/// base checkpoint on disk, streamed in slices (no resident copy of θ0), at an interval.
/// </summary>
public abstract class BaseDistance : IDisposable
{
    /// <summary>Whether a measurement is cheap enough for every step.</summary>
    public abstract bool EveryStep { get; }

    /// <summary>‖θ − θ0‖₂.</summary>
    public abstract double L2();

    public virtual void Dispose() => GC.SuppressFinalize(this);

    /// <summary>Against a snapshot in memory (<see cref="ParameterSnapshot"/>: the loss terms' own, or a new copy).</summary>
    public sealed class InMemory(ParameterSnapshot snapshot, bool owned) : BaseDistance
    {
        public override bool EveryStep => true;
        public override double L2() => snapshot.L2Distance();
        public override void Dispose() { if (owned) snapshot.Dispose(); base.Dispose(); }
    }

    /// <summary>LoRA: the base is frozen, so the distance is that of the adapters' update, ‖(α/r)·B·A‖ summed over layers.</summary>
    public sealed class OfAdapters(Models.LoraAdapters adapters) : BaseDistance
    {
        public override bool EveryStep => true;
        public override double L2() => adapters.DeltaL2();
    }

    /// <summary>Against a safetensors checkpoint (a file or an HF folder, sharded or not), read in slices of
    /// <see cref="Slice"/> elements converted to float32; the sum of squares accumulates in float64.</summary>
    public sealed class FromCheckpoint(string checkpoint, IReadOnlyDictionary<string, Tensor> parameters) : BaseDistance
    {
        public const long Slice = 1 << 22;

        public override bool EveryStep => false;

        public override double L2()
        {
            using var _ = no_grad();
            double sq = 0;
            var seen = new HashSet<string>();
            foreach (var file in SafeTensors.OpenCheckpoint(checkpoint))
                using (file)
                    foreach (var name in file.Names)
                    {
                        if (!parameters.TryGetValue(name, out var p)) continue;
                        seen.Add(name);
                        using var flat = p.detach().contiguous().view(-1);
                        long n = flat.numel();
                        for (long i = 0; i < n; i += Slice)
                        {
                            using var scope = NewDisposeScope();
                            long len = Math.Min(Slice, n - i);
                            var b = file.ReadSlice(name, i, len, ScalarType.Float32);
                            var d = flat.narrow(0, i, len).to(ScalarType.Float64) - b.to(ScalarType.Float64);
                            sq += (d * d).sum().item<double>();
                        }
                    }
            var missing = parameters.Keys.FirstOrDefault(k => !seen.Contains(k));
            if (missing is not null) throw CheckpointException.For(checkpoint, missing, "missing from the base checkpoint (the distance needs every parameter)");
            return Math.Sqrt(sq);
        }
    }

    /// <summary>
    /// The distance of a run that trains the whole model (adapters measure their own: <see cref="OfAdapters"/>): the loss terms' snapshot when they have one; a copy in memory for models below
    /// <see cref="Defaults.SmallModel"/> parameters or whose base is not a safetensors checkpoint; otherwise the base
    /// checkpoint on disk.
    /// </summary>
    public static BaseDistance For(Models.CausalLM lm, IEnumerable<ILossTerm> terms)
    {
        var shared = terms.OfType<PenaltyToPretrained>().FirstOrDefault()?.Snapshot;
        if (shared is not null) return new InMemory(shared, owned: false);
        var parameters = lm.Module.StateDict();
        long n = parameters.Values.Sum(p => p.numel());
        var source = lm.SourcePath;
        bool safetensors = source is not null && (Directory.Exists(source) || source.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase));
        if (n < Defaults.SmallModel || !safetensors)
            return new InMemory(new ParameterSnapshot(lm.Module.ModelParameters().Select(p => (Tensor)p.Parameter)), owned: true);
        return new FromCheckpoint(source!, parameters);
    }
}
