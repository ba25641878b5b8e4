using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A token embedding table [vocab, dim] (HF <c>nn.Embedding</c>: the rows of <see cref="weight"/> picked by the ids).
/// A managed module rather than TorchSharp's <c>nn.Embedding</c>, whose native constructor always fills a float32 CPU
/// table with random values first; this one is created where and as asked — on the meta device it allocates nothing
/// and draws nothing, so a checkpoint's table is read straight into its final memory.
/// </summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = nameof(weight))]
    Parameter _weight = null!;

    /// <summary>A table of <paramref name="vocab"/> × <paramref name="dim"/>; off the meta device its values are drawn
    /// from N(0, 1) as torch's Embedding does (callers initialize it as they need).</summary>
    public TokenEmbedding(long vocab, long dim, Device? device = null, ScalarType? dtype = null) : base(nameof(TokenEmbedding))
    {
        var w = torch.empty(vocab, dim, dtype: dtype, device: device);
        if (w.device_type != DeviceType.META) using (torch.no_grad()) w.normal_();
        weight = new Parameter(w);
    }

    public Parameter weight
    {
        get => _weight;
        set
        {
            if (ReferenceEquals(value, _weight)) return;
            _weight?.Dispose();
            _weight = (Parameter)value.DetachFromDisposeScope();
            ConditionallyRegisterParameter(nameof(weight), _weight);
        }
    }

    public override Tensor forward(Tensor ids)
    {
        var rows = _weight.index_select(0, ids.reshape(-1));
        return rows.view([.. ids.shape, _weight.shape[1]]);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _weight?.Dispose();
        base.Dispose(disposing);
    }
}
