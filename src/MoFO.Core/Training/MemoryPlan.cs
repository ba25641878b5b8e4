using System.Globalization;
using MoFO.Models;

namespace MoFO.Training;

/// <summary>The dtype the weights and activations of a run are kept in.</summary>
public enum Precision
{
    /// <summary>float32 weights, gradients and activations.</summary>
    Float32,
    /// <summary>bfloat16 weights, gradients and activations; float32 loss and optimizer moments.</summary>
    BFloat16,
}

/// <summary>What a memory plan is computed for: a model's shape and a run's settings.</summary>
/// <param name="Config">the model's config (its shape: no weights are read).</param>
/// <param name="Method">the method (its member decides the optimizer state; its loss terms keep a copy of θ0; with
/// <see cref="MethodSpec.Lora"/> the base weights are frozen and gradients, optimizer state, master weights and the
/// touched mask are the adapters' alone).</param>
/// <param name="MicroBatch">examples per forward/backward pass.</param>
/// <param name="SequenceLength">tokens per example (the padded length of a batch, at most the run's max length).</param>
/// <param name="MasterWeights">bfloat16 runs keep a float32 copy of the weights in the optimizer.</param>
/// <param name="TrackTouched">the optimizer keeps a byte per entry for the fraction of entries ever updated.</param>
/// <param name="Ranks">the ranks of a data-parallel job (1: a single process): the optimizer state is sharded over them by
/// whole tensors, and the plan is the largest rank's.</param>
/// <param name="ReduceInBackward">a data-parallel run with checkpointing and one micro-batch per rank sums each layer's
/// gradients into their owners in the backward pass and frees the rest (ZeRO-2): a rank holds the gradients it owns,
/// one layer's and the embeddings' and head's.</param>
/// <param name="StepInBackward">each layer's tensors step and free their gradients in the backward pass: the gradients
/// of one layer and of the embeddings, final norm and head are resident at a time.</param>
public sealed record PlanInput(ModelConfig Config, MethodSpec Method, Precision Precision, int MicroBatch, int SequenceLength,
                               bool GradientCheckpointing, bool MasterWeights = false, bool TrackTouched = false, int Ranks = 1,
                               bool StepInBackward = false, int RanksPerDevice = 1, bool ReduceInBackward = false)
{
    /// <summary>The memory the plan needs on its device: the per-rank peak times the ranks that share the device (several
    /// ranks on one machine's CPU memory, one per GPU).</summary>
    public long DeviceNeed(MemoryPlan plan) => plan.Peak * Math.Max(1, RanksPerDevice);
}

/// <summary>One component of a plan, in bytes.</summary>
public sealed record PlanPart(string Name, long Bytes, string Detail);

/// <summary>
/// The predicted peak memory of a fine-tuning run by component (weights, gradients, optimizer state, activations,
/// logits and loss, runtime), computed before anything is loaded. <see cref="Peak"/> is the largest of the phases: loading
/// (the weights plus the largest tensor being read), a training step (everything resident plus the step's activations)
/// and a checkpoint (tensors are streamed to disk, one at a time).
/// </summary>
public sealed record MemoryPlan(PlanInput Input, long Parameters, IReadOnlyList<PlanPart> Parts, long LoadPeak, long StepPeak, long CheckpointPeak)
{
    public long Peak => Math.Max(LoadPeak, Math.Max(StepPeak, CheckpointPeak));

    /// <summary>The entries the optimizer trains: every parameter, or with LoRA the adapters' (<see cref="Adapters"/>).</summary>
    public long Trained { get; init; }

    /// <summary>The LoRA adapters' entries (A and B of every targeted linear layer); 0 without LoRA.</summary>
    public long Adapters { get; init; }

    public long Part(string name) => Parts.Where(p => p.Name == name).Sum(p => p.Bytes);

    /// <summary>The memory the run needs on its device (<see cref="PlanInput.DeviceNeed"/>).</summary>
    public long DeviceNeed => Input.DeviceNeed(this);

