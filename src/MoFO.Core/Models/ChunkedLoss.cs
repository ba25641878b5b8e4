using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// The summed next-token cross-entropy of a batch with the output layer and the loss run over chunks of tokens, so that
/// the full tokens × vocabulary logits (and their gradient) never exist at once. Only the positions that predict a
/// label (label ≠ −100 one step ahead) go through the head, in chunks of at most <c>chunkTokens</c>; each chunk is a
/// node whose forward keeps only its hidden states and whose backward recomputes its logits, as gradient
/// checkpointing does for a layer: the head's weight gradient accumulates into its <c>.grad</c> chunk by chunk, and the
/// gradient of the hidden states flows on to the layers. Memory: one chunk's logits, float32 copy, log-softmax and their
/// gradients, instead of the batch's. The loss and the gradients equal the unchunked ones up to float rounding (the sums
/// run in another order).
/// </summary>
public static class ChunkedLoss
{
    /// <summary>Logits entries (tokens × vocabulary) above which a training step computes its loss in chunks, and the
    /// size of a chunk's logits (4M entries: 16 MB in float32). Below it the head runs once (as without chunking).</summary>
    public const long ChunkEntries = 4L << 20;

    /// <summary>Tokens per chunk for a vocabulary (at least 1).</summary>
    public static long TokensPerChunk(long vocab) => Math.Max(1, ChunkEntries / Math.Max(1, vocab));

    /// <summary>Whether a batch of <paramref name="tokens"/> positions needs chunking for this vocabulary.</summary>
    public static bool Needed(long tokens, long vocab) => tokens * vocab > ChunkEntries;

    /// <summary>The summed token cross-entropy (float32) of final hidden states [B, T, H] against labels [B, T] (HF
    /// convention: position t predicts label t + 1; −100 is ignored) and the number of predicted tokens, through
    /// <paramref name="head"/> in chunks of <paramref name="chunkTokens"/> positions.</summary>
    public static (Tensor Sum, long Count) Sum(Func<Tensor, Tensor> head, Tensor hidden, Tensor labels, long chunkTokens, long ignore = -100)
    {
        if (chunkTokens < 1) throw new ArgumentException($"chunkTokens {chunkTokens}: must be at least 1", nameof(chunkTokens));
        var h = hidden.shape[^1];
        var flat = hidden.narrow(1, 0, hidden.shape[1] - 1).reshape(-1, h);
        var target = labels.narrow(1, 1, labels.shape[1] - 1).reshape(-1).to(ScalarType.Int64).to(hidden.device);
        var keep = target.ne(ignore).nonzero().reshape(-1);
        long count = keep.shape[0];
        if (count == 0) return (hidden.sum().mul(Scalars.Zero).to(ScalarType.Float32), 0);
        var hs = flat.index_select(0, keep);
        // a node joins the graph only when an input requires a gradient: with a frozen body (an adapter on the head
        // alone) a detached leaf stands in for the hidden states, so that the head's parameters still get theirs
        if (!hs.requires_grad && is_grad_enabled()) hs = hs.detach().requires_grad_(true);
        var ys = target.index_select(0, keep);
        Tensor? total = null;
        for (long s = 0; s < count; s += chunkTokens)
        {
            long n = Math.Min(chunkTokens, count - s);
            var part = ChunkFunction.apply(head, hs.narrow(0, s, n), ys.narrow(0, s, n));
            total = total is null ? part : total + part;
        }
        return (total!, count);
    }
}

/// <summary>The autograd node of one chunk (<see cref="ChunkedLoss"/>): forward, the chunk's summed cross-entropy without
/// a graph; backward, the logits recomputed with gradients and backpropagated, which accumulates the head's weight
/// gradient into its <c>.grad</c> and yields the gradient of the chunk's hidden states.</summary>
sealed class ChunkFunction : autograd.SingleTensorFunction<ChunkFunction>
{
    public override string Name => "ChunkedCrossEntropy";

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (head, hidden, target) = ((Func<Tensor, Tensor>)vars[0], (Tensor)vars[1], (Tensor)vars[2]);
        ctx.save_for_backward([hidden, target]);
        ctx.save_data("head", head);
        ctx.set_materialize_grads(false);
        using var scope = NewDisposeScope();
        return Loss(head, hidden, target).MoveToOuterDisposeScope();
    }

    static Tensor Loss(Func<Tensor, Tensor> head, Tensor hidden, Tensor target) =>
        nn.functional.cross_entropy(head(hidden).to(ScalarType.Float32), target, reduction: nn.Reduction.Sum);

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        Tensor? gradHidden = null;
        if (!gradOutput.IsInvalid)
        {
            using var scope = NewDisposeScope();
            var saved = ctx.get_saved_variables();
            var head = (Func<Tensor, Tensor>)ctx.get_data("head");
            var x = saved[0].detach().requires_grad_(true);
            using (enable_grad())
            {
                var loss = Loss(head, x, saved[1]);
                autograd.backward([loss], [gradOutput]);
            }
            gradHidden = x.grad?.MoveToOuterDisposeScope();
        }
        gradOutput.Dispose();
        return [null!, gradHidden!, null!];
    }
}
