using MoFO.Distributed;
using MoFO.Models;
using MoFO.Optim;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Training;

/// <summary>
/// LoRA's adapters (and DoRA's, PiSSA's) as what a run trains (<see cref="LoraAdapters"/>, in the model's tree): the base
/// frozen; checkpoints hold <c>adapter_model.safetensors</c> alone; the distance is ‖ΔW‖ (LoRA: ‖(α/r)·B·A‖); the run's
/// end merges the adapters into the weights and writes PEFT's files beside the merged HF model. Each adapter's gradient is complete only when the whole
/// backward has run (they are small): they are summed over ranks and stepped after it.
/// </summary>
public sealed class AdapterSet : TrainedSet
{
    readonly CausalLM _lm;
    readonly LoraAdapters _adapters;

    AdapterSet(CausalLM lm, LoraAdapters adapters) { _lm = lm; _adapters = adapters; }

    /// <summary>The adapters (attached until the run's end merges them).</summary>
    public LoraAdapters Adapters => _adapters;

    public override IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _adapters.Parameters;
    public override bool GradientsPerLayer => false;
    public override string CheckpointFile => LoraAdapters.WeightsFile;
    public override IReadOnlyDictionary<string, Tensor> CheckpointTensors() => _adapters.CheckpointTensors();
    public override void LoadCheckpoint(string file) => _adapters.LoadWeights(file);
    public override BaseDistance Distance(IEnumerable<ILossTerm> terms) => new BaseDistance.OfAdapters(_adapters);
    public override void BeginMicroBatch(long seed) => _adapters.DropoutSeed = seed;

    /// <summary>The share of the model's entries that merging changes (B·A is dense in each adapted weight). The adapters
    /// are the same on every rank.</summary>
    public override double TouchedFraction(BlockOptimizer optimizer, ICollective comm)
    {
        var (changed, all) = _adapters.ChangedEntries();
        return (double)changed / all;
    }

    /// <summary>Merges the adapters into the weights (the adapters' own tensors stay until they are written).</summary>
    public override void Finish() => _adapters.Merge();

    /// <summary>The merged HF model and, beside it, PEFT's <c>adapter_model.safetensors</c> and <c>adapter_config.json</c>.</summary>
    public override void WriteModel(CausalLM lm, string folder)
    {
        base.WriteModel(lm, folder);
        _adapters.Save(folder, lm.SourcePath);
    }

    public override void Dispose()
    {
        _adapters.Dispose();
        base.Dispose();
    }

    /// <summary>LoRA (DoRA, PiSSA) with its settings, as a kind.</summary>
    public sealed class Kind(LoraSpec spec) : TrainedKind
    {
        public LoraSpec Spec => spec;

        /// <summary>Attaches fresh adapters, or takes those already attached with the same settings.</summary>
        public override TrainedSet Attach(CausalLM lm, long seed)
        {
            var set = LoraAdapters.Of(lm.Module);
            if (set is not null && !set.Spec.Equals(spec))
                throw new OptionException("Method", $"Method {spec}: the model already carries other LoRA adapters ({set.Spec})");
            return new AdapterSet(lm, set ?? LoraAdapters.Attach(lm.Module, spec, seed));
        }

        public override IReadOnlyList<(string Name, long[] Shape)> Shapes(CausalLMModule empty) => LoraAdapters.Shapes(empty, spec);
        public override bool BaseFrozen => true;
        public override bool GradientsPerLayer => false;
        public override string EntryName => "adapter entry";

