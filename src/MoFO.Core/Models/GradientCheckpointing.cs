using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>The forward pass of one decoder layer for training: hidden states [B, T, H], the rotary tables and the
/// attention mask (null: causal) → hidden states [B, T, H]. It must be a pure function of its arguments and of the
/// layer's parameters (no KV cache, no dropout), so that running it twice gives the same result.</summary>
public delegate Tensor LayerForward(Tensor hidden, Tensor cos, Tensor sin, Tensor? mask);

/// <summary>
/// Gradient (activation) checkpointing of one decoder layer, as PyTorch's reentrant <c>torch.utils.checkpoint</c>
/// (which TorchSharp lacks). The forward runs the layer without recording a graph and keeps only the layer's input
/// (plus the rotary tables and the mask, shared by all layers); the backward recomputes the layer's forward with
/// gradients enabled from that saved input and backpropagates the incoming gradient through the recomputed graph,
/// which accumulates the gradients of the layer's parameters into their <c>.grad</c> (as a plain backward would) and
/// yields the gradient of the layer's input, handed on to the layers below.
/// <para>Activation memory of a forward pass is then one hidden state [B, T, H] per layer, plus the intermediates of
/// one layer at a time during the backward; the price is one more forward pass of each layer (at most a third more
/// compute: backward ≈ twice a forward).</para>
/// <para>Disposal: the layer's intermediates live in a dispose scope of their own and are freed as soon as the layer
/// has run (forward) or has been backpropagated (backward); what autograd needs later (the layer's input) is held by
/// the graph itself, not by a managed handle, so a caller's scope that ends before <c>backward()</c> takes nothing
/// the graph still needs. The managed handles of the gradients passing between layers are released as soon as
/// libtorch holds its own reference, instead of living until the caller's scope ends.</para>
/// <para>As with PyTorch's reentrant variant, the layers' parameter gradients are accumulated into <c>.grad</c> by the
/// inner backward, not routed through the outer graph: <c>backward()</c> works (also accumulating over micro-batches),
/// but <c>torch.autograd.grad</c> or <c>backward(inputs: …)</c> naming a layer's parameters does not (they are not
/// inputs of the checkpointed node).</para>
/// </summary>
public static class GradientCheckpoint
{
    /// <summary>Runs <paramref name="forward"/> (the forward of <paramref name="layer"/>) checkpointed when a backward
    /// pass may follow (gradients enabled, and the input or one of the layer's parameters requires a gradient);
    /// otherwise runs it plainly. The result equals the plain forward's; its backward recomputes the layer.</summary>
    /// <param name="afterBackward">called with the layer once its backward has accumulated the layer's parameter
    /// gradients (the trainer's step in the backward pass steps and frees them there).</param>
    public static Tensor Run(nn.Module layer, LayerForward forward, Tensor hidden, Tensor cos, Tensor sin, Tensor? mask,
                             Action<nn.Module>? afterBackward = null)
    {
        if (!torch.is_grad_enabled()) return forward(hidden, cos, sin, mask);
        var inputGrad = hidden.requires_grad;
        if (!inputGrad && !layer.parameters().Any(p => p.requires_grad)) return forward(hidden, cos, sin, mask);
        using var scope = torch.NewDisposeScope();
        // A node joins the graph only when one of its tensor inputs requires a gradient. When only the parameters do
        // (frozen embeddings), a detached leaf stands in for the input; its gradient is never computed.
        var input = inputGrad ? hidden : hidden.detach().requires_grad_(true);
        // The scope also frees the output buffer that TorchSharp allocates per node for materializing undefined
        // gradients (a full [B, T, H] tensor per layer): CheckpointFunction turns materialization off instead.
        return CheckpointFunction.apply(forward, input, cos, sin, mask, inputGrad, afterBackward is null ? null! : (Action)(() => afterBackward(layer))).MoveToOuterDisposeScope();
    }
}

/// <summary>The autograd function behind <see cref="GradientCheckpoint.Run"/>. Arguments: the layer's forward, the hidden
/// states, cos, sin, the mask (or null) and whether the hidden states' gradient is wanted.</summary>
sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
{
    public override string Name => "CheckpointedLayer";

    // The handle of the input gradient returned by the latest backward on this thread. libtorch copies a returned
    // gradient before the engine moves on, so the next backward releases the handle (otherwise it would hold the
    // gradient, a full hidden state per layer, until the caller's dispose scope ends).
    [ThreadStatic] static Tensor? returned;

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (forward, hidden, cos, sin, mask) = ((LayerForward)vars[0], (Tensor)vars[1], (Tensor)vars[2], (Tensor)vars[3], (Tensor?)vars[4]);
        ctx.save_for_backward([hidden, cos, sin, mask!]);
        ctx.save_data("forward", forward);
        ctx.save_data("inputGrad", vars[5]);
        ctx.save_data("after", vars[6]);
        ctx.set_materialize_grads(false);
        // Runs under no_grad (TorchSharp's apply): no graph; the intermediates die with this scope.
        using var scope = torch.NewDisposeScope();
        return forward(hidden, cos, sin, mask).MoveToOuterDisposeScope();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        returned?.Dispose();
        returned = null;
        var forward = (LayerForward)ctx.get_data("forward");
        var inputGrad = (bool)ctx.get_data("inputGrad");
        Tensor? gradInput = null;
        if (!gradOutput.IsInvalid)   // undefined: the layer's output did not reach the loss, nothing to propagate
        {
            using var scope = torch.NewDisposeScope();
            var saved = ctx.get_saved_variables();
            var x = saved[0].detach().requires_grad_(inputGrad);
            using (torch.enable_grad())
            {
                var y = forward(x, saved[1], saved[2], saved[3]);
                // Accumulates into the parameters' .grad (and x.grad), then frees the recomputed graph.
                if (y.requires_grad) torch.autograd.backward([y], [gradOutput]);
            }
            if (inputGrad) gradInput = x.grad?.MoveToOuterDisposeScope();
        }
        (ctx.get_data("after") as Action)?.Invoke();
        gradOutput.Dispose();
        returned = gradInput;
        return [null!, gradInput!, null!, null!, null!, null!, null!];
    }
}
