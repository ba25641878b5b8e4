using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// Rotary position embeddings in HF's convention (rotate_half: the first and second halves of each rotary block pair
/// up), with <c>rope_theta</c> and <c>rope_scaling</c> of types linear, dynamic (NTK-aware) and llama3. The cos/sin
/// tables are computed in float32 for the positions of each forward pass and cast to the activations' dtype.
/// Dynamic scaling uses the largest position of the current pass (HF grows its table with the longest sequence seen;
/// for a single generation the two agree).
/// </summary>
public sealed class Rotary(int dim, double theta, RopeScaling? scaling, int maxPositionEmbeddings)
{
    public int Dim => dim;

    double[] BaseInvFreq(double @base) =>
        Enumerable.Range(0, dim / 2).Select(i => 1.0 / Math.Pow(@base, 2.0 * i / dim)).ToArray();

    /// <summary>The inverse frequencies used for a pass whose largest position is <paramref name="maxPosition"/>.</summary>
    public double[] InverseFrequencies(long maxPosition)
    {
        var inv = BaseInvFreq(theta);
        if (scaling is null) return inv;
        switch (scaling.Type)
        {
            case "linear":
                return inv.Select(f => f / scaling.Factor).ToArray();
            case "dynamic":
            {
                var seqLen = Math.Max(maxPosition + 1, maxPositionEmbeddings);
                if (seqLen <= maxPositionEmbeddings) return inv;
                var b = theta * Math.Pow(scaling.Factor * seqLen / maxPositionEmbeddings - (scaling.Factor - 1), dim / (dim - 2.0));
                return BaseInvFreq(b);
            }
            case "llama3":
            {
                var old = (double)scaling.OriginalMaxPositionEmbeddings;
                var lowWave = old / scaling.LowFreqFactor;
                var highWave = old / scaling.HighFreqFactor;
                return inv.Select(f =>
                {
                    var wave = 2 * Math.PI / f;
                    if (wave < highWave) return f;
                    if (wave > lowWave) return f / scaling.Factor;
                    var smooth = (old / wave - scaling.LowFreqFactor) / (scaling.HighFreqFactor - scaling.LowFreqFactor);
                    return (1 - smooth) * f / scaling.Factor + smooth * f;
                }).ToArray();
            }
            default:
                throw new InvalidOperationException($"unsupported rope scaling type '{scaling.Type}'");
        }
    }

    /// <summary>cos and sin of shape [B, 1, T, dim] for positions [B, T].</summary>
    public (Tensor Cos, Tensor Sin) Tables(Tensor positionIds, ScalarType dtype)
    {
        var maxPos = scaling?.Type == "dynamic" ? positionIds.max().item<long>() : 0;
        var inv = torch.tensor(InverseFrequencies(maxPos).Select(x => (float)x).ToArray(), device: positionIds.device);
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * inv;          // [B, T, dim/2]
        var emb = torch.cat([freqs, freqs], -1).unsqueeze(1);                          // [B, 1, T, dim]
        return (emb.cos().to(dtype), emb.sin().to(dtype));
    }

    static Tensor RotateHalf(Tensor x)
    {
        var half = x.shape[^1] / 2;
        return torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    }

    /// <summary>Applies the rotation to the first <see cref="Dim"/> features of x [B, H, T, D] (partial rotary when D &gt; dim).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        var d = cos.shape[^1];
        var total = x.shape[^1];
        if (d == total) return x * cos + RotateHalf(x) * sin;
        var rot = x.narrow(-1, 0, d);
        var pass = x.narrow(-1, d, total - d);
        return torch.cat([rot * cos + RotateHalf(rot) * sin, pass], -1);
    }
}
