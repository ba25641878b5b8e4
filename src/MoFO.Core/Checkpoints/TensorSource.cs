using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Checkpoints;

/// <summary>
/// Named tensors that are read one at a time into memory the reader provides: one safetensors file
/// (<see cref="SafeTensorFile"/>) or tensors already in memory (<see cref="TensorDictionarySource"/>). A loader
/// checks names and shapes first, then reads each tensor straight into its parameter, so that a checkpoint never sits
/// in memory beside the model.
/// </summary>
public interface ITensorSource : IDisposable
{
    /// <summary>The file that errors name.</summary>
    string File { get; }

    /// <summary>The tensors, in the order that reads them fastest (file order).</summary>
    IReadOnlyList<string> Names { get; }

    long[] Shape(string name);

    /// <summary>The stored dtype.</summary>
    ScalarType DType(string name);

    /// <summary>Fills <paramref name="destination"/> (the tensor's shape; any dtype and device) with the tensor's
    /// values, converted to its dtype.</summary>
    void ReadInto(string name, Tensor destination);
}

/// <summary>Tensors in memory as an <see cref="ITensorSource"/> (llama2.c checkpoints, tests, resumed state); the
/// caller keeps ownership of the tensors.</summary>
public sealed class TensorDictionarySource(string file, IReadOnlyDictionary<string, Tensor> tensors) : ITensorSource
{
    public string File => file;
    public IReadOnlyList<string> Names { get; } = tensors.Keys.ToList();
    public long[] Shape(string name) => tensors[name].shape;
    public ScalarType DType(string name) => tensors[name].dtype;

    public void ReadInto(string name, Tensor destination)
    {
        using var _ = torch.no_grad();
        destination.copy_(tensors[name]);
    }

    public void Dispose() { }
}