    /// <summary>A table: one line per component, then the peak (per rank, in a data-parallel job).</summary>
    public string Describe()
    {
        var lines = Parts.Select(p => $"  {p.Name,-18} {Gb(p.Bytes),10}  {p.Detail}").ToList();
        lines.Add($"  {"peak (step)",-18} {Gb(StepPeak),10}  loading {Gb(LoadPeak)}, checkpoint {Gb(CheckpointPeak)}");
        if (Input.Ranks > 1)
            lines.Add($"  {"per rank",-18} {"",10}  {Input.Ranks} ranks; {(Input.RanksPerDevice > 1 ? $"{Input.RanksPerDevice} share this device's memory: {Gb(DeviceNeed)} in all" : "one per device")}");
        return string.Join(Environment.NewLine, lines);
    }

    public static string Gb(long bytes) => (bytes / 1e9).ToString("F2", CultureInfo.InvariantCulture) + " GB";
}

/// <summary>
/// Plans the memory of a run from the model's shape (<see cref="MemoryPlanner.Plan"/>) and compares it with the memory a
/// device has free (<see cref="Available"/>). The constants below were measured on this project's CPU build (README,
/// "Memory"): the process's runtime (the .NET runtime, libtorch, tokenizer and data), and the activations autograd keeps
/// per token and layer.
/// </summary>
public static class MemoryPlanner
{
    /// <summary>The process before any model: .NET, libtorch's CPU library, the tokenizer, the data (measured: 0.18 GB
    /// at start, 0.3 GB once stories260K trains).</summary>
    public const long RuntimeBytes = 320L << 20;

    /// <summary>libtorch's working memory once the matrix products are large (hidden size ≥ <see cref="LargeHidden"/>):
    /// measured 0.7 GB above the runtime at widths 512 and 2048, in float32 and bfloat16 alike (README, "Memory").</summary>
    public const long WorkingBytes = 730L << 20;
    public const int LargeHidden = 512;

    /// <summary>The backward of the embedding and output layers keeps temporaries of vocabulary × hidden entries beyond
    /// their gradients: bytes per entry, a float32 part and copies in the weights' dtype (measured, as above).</summary>
    public const double HeadFloat32Bytes = 10, HeadWeightCopies = 2;

    /// <summary>LoRA: the frozen embeddings and head take no gradient, and neither their backward's temporaries nor
    /// libtorch's working memory for the large weight-gradient products appear; what remains is a float32 buffer of
    /// vocabulary × hidden entries (bytes per entry), in float32 and bfloat16 alike. Measured with <c>mofo bench memory
    /// --method lora</c> (bf16 and fp32, hidden 512 and 2048, 2 and 4 layers, 256 and 1024 tokens, checkpointed): the
    /// plan is 0.95–1.2 × the measured peak, where the full fine-tuning terms over-planned it 1.7–3×.</summary>
    public const double LoraHeadBytes = 4;

    /// <summary>Activations kept for the backward pass per token and decoder layer, in units of the activation dtype's
    /// size, as coefficients of the hidden size, the intermediate size and the key/value width.</summary>
    public const double ActHidden = 12, ActIntermediate = 5, ActKv = 4;

    static int Bytes(Precision p) => p == Precision.BFloat16 ? 2 : 4;

