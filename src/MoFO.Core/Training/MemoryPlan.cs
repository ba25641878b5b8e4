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
/// <param name="Method">the method: its member decides the optimizer state, its loss terms keep a copy of θ0, and its
/// trained set (<see cref="TrainedKind.Of"/>) decides which tensors take gradients, state, masters and touched bits
/// (every parameter, or adapters over a frozen base).</param>
/// <param name="MicroBatch">examples per forward/backward pass.</param>
/// <param name="SequenceLength">tokens per example (the padded length of a batch, at most the run's max length).</param>
/// <param name="MasterWeights">bfloat16 runs keep a float32 copy of the weights in the optimizer.</param>
/// <param name="TrackTouched">the optimizer keeps a bit per entry for the fraction of entries ever updated (⌈n/8⌉ bytes per tensor).</param>
/// <param name="Ranks">the ranks of a data-parallel job (1: a single process): the optimizer state is sharded over them by
/// whole tensors, and the plan is the largest rank's.</param>
/// <param name="ReduceInBackward">a data-parallel run with checkpointing and one micro-batch per rank sums each layer's
/// gradients into their owners in the backward pass and frees the rest (ZeRO-2): a rank holds the gradients it owns,
/// one layer's and the embeddings' and head's.</param>
/// <param name="OptimizerState">how the optimizer keeps its moments: float32, or blockwise 8-bit (a byte per entry and
/// a float32 scale per block, with float32 working copies of one tensor's moments during its step).</param>
/// <param name="OpsPath">the optimizer steps as tensor ops (CUDA) rather than the fused CPU kernels: its temporaries per
/// tensor are the ops path's (the update, the selected result, the mask, a bfloat16 parameter's float32 copies) instead
/// of the kernels' selection buffers.</param>
/// <param name="StepInBackward">each layer's tensors step and free their gradients in the backward pass: the gradients
/// of one layer and of the embeddings, final norm and head are resident at a time.</param>
public sealed record PlanInput(ModelConfig Config, MethodSpec Method, Precision Precision, int MicroBatch, int SequenceLength,
                               bool GradientCheckpointing, bool MasterWeights = false, bool TrackTouched = false, int Ranks = 1,
                               bool StepInBackward = false, int RanksPerDevice = 1, bool ReduceInBackward = false,
                               Optim.MomentStorage OptimizerState = Optim.MomentStorage.Float32, bool OpsPath = false)
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
/// device has free (<see cref="Available"/>). The constants below were measured on this project's CPU build (docs/memory-and-precision.md,
/// "Memory"): the process's runtime (the .NET runtime, libtorch, tokenizer and data), and the activations autograd keeps
/// per token and layer.
/// </summary>
public static class MemoryPlanner
{
    /// <summary>The process before any model: .NET, libtorch's CPU library, the tokenizer, the data (measured: 0.18 GB
    /// at start, 0.3 GB once stories260K trains).</summary>
    public const long RuntimeBytes = 320L << 20;

    /// <summary>libtorch's working memory once the matrix products are large (hidden size ≥ <see cref="LargeHidden"/>):
    /// measured 0.7 GB above the runtime at widths 512 and 2048, in float32 and bfloat16 alike (docs/memory-and-precision.md, "Memory").</summary>
    public const long WorkingBytes = 730L << 20;
    public const int LargeHidden = 512;

    /// <summary>The backward of the embedding and output layers keeps temporaries of vocabulary × hidden entries beyond
    /// their gradients: bytes per entry, a float32 part and copies in the weights' dtype (measured, as above).</summary>
    public const double HeadFloat32Bytes = 10, HeadWeightCopies = 2;

    /// <summary>Activations kept for the backward pass per token and decoder layer, in units of the activation dtype's
    /// size, as coefficients of the hidden size, the intermediate size and the key/value width.</summary>
    public const double ActHidden = 12, ActIntermediate = 5, ActKv = 4;

    static int Bytes(Precision p) => p == Precision.BFloat16 ? 2 : 4;

    /// <summary>Every parameter tensor of a config, by HF name, with its shape: read from the model's module built on the
    /// meta device (<see cref="ModelLoader.CreateEmpty"/>), the tensors the loader fills.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> ParameterShapes(ModelConfig config) => ModelShape.Of(config).Parameters;

