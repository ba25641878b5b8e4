using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Checkpoints;

/// <summary>
/// llama2.c checkpoints (legacy version 0): a header of seven int32 — dim, hidden_dim, n_layers, n_heads, n_kv_heads,
/// vocab_size (positive: the classifier is the token embedding; negative: a separate <c>wcls</c> follows), seq_len —
/// then float32 tensors: token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
/// wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden],
/// w3 [L, hidden, dim], rms_final [dim], freq_cis_real and freq_cis_imag [seq_len, head_size / 2], then wcls.
/// llama2.c rotates interleaved pairs (Meta layout); on load the rows of wq and wk are permuted into HF's rotate_half
/// layout (the permutation of HF's convert_llama_weights_to_hf), so that one Llama implementation serves both.
/// rms eps 1e-5 and rope theta 10000 are llama2.c's constants. <see cref="Load"/> returns the validated header and the
/// tensors under HF's names.
/// </summary>
public static class Llama2c
{
    public const double RmsNormEps = 1e-5;
    public const double RopeTheta = 10000.0;

    public static (Llama2cHeader Header, Dictionary<string, Tensor> Tensors) Load(string file)
    {
        if (!File.Exists(file)) throw new CheckpointException($"{file}: file not found (expected a llama2.c .bin checkpoint)");
        using var fs = File.OpenRead(file);
        using var br = new BinaryReader(fs);
        if (fs.Length < 28) throw CheckpointException.For(file, "header", $"truncated: {fs.Length} bytes, fewer than the 28-byte header of seven int32");
        var h = Enumerable.Range(0, 7).Select(_ => br.ReadInt32()).ToArray();
        string[] names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
        for (var i = 0; i < 7; i++)
            if (i != 5 && (h[i] <= 0 || h[i] > 1 << 20)) throw CheckpointException.For(file, names[i], $"implausible header value {h[i]} (not a llama2.c v0 checkpoint?)");
        var (dim, hidden, layers, heads, kvHeads, vocabSigned, seqLen) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
        var shared = vocabSigned > 0;
        var vocab = Math.Abs(vocabSigned);
        if (vocab == 0) throw CheckpointException.For(file, "vocab_size", "is 0");
        if (dim % heads != 0) throw CheckpointException.For(file, "n_heads", $"{heads} does not divide dim {dim}");
        if (heads % kvHeads != 0) throw CheckpointException.For(file, "n_kv_heads", $"{kvHeads} does not divide n_heads {heads}");
        var headSize = dim / heads;
        var kvDim = kvHeads * headSize;

        var header = new Llama2cHeader(dim, hidden, layers, heads, kvHeads, vocab, seqLen, shared);

        long expectedFloats = (long)vocab * dim + layers * (2L * dim + 2L * dim * dim + 2L * kvDim * dim + 3L * hidden * dim) + dim
                              + (long)seqLen * headSize + (shared ? 0 : (long)vocab * dim);
        var expectedBytes = 28 + 4 * expectedFloats;

        var tensors = new Dictionary<string, Tensor>();
        Tensor Read(string what, params long[] shape)
        {
            var n = shape.Aggregate(1L, (a, b) => a * b);
            var remaining = fs.Length - fs.Position;
            if (remaining < n * 4)
                throw CheckpointException.For(file, what,
                    $"truncated: needs {n * 4} bytes at offset {fs.Position} but only {remaining} remain (file {fs.Length} bytes, expected {expectedBytes})");
            var t = torch.empty(shape, ScalarType.Float32);
            TensorBytes.Read(fs, t, ScalarType.Float32, file, what);   // in chunks: a stacked tensor may pass 2 GB
            return t;
        }
        Tensor Permute(Tensor w, int nHeads) =>   // Meta interleaved pairs -> HF rotate_half halves, per head
            w.view(nHeads, headSize / 2, 2, dim).transpose(1, 2).reshape(nHeads * headSize, dim);
        void PerLayer(string what, Tensor stacked, Func<int, string> name, Func<Tensor, Tensor>? f = null)
        {
            for (var l = 0; l < layers; l++)
            {
                var w = stacked[l].clone();
                tensors[name(l)] = f is null ? w : f(w);
            }
            stacked.Dispose();
        }

        using (torch.NewDisposeScope())
        {
            var emb = Read("token_embedding_table", vocab, dim);
            tensors["model.embed_tokens.weight"] = emb;
            PerLayer("rms_att_weight", Read("rms_att_weight", layers, dim), l => $"model.layers.{l}.input_layernorm.weight");
            PerLayer("wq", Read("wq", layers, dim, dim), l => $"model.layers.{l}.self_attn.q_proj.weight", w => Permute(w, heads));
            PerLayer("wk", Read("wk", layers, kvDim, dim), l => $"model.layers.{l}.self_attn.k_proj.weight", w => Permute(w, kvHeads));
            PerLayer("wv", Read("wv", layers, kvDim, dim), l => $"model.layers.{l}.self_attn.v_proj.weight");
            PerLayer("wo", Read("wo", layers, dim, dim), l => $"model.layers.{l}.self_attn.o_proj.weight");
            PerLayer("rms_ffn_weight", Read("rms_ffn_weight", layers, dim), l => $"model.layers.{l}.post_attention_layernorm.weight");
            PerLayer("w1", Read("w1", layers, hidden, dim), l => $"model.layers.{l}.mlp.gate_proj.weight");
            PerLayer("w2", Read("w2", layers, dim, hidden), l => $"model.layers.{l}.mlp.down_proj.weight");
            PerLayer("w3", Read("w3", layers, hidden, dim), l => $"model.layers.{l}.mlp.up_proj.weight");
            tensors["model.norm.weight"] = Read("rms_final_weight", dim);
            Read("freq_cis_real", seqLen, headSize / 2).Dispose();
            Read("freq_cis_imag", seqLen, headSize / 2).Dispose();
            if (!shared) tensors["lm_head.weight"] = Read("wcls", vocab, dim);
            if (fs.Position != fs.Length)
                throw CheckpointException.For(file, "end of file", $"{fs.Length - fs.Position} unexpected trailing bytes (file {fs.Length} bytes, expected {expectedBytes} for this header)");
            foreach (var t in tensors.Values) t.MoveToOuterDisposeScope();
        }
        return (header, tensors);
    }
}

/// <summary>The header of a llama2.c checkpoint, validated: <paramref name="VocabSize"/> is |vocab_size|, and
/// <paramref name="SharedClassifier"/> says whether it was positive (the classifier is the token embedding).</summary>
public sealed record Llama2cHeader(int Dim, int HiddenDim, int NLayers, int NHeads, int NKvHeads, int VocabSize, int SeqLen, bool SharedClassifier);
