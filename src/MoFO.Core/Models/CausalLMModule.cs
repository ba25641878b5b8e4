using MoFO.Checkpoints;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A decoder-only transformer with HF parameter names (<see cref="LlamaForCausalLM"/>, <see cref="GPTNeoXForCausalLM"/>).
/// <see cref="Forward"/> maps token ids [B, T] to logits [B, T, V]; with a <see cref="KVCache"/> it continues from the
/// cached positions. <c>attentionMask</c> [B, past + T] marks real tokens with 1 (left padding with 0).
/// </summary>
public abstract class CausalLMModule(string name) : nn.Module(name)
{
    public abstract ModelConfig Config { get; }

    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KVCache? cache = null) =>
        Head(Hidden(inputIds, attentionMask, positionIds, cache));

    /// <summary>The final hidden states [B, T, H] (after the final norm): what the output layer maps to logits.</summary>
    public abstract Tensor Hidden(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KVCache? cache = null);

    /// <summary>The output layer: hidden states [.., H] to logits [.., V] (the head, or the tied embeddings).</summary>
    public abstract Tensor Head(Tensor hidden);

    public abstract KVCache CreateCache(long batch, long capacity);

    /// <summary>Gradient (activation) checkpointing per decoder layer (default off): in training mode with gradients
    /// enabled, each layer keeps only its input during the forward pass and recomputes its activations during the
    /// backward (<see cref="GradientCheckpoint"/>): activation memory of one hidden state per layer, for one more forward
    /// pass of the layers (at most a third more compute). Losses and gradients equal those without it. No effect in
    /// eval mode, under <c>no_grad</c>, or with a <see cref="KVCache"/> (generation: nothing to backpropagate, and a
    /// recomputation would write the cache twice).</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>Called with a decoder layer once the backward pass has accumulated its parameters' gradients (only with
    /// <see cref="GradientCheckpointing"/>, whose recomputation runs each layer's backward as a unit): the trainer's
    /// step in the backward pass steps and frees them there.</summary>
    public Action<nn.Module>? AfterLayerBackward { get; set; }

    /// <summary>Whether this forward pass checkpoints its decoder layers (see <see cref="GradientCheckpointing"/>).</summary>
    protected bool UsesCheckpointing(KVCache? cache) => GradientCheckpointing && training && cache is null && torch.is_grad_enabled();

    /// <summary>Evaluation mode (no adapter dropout) until the returned scope is disposed; then the module is back in the
    /// mode it had.</summary>
    public IDisposable EvalMode()
    {
        var was = training;
        eval();
        return new ModeScope(this, was);
    }

    sealed class ModeScope(CausalLMModule module, bool training) : IDisposable
    {
        public void Dispose() { if (training) module.train(); }
    }

    /// <summary>The dtype of the parameters (by default float32 on CPU unless the checkpoint is bfloat16, bfloat16 on CUDA).</summary>
    public ScalarType DType => parameters().First().dtype;

    public Device Device => parameters().First().device;

    /// <summary>The model's own parameters under their HF checkpoint keys, in the module's order. A layer wrapped by an
    /// adapter (<see cref="LinearWrapper"/>) contributes its base layer's parameters under the layer's name; the
    /// adapters' own tensors are not the model's and are left out.</summary>
    public IEnumerable<(string Name, Parameter Parameter)> ModelParameters()
    {
        var wrappers = named_modules().Where(m => m.module is LinearWrapper).Select(m => m.name + ".").ToList();
        var inner = LinearWrapper.BaseName + ".";
        foreach (var (name, p) in named_parameters())
        {
            var w = wrappers.Count == 0 ? null : wrappers.FirstOrDefault(prefix => name.StartsWith(prefix, StringComparison.Ordinal));
            if (w is null) yield return (name, p);
            else if (string.CompareOrdinal(name, w.Length, inner, 0, inner.Length) == 0) yield return (w + name[(w.Length + inner.Length)..], p);
        }
    }

    /// <summary>Parameter names (HF checkpoint keys) and tensors (<see cref="ModelParameters"/>).</summary>
    public IReadOnlyDictionary<string, Tensor> StateDict() =>
        ModelParameters().ToDictionary(p => p.Name, p => (Tensor)p.Parameter);

    /// <summary>Checkpoint keys that are not parameters but that HF checkpoints may carry (ignored on load).</summary>
    protected virtual bool IsIgnorableKey(string key) => key.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>Copies checkpoint tensors into the parameters (converting dtype). Every parameter must be present with
    /// its exact shape; unknown keys are an error. <paramref name="source"/> names the file(s) in errors.</summary>
    public void LoadWeights(IReadOnlyDictionary<string, Tensor> tensors, string source) =>
        LoadWeights([new TensorDictionarySource(source, tensors)], source);

    /// <summary>Loads a checkpoint part by part from tensors in memory (see the overload on <see cref="ITensorSource"/>).</summary>
    public void LoadWeights(IEnumerable<(string Source, IReadOnlyDictionary<string, Tensor> Tensors)> parts, string checkpoint) =>
        LoadWeights(parts.Select(p => (ITensorSource)new TensorDictionarySource(p.Source, p.Tensors)), checkpoint);

    /// <summary>Reads a safetensors file or checkpoint folder (<see cref="SafeTensors.OpenCheckpoint"/>) into the
    /// parameters, tensor by tensor: no copy of the checkpoint is held beside the model.</summary>
    public void LoadWeights(string path) => LoadWeights(SafeTensors.OpenCheckpoint(path), SafeTensors.CheckpointFile(path));

    /// <summary>
    /// Loads a checkpoint part by part (one file at a time) and tensor by tensor: each part's names are checked first
    /// (an unknown tensor is an error), then each tensor's shape, then it is read straight into its parameter,
    /// converted to the parameter's dtype. A parameter still on the meta device (a module built by
    /// <see cref="ModelLoader.CreateEmpty"/>) is materialized: fresh memory on <paramref name="device"/> (default CPU) in
    /// its dtype, filled from the checkpoint, put in the parameter's place (<see cref="ParameterSlot"/>) — never
    /// initialized, never a second copy. Every parameter must be present with its exact shape. Errors name the part's
    /// file; a parameter missing from every part names <paramref name="checkpoint"/>.
    /// </summary>
    public void LoadWeights(IEnumerable<ITensorSource> parts, string checkpoint, Device? device = null)
    {
        var own = ModelParameters().ToDictionary(p => p.Name, p => p.Parameter);
        var loaded = new HashSet<string>();
        Dictionary<string, nn.Module>? owners = null;
        using var _ = torch.no_grad();
        foreach (var part in parts)
        {
            var unknown = part.Names.Where(k => !own.ContainsKey(k) && !IsIgnorableKey(k)).OrderBy(k => k, StringComparer.Ordinal).ToList();
            if (unknown.Count > 0)
                throw CheckpointException.For(part.File, unknown[0],
                    $"unexpected tensor for a {Config.ModelType} model with this config ({unknown.Count} unexpected: {string.Join(", ", unknown.Take(5))})");
            foreach (var n in part.Names)
            {
                if (!own.TryGetValue(n, out var p)) continue;
                var shape = part.Shape(n);
                if (!shape.SequenceEqual(p.shape))
                    throw CheckpointException.For(part.File, n, $"wrong shape [{string.Join(", ", shape)}], expected [{string.Join(", ", p.shape)}]");
                if (p.is_meta)
                {
                    owners ??= named_modules().ToDictionary(m => m.name, m => m.module);
                    own[n] = Materialize(owners, n, p, part, device ?? torch.CPU);
                }
                else part.ReadInto(n, p);
                loaded.Add(n);
            }
        }
        foreach (var (n, p) in own)
            if (!loaded.Contains(n))
                throw CheckpointException.For(checkpoint, n, $"missing tensor (expected shape [{string.Join(", ", p.shape)}])");
    }

    /// <summary>The parameter <paramref name="name"/> read from <paramref name="part"/> into new memory, in place of its
    /// meta placeholder.</summary>
    Parameter Materialize(Dictionary<string, nn.Module> owners, string name, Parameter placeholder, ITensorSource part, Device device)
    {
        var cut = name.LastIndexOf('.');
        var owner = cut < 0 ? this : owners[name[..cut]];
        if (owner is LinearWrapper wrapper) owner = wrapper.Base;
        var t = torch.empty(placeholder.shape, placeholder.dtype, device);
        try { part.ReadInto(name, t); }
        catch { t.Dispose(); throw; }
        var p = new Parameter(t, placeholder.requires_grad);
        ParameterSlot.Replace(owner, name[(cut + 1)..], p);
        return p;
    }

    /// <summary>Random initialization as HF does: normal(0, initializer_range) for matrices and embeddings, ones for
    /// norm weights, zeros for biases; reproducible from <paramref name="seed"/>.</summary>
    public void InitializeWeights(long seed)
    {
        using var _ = torch.no_grad();
        var g = new Generator((ulong)seed);
        foreach (var (n, p) in ModelParameters())
        {
            if (n.EndsWith(".bias", StringComparison.Ordinal)) p.zero_();
            else if (p.dim() == 1) p.fill_(1.0);
            else p.normal_(0.0, Config.InitializerRange, g);
        }
    }

    /// <summary>Default position ids: from the attention mask (cumulative count of real tokens - 1) or past + arange(T).</summary>
    protected static Tensor Positions(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds, long past)
    {
        if (positionIds is not null) return positionIds;
        var t = inputIds.shape[1];
        if (attentionMask is not null && IsPacked(attentionMask))
        {
            // packed rows: the position within each example (a run of one example number)
            var m = attentionMask.to(ScalarType.Int64);
            var idx = torch.arange(m.shape[1], dtype: ScalarType.Int64, device: m.device).unsqueeze(0).expand_as(m);
            var starts = m.ne(m.roll(1, 1)).logical_or(idx.eq(Scalars.ZeroL));
            var startIdx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(1).values;
            return (idx - startIdx).narrow(1, m.shape[1] - t, t);
        }
        if (attentionMask is not null)
        {
            var pos = attentionMask.to(ScalarType.Int64).cumsum(1).sub(Scalars.OneL);
            return pos.clamp_min(Scalars.ZeroL).narrow(1, attentionMask.shape[1] - t, t);
        }
        using Scalar from = past, to = past + t;
        return torch.arange(from, to, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0).expand(inputIds.shape[0], t);
    }

    /// <summary>The boolean attention mask [B or 1, 1, T, past + T]: causal, restricted to real keys; a padded query
    /// still sees itself (so that no row is empty). Null when no explicit mask is needed: no padding and either one new
    /// token (it sees every cached key) or no cache (then <see cref="Attend"/> uses the fused causal kernel).</summary>
    /// <summary>Whether an attention mask holds packed rows' example numbers (a value above 1) rather than 0/1.</summary>
    internal static bool IsPacked(Tensor attentionMask)
    {
        if (attentionMask.dtype == ScalarType.Bool || attentionMask.numel() == 0) return false;
        using var max = attentionMask.max();
        return max.to(ScalarType.Int64).item<long>() > 1;
    }

    internal static Tensor? Mask(Tensor? attentionMask, long t, long past, Device device)
    {
        var total = past + t;
        if (attentionMask is null && (t == 1 || past == 0)) return null;
        using Scalar from = past, to = total;
        var q = torch.arange(from, to, dtype: ScalarType.Int64, device: device).unsqueeze(1);
        var k = torch.arange(Scalars.ZeroL, to, dtype: ScalarType.Int64, device: device).unsqueeze(0);
        var causal = k.le(q);
        if (attentionMask is null) return causal.unsqueeze(0).unsqueeze(0);
        if (attentionMask.shape[1] != total)
            throw new ArgumentException($"attention mask covers {attentionMask.shape[1]} positions, expected past {past} + new {t}");
        if (IsPacked(attentionMask))
        {
            // packed rows: a query sees the keys of its own example only (block-diagonal and causal); padding sees itself
            var seg = attentionMask.to(ScalarType.Int64).to(device);
            var qs = seg.narrow(1, past, t).unsqueeze(2);                  // [B,T,1]
            var ks = seg.unsqueeze(1);                                      // [B,1,total]
            var same = qs.eq(ks).logical_and(ks.gt(Scalars.ZeroL));
            return causal.unsqueeze(0).logical_and(same.logical_or(k.eq(q).unsqueeze(0))).unsqueeze(1);
        }
        var keys = attentionMask.to(ScalarType.Bool).unsqueeze(1).unsqueeze(1);   // [B,1,1,total]
        return causal.unsqueeze(0).unsqueeze(0).logical_and(keys.logical_or(k.eq(q).unsqueeze(0).unsqueeze(0)));
    }

    internal static Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor? mask)
    {
        var rep = q.shape[1] / k.shape[1];
        if (rep > 1) { k = k.repeat_interleave(rep, 1); v = v.repeat_interleave(rep, 1); }
        // Without a mask, T queries over T keys are causal; one query over the cache sees all keys.
        var causal = mask is null && q.shape[2] > 1;
        return nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
    }
}
