using System.Text;
using MoFO.Checkpoints;
using MoFO.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Writes an HF folder of random weights in a config's exact shape, for rehearsing a run at a real model's size
/// (<c>mofo init --like …</c>): config.json, shards with an index, generation_config.json and, when a tokenizer file is
/// given, the tokenizer with its configs. Weights follow HF's initialization — biases 0, norm weights 1, every matrix
/// and embedding N(0, initializer_range) — each tensor drawn from its own generator seeded by (seed, tensor name), so
/// a tensor's values do not depend on the shard layout or the layer count (a 6-layer variant holds the first 6 layers
/// of the full model), and a bfloat16 folder is the float32 folder of the same seed rounded. Tensors are made one at a
/// time and streamed to disk: writing a 7B float32 folder holds one tensor in memory. The folder is written beside its
/// destination and renamed when complete, so an interrupted write leaves no partial folder.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>HF-like shard size for rehearsal folders: 2 GiB (TinyLlama in bfloat16 makes two shards).</summary>
    public const long DefaultShardBytes = 2L << 30;

    /// <summary>Writes the folder; returns the files written. <paramref name="written"/> is told the name and byte size
    /// of each tensor once it is on disk. A tokenizer with more tokens than the config's vocabulary is an error.</summary>
    public static IReadOnlyList<string> Write(string folder, ModelConfig config, ScalarType dtype, long seed, string? tokenizerFile = null,
        long maxShardBytes = DefaultShardBytes, Action<string, long>? written = null)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new OptionException("dtype", $"dtype {dtype} is not a weight dtype (expected float32, bfloat16 or float16)");
        if (maxShardBytes <= 0) throw new OptionException("maxShardBytes", $"maxShardBytes {maxShardBytes} must be positive");
        var tokenizer = tokenizerFile is null ? null : TextTokenizer.Load(tokenizerFile);
        if (tokenizer is not null && tokenizer.VocabSize > config.VocabSize)
            throw new CheckpointException($"{tokenizerFile}: the tokenizer has {tokenizer.VocabSize} tokens but the model only {config.VocabSize} (vocab_size)");

        config = config with { TorchDtype = HfFolder.TorchDtypeName(dtype) };
        List<TensorWrite> tensors;
        using (var shape = ModelLoader.CreateEmpty(config, dtype))
            tensors = shape.named_parameters()
                .Select(p => (p.name, shape: p.parameter.shape))
                .Select(p => new TensorWrite(p.name, dtype, p.shape, () => Make(p.name, p.shape, dtype, config.InitializerRange, seed), DisposeAfterWrite: true))
                .ToList();
        var bytes = tensors.Sum(t => t.ByteLength);
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new OptionException("folder", $"the folder {folder} is not empty (choose a new folder or delete this one)");
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        var free = new DriveInfo(parent).AvailableFreeSpace;
        if (free < bytes)
            throw new OptionException("folder", $"the folder {folder} needs {bytes / 1e9:F1} GB for the weights but its disk has {free / 1e9:F1} GB free");

        // Written beside the destination and renamed at the end: the folder appears complete or not at all.
        var tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            var files = new List<string> { HfFolder.WriteConfig(tmp, config) };
            files.AddRange(SafeTensors.SaveCheckpoint(tmp, tensors, maxShardBytes, w => written?.Invoke(w.Name, w.ByteLength)));
            files.AddRange(HfFolder.WriteCompanions(tmp, config, config.EosTokenIds, tokenizer));
            if (Directory.Exists(full)) Directory.Delete(full);   // empty (checked above)
            Directory.Move(tmp, full);
            return files.Select(f => Path.Combine(full, Path.GetFileName(f))).ToList();
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }

    /// <summary>One tensor as HF initializes it (see the class summary), drawn in float32 a chunk at a time and
    /// converted into <paramref name="dtype"/>.</summary>
    public static Tensor Make(string name, long[] shape, ScalarType dtype, double std, long seed)
    {
        var t = torch.empty(shape, dtype);
        using var _ = torch.no_grad();
        if (name.EndsWith(".bias", StringComparison.Ordinal)) return t.zero_();
        if (shape.Length == 1) return t.fill_(1.0);
        using var g = new Generator(TensorSeed(seed, name));
        using var flat = t.view(-1);
        const long chunk = 1L << 22;   // a multiple of 16: the draws do not depend on the chunking
        var n = flat.numel();
        using var staging = dtype == ScalarType.Float32 ? null : torch.empty(Math.Min(chunk, n), ScalarType.Float32);
        for (long i = 0; i < n; i += chunk)
        {
            var k = Math.Min(chunk, n - i);
            using var part = flat.narrow(0, i, k);
            if (staging is null) part.normal_(0.0, std, g);
            else
            {
                using var s = staging.narrow(0, 0, k);
                s.normal_(0.0, std, g);
                part.copy_(s);
            }
        }
        return t;
    }

    /// <summary>A generator seed for one tensor: SplitMix64 of the run's seed and the FNV-1a hash of the tensor's name.</summary>
    public static ulong TensorSeed(long seed, string name)
    {
        unchecked
        {
            var h = 14695981039346656037UL;
            foreach (var b in Encoding.UTF8.GetBytes(name)) { h ^= b; h *= 1099511628211UL; }
            var z = (ulong)seed + 0x9E3779B97F4A7C15UL * (h | 1);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
