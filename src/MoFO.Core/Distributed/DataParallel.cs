using System.Text.Json;
using MoFO.Checkpoints;
using MoFO.Optim;
using static TorchSharp.torch;

namespace MoFO.Distributed;

/// <summary>
/// Data parallelism with the optimizer state sharded by whole tensors (ZeRO stage 1–2): every rank holds the weights,
/// runs its share of each global batch, and owns the optimizer state of a balanced subset of the parameter tensors
/// (<see cref="ShardPlan"/>). After the backward pass each tensor's gradient is summed into its owner only (the other
/// ranks free it), the owners step their tensors — MoFO's top-α selection stays exact per whole tensor — and each
/// updated tensor is broadcast from its owner. Gradients and weights travel in buckets of up to
/// <see cref="BucketBytes"/>; a tensor larger than a bucket travels alone, in place. Checkpoints gather the shards into
/// rank 0, which writes the same files a single process writes.
/// </summary>
public sealed class DataParallel
{
    readonly ICollective _c;
    readonly BlockOptimizer _opt;

    /// <summary>Shards the optimizer's state over the collective's ranks (<see cref="BlockOptimizer.Shard"/>).</summary>
    public DataParallel(ICollective collective, BlockOptimizer optimizer, long bucketBytes = 32L << 20)
    {
        _c = collective;
        _opt = optimizer;
        BucketBytes = bucketBytes;
        Plan = new ShardPlan(optimizer.Blocks.Select(b => b.Kind == BlockKind.Frozen ? 0 : b.Numel).ToList(), collective.Size);
        optimizer.Shard(b => Plan.Owner[b.Index] == collective.Rank);
    }

    public ICollective Collective => _c;
    public ShardPlan Plan { get; }
    public long BucketBytes { get; }
    public int Rank => _c.Rank;
    public int Size => _c.Size;

    /// <summary>This rank's contiguous share [Start, Start + Count) of <paramref name="count"/> items.</summary>
    public (int Start, int Count) ShareOf(int count)
    {
        int lo = (int)((long)count * Rank / Size), hi = (int)((long)count * (Rank + 1) / Size);
        return (lo, hi - lo);
    }

    /// <summary>The blocks of one owner that take part in the exchange, in order, cut into buckets of one dtype and at most
    /// <see cref="BucketBytes"/> (a larger tensor forms a bucket of its own).</summary>
    IEnumerable<List<Block>> Buckets(IEnumerable<Block> blocks, int owner, Func<Block, long> bytes, Func<Block, ScalarType> dtype)
    {
        var bucket = new List<Block>();
        long size = 0;
        foreach (var b in blocks)
        {
            if (Plan.Owner[b.Index] != owner) continue;
            if (bucket.Count > 0 && (size + bytes(b) > BucketBytes || dtype(bucket[0]) != dtype(b)))
            {
                yield return bucket;
                bucket = new List<Block>();
                size = 0;
            }
            bucket.Add(b);
            size += bytes(b);
        }
        if (bucket.Count > 0) yield return bucket;
    }

    /// <summary>
    /// Sums every gradient over the ranks into its owner (float32 on the wire; a bfloat16 gradient is rounded back once
    /// at its owner). The other ranks free the gradients they do not own, so that no rank holds every gradient after the
    /// exchange. Frozen tensors' gradients are summed too: they count in the global norm, as in a single process. With <paramref name="toAll"/> every rank receives every sum instead (a gradient projection such as GEM
    /// needs the whole gradient); <see cref="DropUnowned"/> then frees the others' before the step. A rank without a
    /// gradient for a tensor contributes zeros.
    /// </summary>
    public void ReduceGradients(bool toAll = false)
    {
        if (Size == 1) return;
        Reduce(_opt.Blocks.Where(b => !_reduced.Contains(b.Index)).ToList(), toAll);
        _reduced.Clear();
    }

    readonly HashSet<int> _reduced = new();
    Dictionary<IntPtr, Block>? _byHandle;