    /// <summary>Every parameter tensor of a config, by HF name, with its shape (the modules' own parameters).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> ParameterShapes(ModelConfig config)
    {
        var list = new List<(string, long[])>();
        long v = config.VocabSize, h = config.HiddenSize;
        switch (config)
        {
            case LlamaConfig c:
            {
                long hd = c.HeadDim, q = c.NumAttentionHeads * hd, kv = c.NumKeyValueHeads * hd, inter = c.IntermediateSize;
                list.Add(("model.embed_tokens.weight", [v, h]));
                for (int i = 0; i < c.NumHiddenLayers; i++)
                {
                    var p = $"model.layers.{i}.";
                    list.Add((p + "self_attn.q_proj.weight", [q, h]));
                    list.Add((p + "self_attn.k_proj.weight", [kv, h]));
                    list.Add((p + "self_attn.v_proj.weight", [kv, h]));
                    list.Add((p + "self_attn.o_proj.weight", [h, q]));
                    if (c.AttentionBias)
                    {
                        list.Add((p + "self_attn.q_proj.bias", [q])); list.Add((p + "self_attn.k_proj.bias", [kv]));
                        list.Add((p + "self_attn.v_proj.bias", [kv])); list.Add((p + "self_attn.o_proj.bias", [h]));
                    }
                    list.Add((p + "mlp.gate_proj.weight", [inter, h]));
                    list.Add((p + "mlp.up_proj.weight", [inter, h]));
                    list.Add((p + "mlp.down_proj.weight", [h, inter]));
                    if (c.MlpBias)
                    {
                        list.Add((p + "mlp.gate_proj.bias", [inter])); list.Add((p + "mlp.up_proj.bias", [inter])); list.Add((p + "mlp.down_proj.bias", [h]));
                    }
                    list.Add((p + "input_layernorm.weight", [h]));
                    list.Add((p + "post_attention_layernorm.weight", [h]));
                }
                list.Add(("model.norm.weight", [h]));
                if (!c.TieWordEmbeddings) list.Add(("lm_head.weight", [v, h]));
                break;
            }
            case GptNeoXConfig c:
            {
                long inter = c.IntermediateSize;
                list.Add(("gpt_neox.embed_in.weight", [v, h]));
                for (int i = 0; i < c.NumHiddenLayers; i++)
                {
                    var p = $"gpt_neox.layers.{i}.";
                    list.Add((p + "input_layernorm.weight", [h])); list.Add((p + "input_layernorm.bias", [h]));
                    list.Add((p + "post_attention_layernorm.weight", [h])); list.Add((p + "post_attention_layernorm.bias", [h]));
                    list.Add((p + "attention.query_key_value.weight", [3 * h, h]));
                    if (c.AttentionBias) list.Add((p + "attention.query_key_value.bias", [3 * h]));
                    list.Add((p + "attention.dense.weight", [h, h]));
                    if (c.AttentionBias) list.Add((p + "attention.dense.bias", [h]));
                    list.Add((p + "mlp.dense_h_to_4h.weight", [inter, h])); list.Add((p + "mlp.dense_h_to_4h.bias", [inter]));
                    list.Add((p + "mlp.dense_4h_to_h.weight", [h, inter])); list.Add((p + "mlp.dense_4h_to_h.bias", [h]));
                }
                list.Add(("gpt_neox.final_layer_norm.weight", [h])); list.Add(("gpt_neox.final_layer_norm.bias", [h]));
                if (!c.TieWordEmbeddings) list.Add(("embed_out.weight", [v, h]));
                break;
            }
            default:
                throw new OptionException("Config", $"Config {config.ModelType}: no memory model for this architecture");
        }
        return list;
    }

