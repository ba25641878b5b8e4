using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Checkpoints;

/// <summary>
/// The raw little-endian bytes of a tensor to and from a stream, a chunk at a time, so that no tensor is ever held
/// twice and none meets .NET's 2^31-byte limit on arrays and spans: a CPU tensor of the stored dtype is read into and
/// written from its own memory (a span over one chunk of a flat view); any other dtype or device goes through one
/// staging chunk that <c>copy_</c> converts and moves.
/// </summary>
public static class TensorBytes
{
    /// <summary>The largest chunk read or written at once (64 MiB); tests make it small to cross chunk boundaries.</summary>
    public static long ChunkBytes { get; set; } = 64L << 20;

    /// <summary>Elements of <paramref name="elementSize"/> bytes per chunk: at least one, at most int.MaxValue bytes.</summary>
    static long ChunkElements(int elementSize) => Math.Max(1, Math.Min(ChunkBytes, int.MaxValue) / elementSize);

    /// <summary>Writes the tensor's bytes (row-major; any device). A non-contiguous tensor is first made contiguous
    /// (one copy of that tensor).</summary>
    public static void Write(Stream stream, Tensor tensor)
    {
        var n = tensor.numel();
        if (n == 0) return;
        using var _ = torch.no_grad();
        var src = tensor.is_contiguous() ? tensor : tensor.contiguous();
        try
        {
            using var flat = src.view(-1);
            var per = ChunkElements((int)src.ElementSize);
            for (long i = 0; i < n; i += per)
            {
                var k = Math.Min(per, n - i);
                using var part = flat.narrow(0, i, k);
                if (part.device_type == DeviceType.CPU) stream.Write(part.bytes);
                else
                {
                    using var cpu = part.cpu();
                    stream.Write(cpu.bytes);
                }
            }
        }
        finally { if (!ReferenceEquals(src, tensor)) src.Dispose(); }
    }

    /// <summary>A CPU buffer of one chunk of <paramref name="stored"/> for reads that convert or move, to be reused
    /// across tensors: a buffer allocated and freed per tensor, its size varying, leaves holes in the heap between the
    /// parameters being loaded (measured: +0.6 GB when loading TinyLlama into float32).</summary>
    public static Tensor Staging(ScalarType stored, long atMost = long.MaxValue) =>
        // owned by its caller (a file keeps it across reads): never by an enclosing dispose scope
        torch.empty(Math.Max(1, Math.Min(ChunkElements(stored.ElementSize()), atMost)), stored).DetachFromDisposeScope();

    /// <summary>Fills <paramref name="destination"/> (any dtype and device) with its numel() elements of
    /// <paramref name="stored"/> read from the stream's position, converting as it goes. A conversion or a move goes
    /// through <paramref name="staging"/> (a 1-D CPU tensor of <paramref name="stored"/>; see <see cref="Staging"/>;
    /// default: one made for this read). <paramref name="file"/> and <paramref name="name"/> name a short read in the
    /// error.</summary>
    public static void Read(Stream stream, Tensor destination, ScalarType stored, string file, string name, Tensor? staging = null)
    {
        var n = destination.numel();
        if (n == 0) return;
        using var _ = torch.no_grad();
        if (!destination.is_contiguous())
        {
            using var tmp = torch.empty(destination.shape, stored);
            Read(stream, tmp, stored, file, name);
            destination.copy_(tmp);
            return;
        }
        using var flat = destination.view(-1);
        if (destination.device_type == DeviceType.CPU && destination.dtype == stored)
        {
            var per = ChunkElements(stored.ElementSize());
            for (long i = 0; i < n; i += per)
            {
                using var part = flat.narrow(0, i, Math.Min(per, n - i));
                ReadExactly(stream, part.bytes, file, name);
            }
            return;
        }
        if (staging is not null && (staging.dtype != stored || staging.device_type != DeviceType.CPU || staging.dim() != 1))
            throw new ArgumentException($"staging must be a 1-D CPU {stored} tensor, got {staging.dtype} [{string.Join(", ", staging.shape)}] on {staging.device}");
        var own = staging is null ? Staging(stored, n) : null;
        var buffer = staging ?? own!;
        try
        {
            var per = Math.Min(buffer.numel(), ChunkElements(stored.ElementSize()));
            for (long i = 0; i < n; i += per)
            {
                var k = Math.Min(per, n - i);
                using var part = flat.narrow(0, i, k);
                using var chunk = buffer.narrow(0, 0, k);
                ReadExactly(stream, chunk.bytes, file, name);
                part.copy_(chunk);
            }
        }
        finally { own?.Dispose(); }
    }

    static void ReadExactly(Stream stream, Span<byte> into, string file, string name)
    {
        try { stream.ReadExactly(into); }
        catch (EndOfStreamException)
        { throw CheckpointException.For(file, name, $"truncated: the file ends before the tensor's data does (at byte {stream.Length})"); }
    }
}
