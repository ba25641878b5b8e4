using MoFO.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Weight-space interpolation of a fine-tuned model with its base (WiSE-FT, Wortsman et al. 2022): θ = (1 − t)·θ_base +
/// t·θ_tuned, tensor by tensor, computed in float32 and stored in the tuned model's dtype. t = 0 gives the base weights
/// and t = 1 the tuned ones exactly; t outside [0, 1] extrapolates. Any two checkpoints of one architecture and shape.
/// </summary>
public static class WeightAverage
{
    /// <summary>Interpolates <paramref name="tuned"/>'s weights in place toward <paramref name="baseModel"/>'s.</summary>
    public static void Interpolate(CausalLM baseModel, CausalLM tuned, double t)
    {
        if (!double.IsFinite(t)) throw new OptionException("t", $"t {t}: expected a finite number (0 = the base, 1 = the tuned model)");
        var b = baseModel.Module.StateDict();
        var target = tuned.Module.StateDict();
        var missing = target.Keys.Where(k => !b.ContainsKey(k)).ToList();
        var extra = b.Keys.Where(k => !target.ContainsKey(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new CheckpointException($"{baseModel.Name} and {tuned.Name} hold different tensors (only in the tuned model: {string.Join(", ", missing.Take(5))}; only in the base: {string.Join(", ", extra.Take(5))}): they are not one architecture");
        using var noGrad = no_grad();
        using Scalar keep = (1.0 - t).ToScalar(), take = t.ToScalar();
        foreach (var (name, w) in target)
        {
            var w0 = b[name];
            if (!w0.shape.SequenceEqual(w.shape))
                throw new CheckpointException($"{name}: shape [{string.Join(", ", w0.shape)}] in {baseModel.Name}, [{string.Join(", ", w.shape)}] in {tuned.Name}: the models must have one shape");
            if (!w.is_floating_point()) continue;
            using var scope = NewDisposeScope();
            var mixed = w0.to(ScalarType.Float32, w.device).mul(keep).add_(w.to(ScalarType.Float32).mul(take));
            w.copy_(mixed);
        }
    }

    /// <summary>Loads both models, interpolates, and writes the result as an HF folder (the tuned model's dtype,
    /// config and tokenizer) to <paramref name="output"/> (new or empty).</summary>
    public static void Write(string basePath, string tunedPath, double t, string output, Device? device = null)
    {
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new OptionException("Output", $"Output {output}: the folder is not empty (choose a new folder)");
        device ??= CPU;
        using var tuned = ModelLoader.Load(tunedPath, null, device);
        using var baseModel = ModelLoader.Load(basePath, null, device, tuned.Module.DType);
        Interpolate(baseModel, tuned, t);
        HfFolder.SaveAtomically(tuned, output);
    }
}
