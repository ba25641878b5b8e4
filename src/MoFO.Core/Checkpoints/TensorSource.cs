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

/// <summary>
/// A source's tensors as a read-only dictionary that reads each tensor when it is looked up, into a new CPU tensor of
/// its stored dtype, and disposes the tensor it returned before, so that a consumer that uses each value before looking
/// up the next (such as an optimizer's <c>load_state_dict</c>) holds one tensor at a time. Do not keep a value past the
/// next lookup.
/// </summary>
public sealed class StreamedTensors(ITensorSource source) : IReadOnlyDictionary<string, Tensor>, IDisposable
{
    readonly HashSet<string> _names = new(source.Names);
    Tensor? _last;

    public Tensor this[string key] => TryGetValue(key, out var t) ? t : throw new KeyNotFoundException($"{source.File}: no tensor {key}");
    public IEnumerable<string> Keys => source.Names;
    public IEnumerable<Tensor> Values => source.Names.Select(n => this[n]);
    public int Count => _names.Count;
    public bool ContainsKey(string key) => _names.Contains(key);

    public bool TryGetValue(string key, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out Tensor value)
    {
        if (!_names.Contains(key)) { value = null; return false; }
        _last?.Dispose();
        var t = torch.empty(source.Shape(key), source.DType(key));
        source.ReadInto(key, t);
        _last = value = t;
        return true;
    }

    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() =>
        source.Names.Select(n => new KeyValuePair<string, Tensor>(n, this[n])).GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    public void Dispose() { _last?.Dispose(); _last = null; }
}