    /// <summary>The parameter shapes of a module (its own parameters, adapters left out).</summary>
    internal static IReadOnlyList<(string Name, long[] Shape)> ParameterShapes(CausalLMModule module) =>
        module.ModelParameters().Select(p => (p.Name, p.Parameter.shape)).ToList();

    /// <summary>The entries of a config's parameters.</summary>
    public static long ParameterCount(ModelConfig config) => ModelShape.Of(config).Numel;

    /// <summary>The LoRA adapters of a config, in PEFT's names, with their shapes, as <see cref="LoraAdapters.Attach"/>
    /// makes them (<see cref="LoraAdapters.Shapes"/> on the module built on the meta device). A target that names no
    /// linear layer is an <see cref="OptionException"/> on <c>LoraTargets</c>, as in training.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> AdapterShapes(ModelConfig config, LoraSpec lora) =>
        TrainedShapes(config, new MethodSpec { Optimizer = "adamw", Lora = lora });

    /// <summary>The tensors the optimizer of a method trains, by name, with their shapes (<see cref="TrainedKind.Shapes"/>).</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> TrainedShapes(ModelConfig config, MethodSpec method)
    {
        using var empty = ModelLoader.CreateEmpty(config);
        return TrainedKind.Of(method).Shapes(empty);
    }

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
        if (!File.Exists(path)) throw new MissingAssetException($"{Path.GetFullPath(path)}: not found (expected an HF model folder or a llama2.c .bin file)");
        using var r = new BinaryReader(File.OpenRead(path));
        if (r.BaseStream.Length < 28) throw new Checkpoints.CheckpointException($"{path}: shorter than llama2.c's 28-byte header");
        var h = Enumerable.Range(0, 7).Select(_ => r.ReadInt32()).ToArray();
        return LlamaConfig.FromLlama2c(new Checkpoints.Llama2cHeader(h[0], h[1], h[2], h[3], h[4], Math.Abs(h[5]), h[6], h[5] > 0));
    }

    /// <summary>What a plan is computed from, beside its input: the model's and the trained tensors' shapes, the trained
    /// set's kind (<see cref="TrainedKind"/>), the optimizer member, the byte sizes, the trained entries a rank holds the
    /// state of.</summary>
    sealed record Basis(PlanInput X, ModelShape Model, TrainedKind Kind, IReadOnlyList<(string Name, long[] Shape)> Trained, Member Member, int Wb)
    {
        public long T { get; } = Trained.Sum(s => ModelShape.Count(s.Shape));
        public long LargestTrained { get; } = Trained.Select(s => ModelShape.Count(s.Shape)).DefaultIfEmpty(0).Max();
        /// <summary>A data-parallel rank holds the state of the tensors it owns (whole tensors, balanced): the largest share.</summary>
        public long Owned { get; } = X.Ranks > 1 ? new Distributed.ShardPlan(Trained.Select(s => ModelShape.Count(s.Shape)).ToList(), X.Ranks).Load.Max()
                                                 : Trained.Sum(s => ModelShape.Count(s.Shape));
        /// <summary>The packed touched mask of the tensors whose state a rank holds: ⌈n/8⌉ bytes per tensor (a bit per
        /// entry), over the tensors of the rank with the largest share when sharded.</summary>
        public long OwnedTouchedBytes { get; } = OwnedTouched(Trained, X.Ranks);
        /// <summary>The entries whose moments (and gradients) a rank holds at most at once: the owned share, or less for a
        /// member that holds state for a subset of the trained tensors at a time (<see cref="Member.Held"/>).</summary>
        public long HeldState => Member.Held is null ? Owned : Math.Min(Owned, HeldTensors.Sum(s => ModelShape.Count(s.Shape)));
        /// <summary>Those tensors (all the trained ones for most members).</summary>
        public IReadOnlyList<(string Name, long[] Shape)> HeldTensors => Member.Held is { } held ? held(Trained, X.Method) : Trained;
        public long Tokens => (long)X.MicroBatch * X.SequenceLength;

        static long OwnedTouched(IReadOnlyList<(string Name, long[] Shape)> trained, int ranks)
        {
            var numels = trained.Select(s => ModelShape.Count(s.Shape)).ToList();
            if (ranks <= 1) return numels.Sum(Optim.TouchedBits.Bytes);
            var plan = new Distributed.ShardPlan(numels, ranks);
            int largest = Enumerable.Range(0, ranks).MaxBy(r => plan.Load[r]);
            return Enumerable.Range(0, numels.Count).Where(i => plan.Owner[i] == largest).Sum(i => Optim.TouchedBits.Bytes(numels[i]));
        }
    }

    /// <summary>The plan of a run: one part per component (each asked of the trained set's kind and the optimizer member),
    /// then the peak of each phase.</summary>
    public static MemoryPlan Plan(PlanInput x) => Plan(x, ShapesOf(x));

    /// <summary>The model's and the trained set's tensors for a plan input, from the module built on the meta device
    /// once (a fit search plans many inputs of one model and method).</summary>
    static (ModelShape Model, IReadOnlyList<(string Name, long[] Shape)> Trained) ShapesOf(PlanInput x)
    {
        using var empty = ModelLoader.CreateEmpty(x.Config);
        return (new ModelShape(x.Config, ParameterShapes(empty)), TrainedKind.Of(x.Method).Shapes(empty));
    }

    static MemoryPlan Plan(PlanInput x, (ModelShape Model, IReadOnlyList<(string Name, long[] Shape)> Trained) shapes)
    {
        var (model, trained) = shapes;
        var kind = TrainedKind.Of(x.Method);
        var b = new Basis(x, model, kind, trained, Methods.Member(x.Method.Optimizer), Bytes(x.Precision));
        var parts = new List<PlanPart>
        {
            new("weights", model.Numel * b.Wb, $"{model.Numel:N0} parameters × {b.Wb} B ({x.Precision}){(kind.BaseFrozen ? ", frozen" : "")}"),
        };
        if (kind.OwnPart(model, trained, b.Wb, x.Precision) is { } own) parts.Add(own);
        parts.Add(Gradients(b));
        parts.Add(OptimizerState(b));
        if (x.Method.Terms.Count > 0)
            parts.Add(new("θ0 for loss terms", model.Numel * (long)b.Wb, $"a {x.Precision} copy of the initial weights ({string.Join(", ", x.Method.Terms.Select(t => t.Term))})"));
        parts.Add(Activations(b));
        parts.Add(LogitsAndHead(b));
        bool working = !kind.BaseFrozen && x.Config.HiddenSize >= LargeHidden;
        parts.Add(new("runtime", RuntimeBytes + (working ? WorkingBytes : 0), ".NET, libtorch, tokenizer, data" + (working ? ", libtorch's working memory for large products" : "")));
        return Phases(b, parts);
    }

    /// <summary>The trained tensors' gradients: all of them until the step, unless a decoder layer's are handled as soon as
    /// its backward completes them (<see cref="TrainedKind.GradientsPerLayer"/>): stepped and freed (the step in the
    /// backward), or summed into their owners and freed elsewhere (ZeRO-2).</summary>
    static PlanPart Gradients(Basis b)
    {
        var (x, m) = (b.X, b.Model);
        if (b.Kind.GradientsPerLayer && x.StepInBackward)
            return new("gradients", (m.Outside + m.LargestLayer) * b.Wb, $"stepped and freed per layer in the backward: one layer's and the embeddings' and head's, {x.Precision}");
        if (b.Kind.GradientsPerLayer && x.Ranks > 1 && x.ReduceInBackward)
            return new("gradients", Math.Min(m.Numel, b.Owned + m.Outside + m.LargestLayer) * b.Wb,
                       $"summed into their owners per layer in the backward (ZeRO-2): this rank's share, one layer's and the embeddings' and head's, {x.Precision}");
        if (b.Member.Held is not null)
            return new("gradients", b.HeldState * b.Wb, $"one per {b.Kind.EntryName} of the tensors trained at once ({b.Member.Name}), {x.Precision}");
        return new("gradients", b.T * b.Wb, $"one per {b.Kind.EntryName}, {x.Precision}{(b.Kind.BaseFrozen ? " (none for the frozen base)" : "")}");
    }

    /// <summary>The optimizer's state, as the member declares it (<see cref="Member.Moments"/>, <see cref="Member.SelectionBuffers"/>), over the
    /// entries this rank owns; float32 master weights and the touched mask where the run keeps them.</summary>
    static PlanPart OptimizerState(Basis b)
    {
        var x = b.X;
        int moments = b.Member.Moments;
        long state = b.HeldState * 4L * moments;
        string detail = $"{moments} float32 moment{(moments == 1 ? "" : "s")} per {b.Kind.EntryName} ({b.Member.Name}"
                        + $"{(b.Member.Held is null ? "" : $": {b.HeldState:N0} entries trained at once")})";
        if (x.OptimizerState == Optim.MomentStorage.Blockwise8Bit && moments > 0)
        {
            // a code byte per entry and a float32 scale per block of each tensor; the float32 working copies of the moments
            // of the one tensor that steps
            long quantized = x.Ranks > 1 ? Optim.QuantizedMoment.Bytes(b.HeldState) : b.HeldTensors.Sum(s => Optim.QuantizedMoment.Bytes(ModelShape.Count(s.Shape)));
            state = moments * (quantized + 4L * b.LargestTrained);
            detail = $"{moments} 8-bit moment{(moments == 1 ? "" : "s")} per {b.Kind.EntryName} ({b.Member.Name}; a float32 scale per {Optim.DynamicCode.BlockSize} entries)"
                     + $" + their float32 working copies for the largest tensor ({b.LargestTrained:N0} entries)";
        }
        if (x.Precision == Precision.BFloat16 && x.MasterWeights) { state += b.Owned * 4L; detail += " + float32 master weights"; }
        if (x.TrackTouched) { state += b.OwnedTouchedBytes; detail += $" + a touched bit per {b.Kind.EntryName}"; }
        if (x.Ranks > 1) detail += $"; sharded over {x.Ranks} ranks: the largest share, {b.Owned:N0} entries";
        long step = b.Member.SelectionBuffers(b.LargestTrained, x.Method.Alpha);
        if (x.OpsPath && b.Member.Moments > 0)
        {
            // the step as tensor ops (CUDA): per tensor the update, the selected result and the mask, a bfloat16
            // parameter's widened gradient and working copy (none with a master), and the radix select's chunks
            long perEntry = 4 + 4 + 1 + (x.Precision == Precision.BFloat16 ? 4 + (x.MasterWeights ? 0 : 4) : 0);
            step = b.LargestTrained * perEntry + (b.Member.UsesAlpha ? Optim.TopKSelect.TemporaryBytes(b.LargestTrained, TorchSharp.torch.ScalarType.Float32) : 0);
            detail += $"; the ops path's step temporaries ({perEntry} B per entry of the largest tensor)";
        }
        return new("optimizer state", state + step, detail);
    }

    /// <summary>The activations autograd keeps: each layer's input and one layer's activations with checkpointing, else
    /// every layer's; the trained set's own (adapters' intermediates); attention probabilities where the kernel
    /// materialises them (an explicit mask: heads × T² per example, per layer).</summary>
    static PlanPart Activations(Basis b)
    {
        var (x, c) = (b.X, b.X.Config);
        int ab = b.Wb;
        long tokens = b.Tokens;
        long kvWidth = c is LlamaConfig l ? 2L * l.NumKeyValueHeads * l.HeadDim : 2L * c.HiddenSize;
        long inter = c switch { LlamaConfig lc => lc.IntermediateSize, GptNeoXConfig gc => gc.IntermediateSize, _ => 4L * c.HiddenSize };
        double perTokenLayer = (ActHidden * c.HiddenSize + ActIntermediate * inter + ActKv * kvWidth) * ab;
        var (ownAll, ownLayer) = b.Kind.ActivationsPerToken(b.Trained, ab);
        long activations;
        string detail;
        if (x.GradientCheckpointing)
        {
            activations = (long)(tokens * c.NumHiddenLayers * (double)c.HiddenSize * ab + tokens * (perTokenLayer + ownLayer));
            detail = $"checkpointed: {c.NumHiddenLayers} layer inputs + one layer's activations, {tokens:N0} tokens";
        }
        else
        {
            activations = (long)(tokens * (c.NumHiddenLayers * perTokenLayer + ownAll));
            detail = $"{c.NumHiddenLayers} layers × {tokens:N0} tokens";
        }
        if (ownAll > 0) detail += $"; adapters' intermediates {MemoryPlan.Gb((long)(tokens * (x.GradientCheckpointing ? ownLayer : ownAll)))}";
        long attention = (long)x.MicroBatch * c.NumAttentionHeads * (long)x.SequenceLength * x.SequenceLength * 4L
                         * (x.GradientCheckpointing ? 2 : c.NumHiddenLayers);
        return new("activations", activations + attention, detail + $" (+ attention {MemoryPlan.Gb(attention)})");
    }

    /// <summary>The logits in the model's dtype, their float32 copy, log-softmax and their gradients — of one chunk of
    /// tokens when the step computes its loss in chunks (<see cref="Models.ChunkedLoss"/>) —; the output layers'
    /// backward (<see cref="TrainedKind.HeadBackwardBytes"/>).</summary>
    static PlanPart LogitsAndHead(Basis b)
    {
        var c = b.X.Config;
        bool chunked = Models.ChunkedLoss.Needed(b.Tokens, c.VocabSize);
        long tokens = chunked ? Math.Min(b.Tokens, Models.ChunkedLoss.TokensPerChunk(c.VocabSize)) : b.Tokens;
        long logits = tokens * c.VocabSize * (b.Wb + 4L * 3) + (long)((double)c.VocabSize * c.HiddenSize * b.Kind.HeadBackwardBytes(b.Wb));
        var what = chunked ? $"chunks of {tokens:N0} of the {b.Tokens:N0} tokens" : $"{b.Tokens:N0} tokens";
        return new("logits and head", logits, $"{what} × {c.VocabSize:N0} vocabulary, and the output layers' backward"
                                              + (b.Kind.BaseFrozen ? " (frozen: no weight gradient)" : ""));
    }

    /// <summary>The peaks of the phases: loading (the weights plus the largest tensor being read), a step (every part), a
    /// checkpoint (the resident parts, the gradients that stay allocated between steps, one tensor streamed at a time,
    /// and what the run's end adds: merging).</summary>
    static MemoryPlan Phases(Basis b, List<PlanPart> parts)
    {
        var (x, m) = (b.X, b.Model);
        long resident = parts.Where(p => p.Name is "weights" or "adapters" or "optimizer state" or "θ0 for loss terms" or "runtime").Sum(p => p.Bytes);
        long step = parts.Sum(p => p.Bytes);
        long load = m.Numel * b.Wb + m.Largest * 4L + RuntimeBytes;   // no large products yet
        // gradients stay allocated between steps (zeroed, not freed), unless the step in the backward freed them; a
        // data-parallel rank keeps only those it owns
        long gradients = !b.Kind.GradientsPerLayer ? b.T * b.Wb : x.StepInBackward ? 0 : x.Ranks > 1 ? b.Owned * b.Wb : b.T * b.Wb;
        long checkpoint = resident + gradients + Math.Max(m.Largest * 4L, b.Kind.EndBytes(m, b.Trained));
        return new MemoryPlan(x, m.Numel, parts, load, step, checkpoint) { Trained = b.T, Adapters = b.Kind.BaseFrozen ? b.T : 0 };
    }

    /// <summary>
    /// The plan, or a <see cref="MemoryPlanException"/> when its peak exceeds <paramref name="available"/>: the message
    /// names the need by component, what is available, and the smallest change of settings that would fit.
    /// </summary>
    public static MemoryPlan Check(PlanInput x, long available)
    {
        var shapes = ShapesOf(x);
        var plan = Plan(x, shapes);
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
        var int8 = Optim.MomentStorage.Blockwise8Bit;
        Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, OptimizerState = int8 },
            ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("OptimizerState", "8bit"));
        // the step in the backward frees the base's gradients per layer; a LoRA run has only the adapters' (all kept)
        if (x.MicroBatch >= 1 && TrainedKind.Of(x.Method).GradientsPerLayer)
        {
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, StepInBackward = true },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("StepInBackward", "true"));
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, StepInBackward = true, OptimizerState = int8 },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("StepInBackward", "true"), ("OptimizerState", "8bit"));
        }
        for (var mb = x.MicroBatch / 2; mb >= 1; mb /= 2)
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, MicroBatch = mb },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("MicroBatchSize", mb.ToString(CultureInfo.InvariantCulture)));
        for (var len = x.SequenceLength / 2; len >= 128; len /= 2)
            Add(bf16 with { GradientCheckpointing = true, TrackTouched = false, MicroBatch = 1, SequenceLength = len },
                ("Precision", "bf16"), ("GradientCheckpointing", "true"), ("TrackTouched", "false"), ("MicroBatchSize", "1"), ("MaxLength", len.ToString(CultureInfo.InvariantCulture)));
        var fit = changes.Select(ch => (ch.Fields, Plan: Plan(ch.Input, shapes))).FirstOrDefault(ch => ch.Plan.DeviceNeed <= available);
        var need = string.Join(", ", plan.Parts.Select(p => $"{p.Name} {MemoryPlan.Gb(p.Bytes)}"));
        var perRank = x.RanksPerDevice > 1 ? $" per rank × {x.RanksPerDevice} ranks on this device = {MemoryPlan.Gb(plan.DeviceNeed)}" : "";
        var advice = fit.Plan is null
            ? TrainedKind.Of(x.Method).NothingFits(plan)
            : $"it would fit with {string.Join(", ", fit.Fields.Select(f => $"{f.Field} = {f.Value}"))} ({MemoryPlan.Gb(fit.Plan.DeviceNeed)})";
        throw new MemoryPlanException(
            $"the run needs {MemoryPlan.Gb(plan.Peak)} ({need}){perRank} but {MemoryPlan.Gb(available)} is available; {advice}",
            plan, fit.Fields ?? []);
    }

    /// <summary>The plan input of a training run on a model (its config read from <paramref name="modelPath"/>): the
    /// options' micro-batch at the full max length (the worst case), precision, checkpointing, master weights and
    /// touched mask (auto: only below <see cref="Defaults.SmallModel"/> trained entries, as <see cref="Methods.Create"/>
    /// decides: the parameters, or with LoRA the adapters).</summary>
    public static PlanInput InputOf(string modelPath, TrainingOptions o, int ranks = 1, int ranksPerDevice = 1, bool opsPath = false)
    {
        var config = ConfigOf(modelPath);
        var kind = TrainedKind.Of(o.Method);
        var n = TrainedShapes(config, o.Method).Sum(s => ModelShape.Count(s.Shape));
        return new PlanInput(config, o.Method, o.Precision, o.MicroBatch, o.MaxLength, o.GradientCheckpointing,
                             o.MasterWeights, o.TrackTouched ?? n < Defaults.SmallModel, ranks, o.StepInBackward, ranksPerDevice,
                             ReduceInBackward: Reduction.FreesGradients(ranks, o.GradientCheckpointing, kind.GradientsPerLayer, o.BatchSize, o.MicroBatch),
                             OptimizerState: o.OptimizerState, OpsPath: opsPath);
    }

    /// <summary>Whether a data-parallel run that trains the whole model frees the gradients it does not own in the backward
    /// pass (<see cref="Reduction.FreesGradients"/>, the one rule the step follows).</summary>
    public static bool ReducesInBackward(bool checkpointing, int batchSize, int microBatch, int ranks)
        => Reduction.FreesGradients(ranks, checkpointing, gradientsPerLayer: true, batchSize, microBatch);

    /// <summary>Checks a training run before its model is loaded: its plan, or a <see cref="MemoryPlanException"/>.
    /// <paramref name="available"/>: the memory to plan against (default: what this machine has free now, shared by the
    /// job's ranks on this machine). In a data-parallel job (<see cref="Distributed.Job"/>) the plan is per rank.</summary>
    public static MemoryPlan CheckRun(string modelPath, TrainingOptions o, long? available = null, bool opsPath = false)
    {
        int ranks = Distributed.Job.Distributed ? Distributed.Job.World.Size : 1;
        int perDevice = ranks > 1 && available is null ? Distributed.MpiCollective.LocalRanks ?? 1 : 1;
        return Check(InputOf(modelPath, o, ranks, perDevice, opsPath), Available(available));
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
