using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Checkpoints;

/// <summary>One tensor entry of a safetensors header: dtype, shape and byte range relative to the data section.</summary>
public sealed record SafeTensorEntry(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of UTF-8 JSON
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}</c>, then the data section
/// (offsets are relative to it). Tensors are row-major, little-endian. Sharded checkpoints add
/// <c>model.safetensors.index.json</c> with a <c>weight_map</c> from tensor name to shard file.
/// Reading (<see cref="SafeTensorFile"/>) and writing (<see cref="Save(string, IReadOnlyList{TensorWrite}, IReadOnlyDictionary{string, string}?, Action{TensorWrite}?)"/>)
/// go tensor by tensor and chunk by chunk (<see cref="TensorBytes"/>): offsets and sizes are 64-bit, so tensors and
/// shards over 2 GB are read and written like small ones, and no copy of a whole shard or state is ever made.
/// </summary>
public static class SafeTensors
{
    public const string IndexFileName = "model.safetensors.index.json";
    public const string SingleFileName = "model.safetensors";

    static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    public static string DTypeName(ScalarType t) =>
        DTypes.FirstOrDefault(kv => kv.Value.Type == t).Key ?? throw new ArgumentException($"safetensors: no dtype name for {t}");

    /// <summary>The ScalarType of a safetensors dtype name (F32, BF16, …).</summary>
    public static ScalarType ScalarTypeOf(string dtype) =>
        DTypes.TryGetValue(dtype, out var d) ? d.Type : throw new ArgumentException($"safetensors: unsupported dtype '{dtype}'");

    /// <summary>Bytes per element of a dtype that safetensors can hold.</summary>
    public static int ElementSize(ScalarType t) =>
        DTypes.Values.FirstOrDefault(d => d.Type == t) is { Size: > 0 } d ? d.Size : throw new ArgumentException($"safetensors: no dtype name for {t}");

