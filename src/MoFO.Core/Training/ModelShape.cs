using MoFO.Models;

namespace MoFO.Training;

/// <summary>
/// A model's parameter tensors by HF name with their shapes, as the memory plan counts them: read from the model's own
/// module built on the meta device (<see cref="ModelLoader.CreateEmpty"/>: no memory, no random draws), so that the plan
/// and the loader know the same tensors. Decoder layers are recognised by the <c>.layers.N.</c> in a name.
/// </summary>
public sealed record ModelShape(ModelConfig Config, IReadOnlyList<(string Name, long[] Shape)> Parameters)
{
    /// <summary>The shape of a config's model.</summary>
    public static ModelShape Of(ModelConfig config)
    {
        using var empty = ModelLoader.CreateEmpty(config);
        return new ModelShape(config, empty.ModelParameters().Select(p => (p.Name, p.Parameter.shape)).ToList());
    }

    public static long Count(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Whether a tensor belongs to a decoder layer.</summary>
    public static bool InLayer(string name) => name.Contains(".layers.", StringComparison.Ordinal);

    /// <summary>The decoder layer of a tensor (<c>model.layers.3</c>); <see cref="InLayer"/> must hold.</summary>
    public static string LayerOf(string name)
    {
        var at = name.IndexOf(".layers.", StringComparison.Ordinal) + ".layers.".Length;
        var end = name.IndexOf('.', at);
        return end < 0 ? name : name[..end];
    }

    /// <summary>Every entry.</summary>
    public long Numel { get; } = Parameters.Sum(p => Count(p.Shape));

    /// <summary>The largest tensor's entries.</summary>
    public long Largest { get; } = Parameters.Select(p => Count(p.Shape)).DefaultIfEmpty(0).Max();

    /// <summary>The entries outside the decoder layers: embeddings, final norm, head.</summary>
    public long Outside { get; } = Parameters.Where(p => !InLayer(p.Name)).Sum(p => Count(p.Shape));

    /// <summary>The entries of the largest decoder layer.</summary>
    public long LargestLayer { get; } = Parameters.Where(p => InLayer(p.Name)).GroupBy(p => LayerOf(p.Name))
                                                  .Select(g => g.Sum(p => Count(p.Shape))).DefaultIfEmpty(0).Max();
}