        public override PlanPart? OwnPart(ModelShape model, IReadOnlyList<(string Name, long[] Shape)> trained, int bytes, Precision precision)
        {
            long t = trained.Sum(s => ModelShape.Count(s.Shape));
            var (what, kept) = spec.Variant switch
            {
                LoraVariant.Dora => ("A [r, in] + B [out, r] + m [out]", 1),
                LoraVariant.Pissa => ("A [r, in] + B [out, r], and their initial values A₀, B₀", 2),
                _ => ("A [r, in] + B [out, r]", 1),
            };
            return new("adapters", kept * t * bytes,
                $"{spec.VariantName} r={spec.Rank} on {string.Join(", ", spec.TargetsFor(model.Config))}: {trained.Count(s => IsA(s.Name)):N0} linear layers × ({what}), {kept * t:N0} entries × {bytes} B ({precision}); {100.0 * t / model.Numel:F2} % of the parameters trained");
        }

        /// <summary>Each adapted layer keeps its [tokens, r] intermediate A·x for B's gradient (and with dropout the mask
        /// and the dropped input, [tokens, in] each, for A's); DoRA also the base output and B·A·x, [tokens, out] each, for
        /// the magnitude's gradient.</summary>
        public override (double All, double Layer) ActivationsPerToken(IReadOnlyList<(string Name, long[] Shape)> trained, int activationBytes)
        {
            // s: A's shape [r, in], or DoRA's magnitude [out]
            double Per(string name, long[] s) =>
                (IsA(name) ? spec.Rank + (spec.Dropout > 0 ? 2.0 * s[1] : 0) : 2.0 * s[0]) * activationBytes;
            var perAdapter = trained.Where(s => IsA(s.Name) || s.Name.EndsWith(".lora_magnitude_vector", StringComparison.Ordinal)).ToList();
            var layer = perAdapter.Where(s => !ModelShape.InLayer(s.Name)).Sum(s => Per(s.Name, s.Shape))
                        + perAdapter.Where(s => ModelShape.InLayer(s.Name)).GroupBy(s => ModelShape.LayerOf(s.Name))
                                    .Select(g => g.Sum(s => Per(s.Name, s.Shape))).DefaultIfEmpty(0).Max();
            return (perAdapter.Sum(s => Per(s.Name, s.Shape)), layer);
        }

        static bool IsA(string name) => name.EndsWith(".lora_A.weight", StringComparison.Ordinal);

        /// <summary>The frozen embeddings and head take no gradient, and neither their backward's temporaries nor
        /// libtorch's working memory for the large weight-gradient products appear; what remains is a float32 buffer of
        /// vocabulary × hidden entries (bytes per entry), in float32 and bfloat16 alike. Measured with <c>mofo bench
        /// memory --method lora</c> (bf16 and fp32, hidden 512 and 2048, 2 and 4 layers, 256 and 1024 tokens,
        /// checkpointed): the plan is 0.95–1.2 × the measured peak, where the full fine-tuning terms over-planned it 1.7–3×.</summary>
        public const double HeadBytes = 4;

        public override double HeadBackwardBytes(int weightBytes) => HeadBytes;

        /// <summary>The run's end merges each adapter into its layer: the weight in float32 and (α/r)·B·A in float32 (DoRA:
        /// and the rescaled sum; PiSSA: the SVD of the start, the weight and U, Vᵀ in float32, is of that order too).
        /// DoRA's forward forms the same float32 W + (α/r)·B·A for one layer at a time.</summary>
        public override long EndBytes(ModelShape model, IReadOnlyList<(string Name, long[] Shape)> trained)
        {
            long largestAdapted = trained.Where(s => IsA(s.Name))
                                         .Zip(trained.Where(s => s.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)),
                                              (a, b) => a.Shape[1] * b.Shape[0]).DefaultIfEmpty(0).Max();
            return (spec.Variant == LoraVariant.Lora ? 2 : 3) * largestAdapted * 4L;
        }

        public override string NothingFits(MemoryPlan plan) =>
            $"no setting of precision, checkpointing, micro-batch or length fits: use a device with more memory (with LoRA the frozen base weights, {MemoryPlan.Gb(plan.Part("weights"))}, are resident on every rank, so more ranks do not help)";

        public override string Describe(ModelConfig config) => spec.ToString();
    }
}
