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
                var expected = shape.Aggregate(1L, (a, b) => a * b) * dt.Size;
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

    /// <summary>Loads every tensor of one file to CPU (in its stored dtype). The caller owns the tensors.</summary>
    public static Dictionary<string, Tensor> Load(string file, Func<string, bool>? select = null)
    {
        var (entries, _, start) = ReadHeader(file);
        var result = new Dictionary<string, Tensor>();
        using var fs = File.OpenRead(file);
        foreach (var e in entries.Values.OrderBy(e => e.Begin))
        {
            if (select is not null && !select(e.Name)) continue;
            var bytes = new byte[e.End - e.Begin];
            fs.Seek(start + e.Begin, SeekOrigin.Begin);
            fs.ReadExactly(bytes);
            var t = torch.empty(e.Shape, DTypes[e.DType].Type);
            if (bytes.Length > 0) t.bytes = bytes;
            result[e.Name] = t;
        }
        return result;
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
        var file = CheckpointFile(path);
        if (!file.EndsWith(IndexFileName, StringComparison.Ordinal))
        {
            yield return (file, Load(file));
            yield break;
        }
        var dir = Path.GetDirectoryName(file)!;
        var map = ReadIndex(file);
        foreach (var shard in map.Values.Distinct())
        {
            var shardFile = Path.Combine(dir, shard);
            if (!File.Exists(shardFile)) throw CheckpointException.For(file, "weight_map", $"shard '{shard}' is listed but {shardFile} does not exist");
            var part = Load(shardFile, name => map.TryGetValue(name, out var s) && s == shard);
            foreach (var (name, s) in map)
                if (s == shard && !part.ContainsKey(name))
                {
                    foreach (var t in part.Values) t.Dispose();
                    throw CheckpointException.For(shardFile, name, $"listed in {IndexFileName} for this shard but absent from it");
                }
            yield return (shardFile, part);
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

    /// <summary>Writes tensors to one file atomically (a temporary file in the same folder, then a rename).</summary>
    public static void Save(string file, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var m = new JsonObject();
            foreach (var (k, v) in metadata) m[k] = v;
            header["__metadata__"] = m;
        }
        long offset = 0;
        var cpu = new List<Tensor>();
        try
        {
            foreach (var name in names)
            {
                var t = tensors[name].detach().cpu().contiguous();
                cpu.Add(t);
                var size = t.numel() * t.ElementSize;
                header[name] = new JsonObject
                {
                    ["dtype"] = DTypeName(t.dtype),
                    ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode)s).ToArray()),
                    ["data_offsets"] = new JsonArray(offset, offset + size),
                };
                offset += size;
            }
            var json = Encoding.UTF8.GetBytes(header.ToJsonString());
            var padded = (json.Length + 7) / 8 * 8;
            var headerBytes = new byte[padded];
            Array.Fill(headerBytes, (byte)' ');
            json.CopyTo(headerBytes, 0);
            AtomicFile.Write(file, fs =>
            {
                fs.Write(BitConverter.GetBytes((long)padded));
                fs.Write(headerBytes);
                foreach (var t in cpu) if (t.numel() > 0) fs.Write(t.bytes);
            });
        }
        finally { foreach (var t in cpu) t.Dispose(); }
    }

    /// <summary>Writes tensors as shards of at most <paramref name="maxShardBytes"/> (whole tensors) with an index, or as
    /// one <c>model.safetensors</c> when they fit in one shard. Returns the files written.</summary>
    public static IReadOnlyList<string> SaveCheckpoint(string folder, IReadOnlyDictionary<string, Tensor> tensors, long maxShardBytes = 5L << 30)
    {
        Directory.CreateDirectory(folder);
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var shards = new List<List<string>> { new() };
        long current = 0, total = 0;
        foreach (var n in names)
        {
            var size = tensors[n].numel() * tensors[n].ElementSize;
            total += size;
            if (current > 0 && current + size > maxShardBytes) { shards.Add(new()); current = 0; }
            shards[^1].Add(n);
            current += size;
        }
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (shards.Count == 1)
        {
            var f = Path.Combine(folder, SingleFileName);
            Save(f, tensors, meta);
            return [f];
        }
        var files = new List<string>();
        var weightMap = new JsonObject();
        for (var i = 0; i < shards.Count; i++)
        {
            var name = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            Save(Path.Combine(folder, name), shards[i].ToDictionary(n => n, n => tensors[n]), meta);
            foreach (var n in shards[i]) weightMap[n] = name;
            files.Add(Path.Combine(folder, name));
        }
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = weightMap };
        var indexFile = Path.Combine(folder, IndexFileName);
        AtomicFile.WriteAllText(indexFile, index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        files.Add(indexFile);
        return files;
    }
}