    /// <summary>Reads and validates the header of one file; returns its entries, metadata and the data section's start.</summary>
    public static (IReadOnlyDictionary<string, SafeTensorEntry> Entries, IReadOnlyDictionary<string, string> Metadata, long DataStart)
        ReadHeader(string file)
    {
        if (!File.Exists(file)) throw new CheckpointException($"{file}: file not found (expected a .safetensors file)");
        using var fs = File.OpenRead(file);
        var length = fs.Length;
        if (length < 8) throw CheckpointException.For(file, "header", $"truncated: the file has {length} bytes, fewer than the 8-byte header length");
        var lenBytes = new byte[8];
        fs.ReadExactly(lenBytes);
        var n = BitConverter.ToInt64(lenBytes);
        if (n <= 0 || n > 100_000_000 || 8 + n > length)
            throw CheckpointException.For(file, "header", $"header length {n} does not fit a file of {length} bytes (truncated or not safetensors)");
        var json = new byte[n];
        fs.ReadExactly(json);
        JsonObject root;
        try { root = JsonNode.Parse(json)?.AsObject() ?? throw new JsonException("not an object"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw CheckpointException.For(file, "header", $"invalid JSON ({e.Message})"); }
        var entries = new Dictionary<string, SafeTensorEntry>();
        var meta = new Dictionary<string, string>();
        var dataLength = length - 8 - n;
        foreach (var (name, node) in root)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject m) foreach (var (k, v) in m) meta[k] = v?.ToString() ?? "";
                continue;
            }
            try
            {
                var o = node!.AsObject();
                var dtype = o["dtype"]!.GetValue<string>();
                var shape = o["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                var off = o["data_offsets"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
                if (off.Length != 2) throw new FormatException("data_offsets must be [begin, end]");
                if (!DTypes.TryGetValue(dtype, out var dt)) throw CheckpointException.For(file, name, $"unsupported dtype '{dtype}' (expected one of {string.Join(", ", DTypes.Keys)})");
                if (shape.Any(d => d < 0)) throw new FormatException($"negative dimension in shape [{string.Join(", ", shape)}]");
                if (off[0] < 0 || off[1] < off[0]) throw new FormatException($"data_offsets [{off[0]}, {off[1]}] must satisfy 0 <= begin <= end");
                var expected = checked(shape.Aggregate(1L, (a, b) => checked(a * b)) * dt.Size);
                if (off[1] - off[0] != expected)
                    throw CheckpointException.For(file, name, $"data_offsets [{off[0]}, {off[1]}] hold {off[1] - off[0]} bytes, but dtype {dtype} shape [{string.Join(", ", shape)}] needs {expected}");
                if (off[1] > dataLength)
                    throw CheckpointException.For(file, name, $"truncated: data ends at byte {off[1]} of the data section, which has only {dataLength} bytes");
                entries[name] = new SafeTensorEntry(name, dtype, shape, off[0], off[1]);
            }
            catch (Exception e) when (e is not CheckpointException)
            { throw CheckpointException.For(file, name, $"malformed header entry ({e.Message}); expected {{dtype, shape, data_offsets}}"); }
        }
        return (entries, meta, 8 + n);
    }

    /// <summary>Loads every tensor of one file to CPU (in its stored dtype), each read straight into its own memory.
    /// The caller owns the tensors.</summary>
    public static Dictionary<string, Tensor> Load(string file, Func<string, bool>? select = null)
    {
        using var f = SafeTensorFile.Open(file, select);
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var name in f.Names)
            {
                var t = torch.empty(f.Shape(name), f.DType(name));
                result[name] = t;
                f.ReadInto(name, t);
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>Loads a checkpoint folder or file: <c>model.safetensors.index.json</c> (sharded) or <c>model.safetensors</c>.</summary>
    public static Dictionary<string, Tensor> LoadCheckpoint(string path)
    {
        var result = new Dictionary<string, Tensor>();
        foreach (var (_, part) in EnumerateCheckpoint(path)) foreach (var (k, v) in part) result[k] = v;
        return result;
    }

    /// <summary>The file that describes a checkpoint folder: the shard index, else model.safetensors (or the file itself).</summary>
    public static string CheckpointFile(string path)
    {
        if (File.Exists(path)) return path;
        var index = Path.Combine(path, IndexFileName);
        if (File.Exists(index)) return index;
        var single = Path.Combine(path, SingleFileName);
        if (File.Exists(single)) return single;
        throw new CheckpointException($"{path}: no weights found: expected {SingleFileName} or {IndexFileName} (sharded) in the folder");
    }

    /// <summary>The tensors of a checkpoint one file (shard) at a time, each with its file name. The caller owns and
    /// disposes each part's tensors. A sharded index is checked: every listed shard exists and holds its tensors.</summary>
    public static IEnumerable<(string File, IReadOnlyDictionary<string, Tensor> Tensors)> EnumerateCheckpoint(string path)
    {
        foreach (var f in OpenCheckpoint(path))
        {
            var part = new Dictionary<string, Tensor>();
            try
            {
                foreach (var name in f.Names)
                {
                    var t = torch.empty(f.Shape(name), f.DType(name));
                    part[name] = t;
                    f.ReadInto(name, t);
                }
            }
            catch
            {
                foreach (var t in part.Values) t.Dispose();
                throw;
            }
            yield return (f.File, part);
        }
    }

    /// <summary>The files (shards) of a checkpoint, opened one at a time for reading tensor by tensor: each is valid
    /// until the enumeration moves on (then it is closed). A sharded index is checked: every listed shard exists and
    /// holds the tensors listed for it; a shard's other tensors are not offered.</summary>
    public static IEnumerable<SafeTensorFile> OpenCheckpoint(string path)
    {
        var file = CheckpointFile(path);
        if (!file.EndsWith(IndexFileName, StringComparison.Ordinal))
        {
            using var single = SafeTensorFile.Open(file);
            yield return single;
            yield break;
        }
        var dir = Path.GetDirectoryName(file)!;
        var map = ReadIndex(file);
        foreach (var shard in map.Values.Distinct())
        {
            var shardFile = Path.Combine(dir, shard);
            if (!File.Exists(shardFile)) throw CheckpointException.For(file, "weight_map", $"shard '{shard}' is listed but {shardFile} does not exist");
            using var part = SafeTensorFile.Open(shardFile, name => map.TryGetValue(name, out var s) && s == shard);
            foreach (var (name, s) in map)
                if (s == shard && !part.Entries.ContainsKey(name))
                    throw CheckpointException.For(shardFile, name, $"listed in {IndexFileName} for this shard but absent from it");
            yield return part;
        }
    }

    /// <summary>Reads <c>weight_map</c> of a sharded index.</summary>
    public static Dictionary<string, string> ReadIndex(string indexFile)
    {
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(indexFile))!.AsObject();
            var wm = root["weight_map"] as JsonObject ?? throw CheckpointException.For(indexFile, "weight_map", "missing (expected an object mapping tensor names to shard files)");
            return wm.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>());
        }
        catch (JsonException e) { throw CheckpointException.For(indexFile, "index", $"invalid JSON ({e.Message})"); }
    }

    /// <summary>Writes tensors to one file atomically (a temporary file in the same folder, then a rename), in name
    /// order, each streamed from its own memory (no copy of the state; see <see cref="TensorBytes"/>).</summary>
    public static void Save(string file, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        Save(file, Sorted(tensors), metadata);

    /// <summary>Writes tensors to one file atomically, in the given order, each made when its turn comes (see
    /// <see cref="TensorWrite"/>) and streamed to disk; <paramref name="written"/> is told after each.</summary>
    public static void Save(string file, IReadOnlyList<TensorWrite> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        Action<TensorWrite>? written = null) =>
        AtomicFile.Write(file, fs => Write(fs, tensors, metadata, written, file));

    /// <summary>Writes a safetensors file to a stream: the header, then each tensor made when its turn comes and
    /// streamed (see <see cref="Save(string, IReadOnlyList{TensorWrite}, IReadOnlyDictionary{string, string}?, Action{TensorWrite}?)"/>).
    /// <paramref name="file"/> names the destination in errors.</summary>
    public static void Write(Stream stream, IReadOnlyList<TensorWrite> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        Action<TensorWrite>? written = null, string file = "stream")
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var m = new JsonObject();
            foreach (var (k, v) in metadata) m[k] = v;
            header["__metadata__"] = m;
        }
        long offset = 0;
        foreach (var t in tensors)
        {
            var size = t.ByteLength;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = DTypeName(t.DType),
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + size),
            };
            offset += size;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8;
        var headerBytes = new byte[padded];
        Array.Fill(headerBytes, (byte)' ');
        json.CopyTo(headerBytes, 0);
        stream.Write(BitConverter.GetBytes((long)padded));
        stream.Write(headerBytes);
        foreach (var w in tensors)
        {
            var t = w.Make();
            try
            {
                if (t.dtype != w.DType || !t.shape.SequenceEqual(w.Shape))
                    throw new InvalidOperationException(
                        $"{file}: {w.Name}: made a {t.dtype} tensor of shape [{string.Join(", ", t.shape)}], declared {w.DType} [{string.Join(", ", w.Shape)}]");
                TensorBytes.Write(stream, t);
            }
            finally { if (w.DisposeAfterWrite) t.Dispose(); }
            written?.Invoke(w);
        }
    }

    static List<TensorWrite> Sorted(IReadOnlyDictionary<string, Tensor> tensors) =>
        tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => TensorWrite.Of(kv.Key, kv.Value)).ToList();

    /// <summary>Writes tensors as shards of at most <paramref name="maxShardBytes"/> (whole tensors) with an index, or as
    /// one <c>model.safetensors</c> when they fit in one shard; in name order. Returns the files written.</summary>
    public static IReadOnlyList<string> SaveCheckpoint(string folder, IReadOnlyDictionary<string, Tensor> tensors, long maxShardBytes = 5L << 30) =>
        SaveCheckpoint(folder, Sorted(tensors), maxShardBytes);

    /// <summary>Writes tensors, in the given order, as shards of at most <paramref name="maxShardBytes"/> (whole tensors;
    /// <c>model-0000k-of-0000n.safetensors</c>) with <c>model.safetensors.index.json</c>, or as one
    /// <c>model.safetensors</c> when they fit in one shard. Each tensor is made when its turn comes and streamed to disk
    /// (see <see cref="TensorWrite"/>); <paramref name="written"/> is told after each. Returns the files written.</summary>
    public static IReadOnlyList<string> SaveCheckpoint(string folder, IReadOnlyList<TensorWrite> tensors, long maxShardBytes = 5L << 30,
        Action<TensorWrite>? written = null)
    {
        Directory.CreateDirectory(folder);
        var shards = new List<List<TensorWrite>> { new() };
        long current = 0, total = 0;
        foreach (var t in tensors)
        {
            var size = t.ByteLength;
            total += size;
            if (current > 0 && current + size > maxShardBytes) { shards.Add(new()); current = 0; }
            shards[^1].Add(t);
            current += size;
        }
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (shards.Count == 1)
        {
            var f = Path.Combine(folder, SingleFileName);
            Save(f, shards[0], meta, written);
            return [f];
        }
        var files = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < shards.Count; i++)
        {
            var name = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            Save(Path.Combine(folder, name), shards[i], meta, written);
            foreach (var t in shards[i]) weightMap[t.Name] = name;
            files.Add(Path.Combine(folder, name));
        }
        var map = new JsonObject();
        foreach (var (k, v) in weightMap) map[k] = v;
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = map };
        var indexFile = Path.Combine(folder, IndexFileName);
        AtomicFile.WriteAllText(indexFile, index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        files.Add(indexFile);
        return files;
    }
}

/// <summary>
/// One tensor to write: its name, dtype and shape (the header is written first) and how to make it when its turn comes.
/// <see cref="Of"/> wraps an existing tensor (written from its own memory, left alone); a generator makes a fresh tensor
/// that the writer disposes right after writing it (<see cref="DisposeAfterWrite"/>), so that a checkpoint of any size
/// is written with one tensor in memory.
/// </summary>
public sealed record TensorWrite(string Name, ScalarType DType, long[] Shape, Func<Tensor> Make, bool DisposeAfterWrite)
{
    public long ByteLength => Shape.Aggregate(1L, (a, b) => checked(a * b)) * SafeTensors.ElementSize(DType);

    public static TensorWrite Of(string name, Tensor tensor) => new(name, tensor.dtype, tensor.shape, () => tensor, false);
}
