using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>Helpers for `mofo bench optim`: raw addresses and a plain copy kernel to measure memory bandwidth.</summary>
public static unsafe class Bench
{
    /// <summary>The address of a contiguous CPU tensor's first element.</summary>
    public static nint Address(Tensor t)
    {
        if (t.device_type != TorchSharp.DeviceType.CPU || !t.is_contiguous())
            throw new ArgumentException($"Bench.Address: the tensor must be contiguous and on the CPU (got {t.device}, contiguous = {t.is_contiguous()})", nameof(t));
        return (nint)AdamKernels.Ptr(t);
    }

    /// <summary>Copies count floats from src + offset to dst + offset.</summary>
    public static void Copy(nint src, nint dst, long offset, long count)
        => Buffer.MemoryCopy((float*)src + offset, (float*)dst + offset, count * 4, count * 4);
}
