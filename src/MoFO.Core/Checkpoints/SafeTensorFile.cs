using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Checkpoints;

/// <summary>
/// One safetensors file open for reading tensor by tensor: the validated header (<see cref="SafeTensors.ReadHeader"/>)
/// and the open file. <see cref="ReadInto"/> reads one tensor straight into memory the caller provides, in chunks,
/// converting to that memory's dtype and device as it goes (<see cref="TensorBytes"/>); <see cref="ReadSlice"/> reads a
/// range of a tensor's elements (row-major), so that a part of a tensor of any size can be read alone.
/// </summary>
public sealed class SafeTensorFile : ITensorSource
{
    readonly FileStream _stream;
    readonly Dictionary<ScalarType, Tensor> _staging = new();

    public string File { get; }
    public IReadOnlyDictionary<string, SafeTensorEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Where the data section starts (8 + header length).</summary>
    public long DataStart { get; }

    /// <summary>The (selected) tensors in file order.</summary>
    public IReadOnlyList<string> Names { get; }

    SafeTensorFile(string file, Func<string, bool>? select)
    {
        var (entries, meta, start) = SafeTensors.ReadHeader(file);
        File = file;
        Entries = select is null ? entries : entries.Where(kv => select(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
        Metadata = meta;
        DataStart = start;
        Names = Entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.Name, StringComparer.Ordinal).Select(e => e.Name).ToList();
        // Unbuffered: reads go straight from the file into the tensors' memory, a chunk at a time.
        _stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
    }

    /// <summary>Opens a file; <paramref name="select"/> restricts the tensors offered (the header is checked whole).</summary>
    public static SafeTensorFile Open(string file, Func<string, bool>? select = null) => new(file, select);

    SafeTensorEntry Entry(string name) =>
        Entries.TryGetValue(name, out var e) ? e : throw CheckpointException.For(File, name, "no such tensor in this file");

    public long[] Shape(string name) => Entry(name).Shape;

    public ScalarType DType(string name) => SafeTensors.ScalarTypeOf(Entry(name).DType);

    public void ReadInto(string name, Tensor destination)
    {
        var e = Entry(name);
        if (!destination.shape.SequenceEqual(e.Shape))
            throw new ArgumentException($"{File}: {name}: the destination has shape [{string.Join(", ", destination.shape)}], the tensor [{string.Join(", ", e.Shape)}]");
        _stream.Seek(DataStart + e.Begin, SeekOrigin.Begin);
        TensorBytes.Read(_stream, destination, DType(name), File, name, StagingFor(DType(name), destination));
    }

    /// <summary>The file's one staging buffer per stored dtype, made on the first read that converts or moves (sized for
    /// the file's largest tensor, at most one chunk) and kept until the file is closed.</summary>
    Tensor? StagingFor(ScalarType stored, Tensor destination)
    {
        if (destination.device_type == DeviceType.CPU && destination.dtype == stored) return null;
        if (!_staging.TryGetValue(stored, out var s))
            _staging[stored] = s = TensorBytes.Staging(stored, Entries.Values.Max(x => x.Shape.Aggregate(1L, (a, b) => a * b)));
        return s;
    }

    /// <summary>Elements [<paramref name="first"/>, <paramref name="first"/> + <paramref name="count"/>) of the tensor in
    /// row-major order, as a new 1-D CPU tensor of <paramref name="dtype"/> (default: the stored dtype).</summary>
    public Tensor ReadSlice(string name, long first, long count, ScalarType? dtype = null)
    {
        var e = Entry(name);
        var numel = e.Shape.Aggregate(1L, (a, b) => a * b);
        if (first < 0 || count < 0 || first + count > numel)
            throw new ArgumentOutOfRangeException(nameof(first), $"{File}: {name}: elements [{first}, {first + count}) are outside [0, {numel})");
        var stored = DType(name);
        var result = torch.empty(count, dtype ?? stored);
        try
        {
            _stream.Seek(DataStart + e.Begin + first * stored.ElementSize(), SeekOrigin.Begin);
            TensorBytes.Read(_stream, result, stored, File, name, StagingFor(stored, result));
            return result;
        }
        catch { result.Dispose(); throw; }
    }

    public void Dispose()
    {
        _stream.Dispose();
        foreach (var s in _staging.Values) s.Dispose();
        _staging.Clear();
    }
}