    static long Numel(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The entries of a config's parameters.</summary>
    public static long ParameterCount(ModelConfig config) => ParameterShapes(config).Sum(s => Numel(s.Shape));

    /// <summary>
    /// The LoRA adapters of a config, in PEFT's names (<c>base_model.model.{layer}.lora_A.weight</c> [r, in], then
    /// <c>….lora_B.weight</c> [out, r] per layer), with their shapes: one pair per linear layer whose last name is among
    /// <see cref="LoraSpec.TargetsFor"/>, as <see cref="LoraAdapters.Attach"/> makes them (no weights are read). A target
    /// that names no linear layer is an <see cref="OptionException"/> on <c>LoraTargets</c>, as in training.
    /// </summary>
    public static IReadOnlyList<(string Name, long[] Shape)> AdapterShapes(ModelConfig config, LoraSpec lora)
    {
        var targets = lora.TargetsFor(config);
        // the linear layers: every matrix but the token embeddings (module name, [out, in])
        var linears = ParameterShapes(config)
            .Where(s => s.Shape.Length == 2 && s.Name.EndsWith(".weight", StringComparison.Ordinal))
            .Select(s => (Module: s.Name[..^".weight".Length], s.Shape))
            .Where(l => LastName(l.Module) is not ("embed_tokens" or "embed_in"))
            .ToList();
        foreach (var t in targets)
            if (!linears.Any(l => LastName(l.Module) == t))
                throw new OptionException("LoraTargets",
                    $"LoraTargets: no linear layer named '{t}' in this {config.ModelType} model (its linear layers: {string.Join(", ", linears.Select(l => LastName(l.Module)).Distinct())})");
        var list = new List<(string, long[])>();
        foreach (var (module, shape) in linears.Where(l => targets.Contains(LastName(l.Module))))
        {
            list.Add(($"base_model.model.{module}.lora_A.weight", [lora.Rank, shape[1]]));
            list.Add(($"base_model.model.{module}.lora_B.weight", [shape[0], lora.Rank]));
        }
        return list;
    }

    static string LastName(string path) => path[(path.LastIndexOf('.') + 1)..];

    /// <summary>The tensors the optimizer of a method trains, by name, with their shapes: every parameter, or with LoRA
    /// the adapters (<see cref="AdapterShapes"/>).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> TrainedShapes(ModelConfig config, MethodSpec method)
        => method.Lora is { } lora ? AdapterShapes(config, lora) : ParameterShapes(config);

    /// <summary>The config of a model path without reading its weights: an HF folder's config.json, or a llama2.c
    /// .bin's header.</summary>
    public static ModelConfig ConfigOf(string path)
    {
        if (Directory.Exists(path))
        {
            var file = Path.Combine(path, "config.json");
            if (!File.Exists(file)) throw new Checkpoints.CheckpointException($"{file}: missing (an HF model folder holds config.json)");
            return ModelConfig.Load(file);
        }
        if (!File.Exists(path)) throw new MissingAssetException($"{path}: not found (expected an HF model folder or a llama2.c .bin file)");
        using var r = new BinaryReader(File.OpenRead(path));
        if (r.BaseStream.Length < 28) throw new Checkpoints.CheckpointException($"{path}: shorter than llama2.c's 28-byte header");
        var h = Enumerable.Range(0, 7).Select(_ => r.ReadInt32()).ToArray();
        return LlamaConfig.FromLlama2c(new Checkpoints.Llama2cHeader(h[0], h[1], h[2], h[3], h[4], Math.Abs(h[5]), h[6], h[5] > 0));
    }

    /// <summary>The plan of a run.</summary>
    public static MemoryPlan Plan(PlanInput x)
    {
        var c = x.Config;
        var shapes = ParameterShapes(c);
        long n = shapes.Sum(s => Numel(s.Shape));
        long largest = shapes.Max(s => Numel(s.Shape));
        int wb = Bytes(x.Precision);
        var member = Methods.Member(x.Method.Optimizer);
        int moments = member.Name switch { "lion" => 1, "gd-mofo" => 0, _ => 2 };
        var lora = x.Method.Lora;
        var parts = new List<PlanPart> { new("weights", n * wb, $"{n:N0} parameters × {wb} B ({x.Precision}){(lora is null ? "" : ", frozen")}") };
        // the tensors the optimizer trains: every parameter, or LoRA's adapters (the base frozen: no gradient, moment,
        // master or touched byte of its own)
        var trained = lora is null ? shapes : AdapterShapes(c, lora);
        long t = trained.Sum(s => Numel(s.Shape));
        long largestTrained = trained.Select(s => Numel(s.Shape)).DefaultIfEmpty(0).Max();
        string what = lora is null ? "parameter" : "adapter entry";
        if (lora is not null)
        {
            var layers = trained.Count / 2;
            parts.Add(new("adapters", t * wb,
                $"LoRA r={lora.Rank} on {string.Join(", ", lora.TargetsFor(c))}: {layers:N0} linear layers × (A [r, in] + B [out, r]), {t:N0} entries × {wb} B ({x.Precision}); {100.0 * t / n:F2} % of the parameters"));
        }
        // the embeddings, final norm and head (outside the layers) and the largest layer
        long outside = shapes.Where(s => !s.Name.Contains(".layers.")).Sum(s => Numel(s.Shape));
        long layer = shapes.Where(s => s.Name.Contains(".layers."))
                           .GroupBy(s => s.Name.Substring(0, s.Name.IndexOf('.', s.Name.IndexOf(".layers.") + 8)))
                           .Select(g => g.Sum(s => Numel(s.Shape))).DefaultIfEmpty(0).Max();
        // a data-parallel rank holds the state of the tensors it owns (whole tensors, balanced): the largest share
        long owned = x.Ranks > 1 ? new Distributed.ShardPlan(trained.Select(s => Numel(s.Shape)).ToList(), x.Ranks).Load.Max() : t;
        if (lora is not null)
            // the adapters' gradients: all of them until the step (the trainer steps them after the backward, also with
            // StepInBackward, and sums them over ranks after the backward)
            parts.Add(new("gradients", t * wb, $"one per adapter entry, {x.Precision} (none for the frozen base)"));
        else if (x.StepInBackward)
            parts.Add(new("gradients", (outside + layer) * wb, $"stepped and freed per layer in the backward: one layer's and the embeddings' and head's, {x.Precision}"));
        else if (x.Ranks > 1 && x.ReduceInBackward)
            parts.Add(new("gradients", Math.Min(n, owned + outside + layer) * wb, $"summed into their owners per layer in the backward (ZeRO-2): this rank's share, one layer's and the embeddings' and head's, {x.Precision}"));
        else parts.Add(new("gradients", n * wb, $"one per parameter, {x.Precision}"));
        long state = owned * 4L * moments;
        string stateDetail = $"{moments} float32 moment{(moments == 1 ? "" : "s")} per {what} ({member.Name})";
        if (x.Precision == Precision.BFloat16 && x.MasterWeights) { state += owned * 4L; stateDetail += " + float32 master weights"; }
        if (x.TrackTouched) { state += owned; stateDetail += $" + a touched byte per {what}"; }
        if (x.Ranks > 1) stateDetail += $"; sharded over {x.Ranks} ranks: the largest share, {owned:N0} entries";
        if (member.UsesAlpha && moments > 0)
        {
            // the fused kernel's pooled buffers for the largest filtered tensor: a 1/64 key sample, the candidates and
            // the speculative record (≈ 1.25·α·numel floats and 2 bits per entry)
            long buffers = largestTrained / 64 * 4 + (long)(1.25 * x.Method.Alpha * largestTrained) * 8 + largestTrained / 4;
            state += buffers;
        }
        parts.Add(new("optimizer state", state, stateDetail));
        if (x.Method.Terms.Count > 0)
            parts.Add(new("θ0 for loss terms", n * (long)wb, $"a {x.Precision} copy of the initial weights ({string.Join(", ", x.Method.Terms.Select(t => t.Term))})"));

        long tokens = (long)x.MicroBatch * x.SequenceLength;
        int ab = wb;
        long kvWidth = c is LlamaConfig l ? 2L * l.NumKeyValueHeads * l.HeadDim : 2L * c.HiddenSize;
        long inter = c switch { LlamaConfig lc => lc.IntermediateSize, GptNeoXConfig gc => gc.IntermediateSize, _ => 4L * c.HiddenSize };
        double perTokenLayer = (ActHidden * c.HiddenSize + ActIntermediate * inter + ActKv * kvWidth) * ab;
        // LoRA: each adapted layer keeps its [tokens, r] intermediate A·x for B's gradient (and with dropout the mask
        // and the dropped input, [tokens, in] each, for A's); per token, all adapters and the largest layer's
        double adapterAll = 0, adapterLayer = 0;
        if (lora is not null)
        {
            double Per(long[] a) => (lora.Rank + (lora.Dropout > 0 ? 2.0 * a[1] : 0)) * ab;   // a: A's shape [r, in]
            var perAdapter = trained.Where(s => s.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal)).ToList();
            adapterAll = perAdapter.Sum(s => Per(s.Shape));
            adapterLayer = perAdapter.Where(s => !s.Name.Contains(".layers.")).Sum(s => Per(s.Shape))
                           + perAdapter.Where(s => s.Name.Contains(".layers."))
                                       .GroupBy(s => s.Name.Substring(0, s.Name.IndexOf('.', s.Name.IndexOf(".layers.") + 8)))
                                       .Select(g => g.Sum(s => Per(s.Shape))).DefaultIfEmpty(0).Max();
        }
        long activations;
        string actDetail;
        if (x.GradientCheckpointing)
        {
            // each layer keeps its input; the backward recomputes one layer at a time
            activations = (long)(tokens * c.NumHiddenLayers * (double)c.HiddenSize * ab + tokens * (perTokenLayer + adapterLayer));
            actDetail = $"checkpointed: {c.NumHiddenLayers} layer inputs + one layer's activations, {tokens:N0} tokens";
        }
        else
        {
            activations = (long)(tokens * (c.NumHiddenLayers * perTokenLayer + adapterAll));
            actDetail = $"{c.NumHiddenLayers} layers × {tokens:N0} tokens";
        }
        if (lora is not null) actDetail += $"; adapters' intermediates {MemoryPlan.Gb((long)(tokens * (x.GradientCheckpointing ? adapterLayer : adapterAll)))}";
        // attention probabilities where the kernel materialises them (an explicit mask): heads × T² per example, per layer
        long attention = (long)x.MicroBatch * c.NumAttentionHeads * (long)x.SequenceLength * x.SequenceLength * 4L
                         * (x.GradientCheckpointing ? 2 : c.NumHiddenLayers);
        parts.Add(new("activations", activations + attention, actDetail + $" (+ attention {MemoryPlan.Gb(attention)})"));
        // the logits in the model's dtype, their float32 copy, log-softmax and their gradients; the output layers' backward
        // (LoRA: the frozen embeddings and head take no gradient; see LoraHeadBytes)
        long logits = tokens * c.VocabSize * (ab + 4L * 3)
                      + (long)((double)c.VocabSize * c.HiddenSize * (lora is null ? HeadFloat32Bytes + HeadWeightCopies * ab : LoraHeadBytes));
        parts.Add(new("logits and head", logits, $"{tokens:N0} tokens × {c.VocabSize:N0} vocabulary, and the output layers' backward"
                                                 + (lora is null ? "" : " (frozen: no weight gradient)")));
        bool working = lora is null && c.HiddenSize >= LargeHidden;
        long runtime = RuntimeBytes + (working ? WorkingBytes : 0);
        parts.Add(new("runtime", runtime, ".NET, libtorch, tokenizer, data" + (working ? ", libtorch's working memory for large products" : "")));

        long resident = parts.Where(p => p.Name is "weights" or "adapters" or "optimizer state" or "θ0 for loss terms" or "runtime").Sum(p => p.Bytes);
        long step = parts.Sum(p => p.Bytes);
        long load = n * wb + largest * 4L + RuntimeBytes;   // no large products yet
        long checkpoint;
        if (lora is not null)
        {
            // the adapters' gradients stay; a checkpoint streams the adapters and their state, and the run's end merges
            // each adapter into its layer (the weight in float32 and (α/r)·B·A in float32) before the model is written
            long largestAdapted = trained.Where(s => s.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal))
                                         .Zip(trained.Where(s => s.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)),
                                              (a, b) => a.Shape[1] * b.Shape[0]).DefaultIfEmpty(0).Max();
            checkpoint = resident + t * wb + Math.Max(largest * 4L, 2 * largestAdapted * 4L);
        }
        // gradients stay allocated between steps (zeroed, not freed), unless the step in the backward freed them; a
        // data-parallel rank keeps only those it owns
        else checkpoint = resident + (x.StepInBackward ? 0 : x.Ranks > 1 ? owned * wb : n * wb) + largest * 4L;
        return new MemoryPlan(x, n, parts, load, step, checkpoint) { Trained = t, Adapters = lora is null ? 0 : t };
    }

    /// <summary>
    /// The plan, or a <see cref="MemoryPlanException"/> when its peak exceeds <paramref name="available"/>: the message
    /// names the need by component, what is available, and the smallest change of settings that would fit.
    /// </summary>
    public static MemoryPlan Check(PlanInput x, long available)
    {
        var plan = Plan(x);
        if (plan.DeviceNeed <= available) return plan;
        // candidate changes, least intrusive first; each is a list of (Core field, value) and the input it gives
        var changes = new List<(IReadOnlyList<(string Field, string Value)> Fields, PlanInput Input)>();
        void Add(PlanInput y, params (string, string)[] fields) { if (y != x) changes.Add((fields, y)); }
        var ckpt = x with { GradientCheckpointing = true };
        var bf16 = x with { Precision = Precision.BFloat16, MasterWeights = false };
        Add(x with { TrackTouched = false }, ("TrackTouched", "false"));
        Add(x with { MasterWeights = false }, ("MasterWeights", "false"));
        Add(ckpt, ("GradientCheckpointing", "true"));
        Add(bf16, ("Precision", "bf16"));
        Add(bf16 with { GradientCheckpointing = true }, ("Precision", "bf16"), ("GradientCheckpointing", "true"));
        Add(bf16 with { GradientCheckpointing = true, TrackTouched = false }, ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"));
        // the step in the backward frees the base's gradients per layer; a LoRA run has only the adapters' (all kept)
        if (x.MicroBatch >= 1 && x.Method.Lora is null)
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, StepInBackward = true },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("StepInBackward", "true"));
        for (var mb = x.MicroBatch / 2; mb >= 1; mb /= 2)
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, MicroBatch = mb },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("MicroBatchSize", mb.ToString(CultureInfo.InvariantCulture)));
        for (var len = x.SequenceLength / 2; len >= 128; len /= 2)
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, MicroBatch = 1, SequenceLength = len },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("MicroBatchSize", "1"), ("MaxLength", len.ToString(CultureInfo.InvariantCulture)));
        var fit = changes.Select(ch => (ch.Fields, Plan: Plan(ch.Input))).FirstOrDefault(ch => ch.Plan.DeviceNeed <= available);
        var need = string.Join(", ", plan.Parts.Select(p => $"{p.Name} {MemoryPlan.Gb(p.Bytes)}"));
        var perRank = x.RanksPerDevice > 1 ? $" per rank × {x.RanksPerDevice} ranks on this device = {MemoryPlan.Gb(plan.DeviceNeed)}" : "";
        var advice = fit.Plan is null
            ? x.Method.Lora is not null
                ? $"no setting of precision, checkpointing, micro-batch or length fits: use a device with more memory (with LoRA the frozen base weights, {MemoryPlan.Gb(plan.Part("weights"))}, are resident on every rank, so more ranks do not help)"
                : $"no setting of precision, checkpointing, micro-batch or length fits: use a device with more memory, or more devices (mpirun -n N shards the optimizer state over N ranks)"
            : $"it would fit with {string.Join(", ", fit.Fields.Select(f => $"{f.Field} = {f.Value}"))} ({MemoryPlan.Gb(fit.Plan.DeviceNeed)})";
        throw new MemoryPlanException(
            $"the run needs {MemoryPlan.Gb(plan.Peak)} ({need}){perRank} but {MemoryPlan.Gb(available)} is available; {advice}",
            plan, fit.Fields ?? []);
    }

    /// <summary>The plan input of a training run on a model (its config read from <paramref name="modelPath"/>): the
    /// options' micro-batch at the full max length (the worst case), precision, checkpointing, master weights and
    /// touched mask (auto: only below <see cref="Defaults.SmallModel"/> trained entries, as <see cref="Methods.Create"/>
    /// decides: the parameters, or with LoRA the adapters).</summary>
    public static PlanInput InputOf(string modelPath, TrainingOptions o, int ranks = 1, int ranksPerDevice = 1)
    {
        var config = ConfigOf(modelPath);
        var n = TrainedShapes(config, o.Method).Sum(s => Numel(s.Shape));
        // the trainer sums a LoRA run's (small) gradients after the backward pass, never in it
        return new PlanInput(config, o.Method, o.Precision, o.MicroBatch, o.MaxLength, o.GradientCheckpointing,
                             o.MasterWeights, o.TrackTouched ?? n < Defaults.SmallModel, ranks, o.StepInBackward, ranksPerDevice,
                             ReduceInBackward: o.Method.Lora is null && ReducesInBackward(o.GradientCheckpointing, o.BatchSize, o.MicroBatch, ranks));
    }

    /// <summary>Whether a data-parallel run sums each layer's gradients in the backward pass (the trainer does when
    /// checkpointing and each rank's share of a batch is one micro-batch).</summary>
    public static bool ReducesInBackward(bool checkpointing, int batchSize, int microBatch, int ranks)
        => ranks > 1 && checkpointing && (batchSize + ranks - 1) / ranks <= microBatch;

    /// <summary>Checks a training run before its model is loaded: its plan, or a <see cref="MemoryPlanException"/>.
    /// <paramref name="available"/>: the memory to plan against (default: what this machine has free now, shared by the
    /// job's ranks on this machine). In a data-parallel job (<see cref="Distributed.Job"/>) the plan is per rank.</summary>
    public static MemoryPlan CheckRun(string modelPath, TrainingOptions o, long? available = null)
    {
        int ranks = Distributed.Job.Distributed ? Distributed.Job.World.Size : 1;
        int perDevice = ranks > 1 && available is null ? Distributed.MpiCollective.LocalRanks ?? 1 : 1;
        return Check(InputOf(modelPath, o, ranks, perDevice), Available(available));
    }

    /// <summary>
    /// The memory this process may still use on a device: on the CPU, the smaller of the kernel's available memory
    /// (MemAvailable) and the cgroup's limit minus its usage; on CUDA, the caller gives it (<paramref name="override"/>).
    /// </summary>
    public static long Available(long? @override = null)
    {
        if (@override is long o) return o;
        long avail = long.MaxValue;
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    avail = long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        foreach (var (limitFile, usageFile) in new[] { ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                                      ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes") })
        {
            try
            {
                var limit = File.ReadAllText(limitFile).Trim();
                if (limit == "max" || !long.TryParse(limit, out var l) || l > (1L << 50)) continue;
                var used = long.Parse(File.ReadAllText(usageFile).Trim(), CultureInfo.InvariantCulture);
                avail = Math.Min(avail, l - used);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return avail == long.MaxValue ? 0 : avail;
    }

    /// <summary>Resets the kernel's peak-resident mark of this process (VmHWM) to the current resident size, so that the
    /// peak of a phase can be read after it; false where the kernel does not allow it.</summary>
    public static bool ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); return true; }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>The peak resident memory of this process so far (VmHWM), or 0 where the kernel does not report it.</summary>
    public static long PeakResident() => StatusBytes("VmHWM:");

    /// <summary>The resident memory of this process now (VmRSS), or 0 where the kernel does not report it.</summary>
    public static long Resident() => StatusBytes("VmRSS:");

    static long StatusBytes(string field)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(field, StringComparison.Ordinal))
                    return long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        return 0;
    }
}

/// <summary>A run that its memory plan says cannot fit: refused before anything is loaded (exit code 7 on the
/// command line). The message names the need, the memory available and settings that would fit.</summary>
public sealed class MemoryPlanException(string message, MemoryPlan plan, IReadOnlyList<(string Field, string Value)> fit)
    : OutOfMemoryException(message)
{
    public MemoryPlan Plan { get; } = plan;
    /// <summary>The settings (Core fields and values) that would fit; empty when none does.</summary>
    public IReadOnlyList<(string Field, string Value)> Fit { get; } = fit;
}