    /// <summary>How many tensors' gradients were summed in the backward pass so far (diagnostics and tests).</summary>
    public long ReducedInBackward { get; private set; }

    /// <summary>
    /// Sums the gradients of these parameters into their owners now — in the backward pass, as soon as a decoder layer's
    /// recomputed backward has completed them (<see cref="Models.CausalLMModule.AfterLayerBackward"/>) — so that the
    /// other ranks free them at once and no rank ever holds every gradient (ZeRO stage 2). Every rank must call it for the
    /// same layers in the same order; <see cref="ReduceGradients"/> then sums the rest (embeddings, final norm, head).
    /// </summary>
    public void ReduceNow(IEnumerable<Tensor> parameters)
    {
        if (Size == 1) return;
        _byHandle ??= _opt.Blocks.ToDictionary(b => b.Parameter.Handle);
        var blocks = parameters.Select(p => _byHandle.TryGetValue(p.Handle, out var b) ? b : null)
                               .Where(b => b is not null && _reduced.Add(b.Index))
                               .Select(b => b!).OrderBy(b => b.Index).ToList();
        ReducedInBackward += blocks.Count;
        Reduce(blocks, toAll: false);
    }

    void Reduce(IReadOnlyList<Block> blocks, bool toAll)
    {
        using var noGrad = no_grad();
        // frozen blocks (the same on every rank) take no gradient: none is summed or created for them
        blocks = blocks.Where(b => b.Kind != BlockKind.Frozen).ToList();
        for (int owner = 0; owner < Size; owner++)
        {
            bool receives = toAll || Rank == owner;
            foreach (var bucket in Buckets(blocks, owner, b => b.Numel * 4, _ => ScalarType.Float32))
            {
                using var scope = NewDisposeScope();
                var grads = bucket.Select(b => b.Parameter.grad).ToList();
                if (bucket.Count == 1 && grads[0] is { } g0 && g0.dtype == ScalarType.Float32 && g0.is_contiguous())
                {
                    // one large float32 gradient: summed in place
                    if (toAll) _c.AllReduceSum(g0); else _c.ReduceSum(g0, owner);
                }
                else
                {
                    var flat = cat(bucket.Select((b, i) => grads[i] is { } g ? g.reshape(-1).to(ScalarType.Float32) : zeros(b.Numel, ScalarType.Float32, b.Parameter.device)).ToList());
                    if (toAll) _c.AllReduceSum(flat); else _c.ReduceSum(flat, owner);
                    if (receives)
                    {
                        long offset = 0;
                        for (int i = 0; i < bucket.Count; i++)
                        {
                            var b = bucket[i];
                            var part = flat.narrow(0, offset, b.Numel).view(b.Parameter.shape);
                            if (grads[i] is { } g) g.copy_(part);
                            else b.Parameter.grad = part.to(b.Parameter.dtype).clone().DetachFromDisposeScope();
                            offset += b.Numel;
                        }
                    }
                }
                foreach (var g in grads) g?.Dispose();
                if (!receives) foreach (var b in bucket) b.Parameter.grad = null;
            }
        }
    }

    /// <summary>Frees the gradients of the tensors other ranks own (after <see cref="ReduceGradients"/>(toAll: true)).</summary>
    public void DropUnowned()
    {
        if (Size == 1) return;
        foreach (var b in _opt.Blocks)
            if (!b.Owned) b.Parameter.grad = null;
    }

    /// <summary>Sends every updated tensor from its owner to the other ranks.</summary>
    public void BroadcastParameters()
    {
        if (Size == 1) return;
        using var noGrad = no_grad();
        for (int owner = 0; owner < Size; owner++)
            foreach (var bucket in Buckets(_opt.Blocks.Where(b => b.Kind != BlockKind.Frozen), owner, b => b.Numel * b.Parameter.ElementSize, b => b.Parameter.dtype))
            {
                using var scope = NewDisposeScope();
                if (bucket.Count == 1 && bucket[0].Parameter.is_contiguous())
                {
                    _c.Broadcast(bucket[0].Parameter, owner);
                    continue;
                }
                var flat = cat(bucket.Select(b => b.Parameter.detach().reshape(-1)).ToList());
                _c.Broadcast(flat, owner);
                if (Rank == owner) continue;
                long offset = 0;
                foreach (var b in bucket)
                {
                    b.Parameter.detach().copy_(flat.narrow(0, offset, b.Numel).view(b.Parameter.shape));
                    offset += b.Numel;
                }
            }
    }

