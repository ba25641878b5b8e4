using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A preallocated key/value cache: per layer, keys and values of shape [batch, kv_heads, capacity, head_dim]. A forward
/// pass with a cache writes its new keys/values at positions [Length, Length + T) and attends over [0, Length + T);
/// the model advances <see cref="Length"/> at the end of the pass. Create it outside the per-step dispose scopes and
/// dispose it when generation ends.
/// </summary>
public sealed class KVCache : IDisposable
{
    readonly Tensor[] keys, values;

    public KVCache(int layers, long batch, long kvHeads, long capacity, long headDim, ScalarType dtype, Device device)
    {
        keys = new Tensor[layers];
        values = new Tensor[layers];
        for (var i = 0; i < layers; i++)
        {
            keys[i] = torch.zeros([batch, kvHeads, capacity, headDim], dtype, device).DetachFromDisposeScope();
            values[i] = torch.zeros([batch, kvHeads, capacity, headDim], dtype, device).DetachFromDisposeScope();
        }
        Capacity = capacity;
    }

    public long Capacity { get; }

    /// <summary>Number of positions already cached.</summary>
    public long Length { get; private set; }

    /// <summary>Stores the new keys/values ([B, kvH, T, D]) of one layer; returns all keys/values so far.</summary>
    public (Tensor Keys, Tensor Values) Update(int layer, Tensor k, Tensor v)
    {
        var t = k.shape[2];
        if (Length + t > Capacity)
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + {t} new positions exceed its capacity {Capacity}");
        using (torch.no_grad())
        {
            keys[layer].narrow(2, Length, t).copy_(k);
            values[layer].narrow(2, Length, t).copy_(v);
        }
        return (keys[layer].narrow(2, 0, Length + t), values[layer].narrow(2, 0, Length + t));
    }

    public void Advance(long t) => Length += t;

    public void Dispose()
    {
        foreach (var t in keys) t.Dispose();
        foreach (var t in values) t.Dispose();
    }
}