    // ---------------------------------------------------------------- checkpoints: the shards gathered into rank 0

    sealed record Entry(string Name, ScalarType DType, long[] Shape);

    /// <summary>
    /// On rank 0: this rank's state writes (<see cref="BlockOptimizer.StateWrites"/>) and, for every block another rank
    /// owns, a write that asks its owner for the tensor when the file writer reaches it — one tensor in flight at a
    /// time, so rank 0 never holds the others' state. Call <see cref="EndGather"/> once the file is written. On the
    /// other ranks call <see cref="ServeState"/> at the same point.
    /// </summary>
    public IReadOnlyList<TensorWrite> GatherState(IReadOnlyList<TensorWrite> local)
    {
        if (Size == 1) return local;
        if (Rank != 0) throw new InvalidOperationException("only rank 0 gathers the optimizer state");
        var all = new List<TensorWrite>(local.Where(IsBlock));
        for (int r = 1; r < Size; r++)
        {
            var entries = JsonSerializer.Deserialize<List<Entry>>(_c.ReceiveBytes(r))
                ?? throw new DistributedException($"rank {r} sent no list of its optimizer state");
            int source = r;
            for (int i = 0; i < entries.Count; i++)
            {
                var (e, id) = (entries[i], (long)i);
                all.Add(new TensorWrite(e.Name, e.DType, e.Shape, () =>
                {
                    using (var request = tensor(new[] { id })) _c.Send(request, source);
                    var t = empty(e.Shape, e.DType);
                    _c.Receive(t, source);
                    return t;
                }, DisposeAfterWrite: true));
            }
        }
        // the order a single process writes: the counters, every block's entries by block index, the member's extra state
        int firstBlock = local.TakeWhile(w => !IsBlock(w)).Count();
        return local.Take(firstBlock)
            .Concat(all.OrderBy(w => BlockIndex(w.Name)))
            .Concat(local.Skip(firstBlock).Where(w => !IsBlock(w)))
            .ToList();
    }

    static bool IsBlock(TensorWrite w) => w.Name.StartsWith("block.", StringComparison.Ordinal);

    static int BlockIndex(string name) => int.Parse(name.AsSpan(6, name.IndexOf('.', 6) - 6), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>On rank 0, after the gathered state is written: releases the other ranks from <see cref="ServeState"/>.</summary>
    public void EndGather()
    {
        if (Size == 1) return;
        for (int r = 1; r < Size; r++)
        {
            using var done = tensor(new[] { -1L });
            _c.Send(done, r);
        }
    }

    /// <summary>On a rank other than 0: sends the list of its blocks' state to rank 0, then each tensor as rank 0 asks
    /// for it, until rank 0 is done.</summary>
    public void ServeState(IReadOnlyList<TensorWrite> local)
    {
        if (Rank == 0) throw new InvalidOperationException("rank 0 gathers; the other ranks serve");
        var mine = local.Where(IsBlock).ToList();
        _c.SendBytes(JsonSerializer.SerializeToUtf8Bytes(mine.Select(w => new Entry(w.Name, w.DType, w.Shape)).ToList()), 0);
        using var request = zeros(1, ScalarType.Int64);
        while (true)
        {
            _c.Receive(request, 0);
            var id = request.data<long>()[0];
            if (id < 0) break;
            var w = mine[checked((int)id)];
            var t = w.Make();
            try { _c.Send(t, 0); }
            finally { if (w.DisposeAfterWrite) t.Dispose(); }
        }
    }
}
