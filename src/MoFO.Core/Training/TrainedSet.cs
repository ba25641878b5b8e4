using MoFO.Checkpoints;
using MoFO.Distributed;
using MoFO.Models;
using MoFO.Optim;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoFO.Training;

/// <summary>
/// What a run trains, chosen once when it starts (<see cref="Attach"/>): the whole model (<see cref="WholeModel"/>) or a
/// set of adapters in the model's tree (<see cref="AdapterSet"/>). It owns the tensors the optimizer steps, what a
/// checkpoint holds of them, the distance of the model from its base, the share of the model the run changed, and what
/// the run's end does (merge adapters) and writes beside the HF model. The trainer, the step executors, the continual
/// runner and data parallelism ask it instead of branching on the method; the memory plan asks its kind
/// (<see cref="TrainedKind"/>).
/// </summary>
public abstract class TrainedSet : IDisposable
{
    /// <summary>The trained set of a method on a model: its kind's (<see cref="TrainedKind.Of"/>), attached now
    /// (adapters drawn from <paramref name="seed"/>).</summary>
    public static TrainedSet Attach(CausalLM lm, MethodSpec method, long seed) => TrainedKind.Of(method).Attach(lm, seed);

    /// <summary>The tensors the optimizer trains, by name (the model's HF names, or the adapters' PEFT names), in the
    /// order the optimizer keeps them.</summary>
    public abstract IReadOnlyList<(string Name, Parameter Parameter)> Parameters { get; }

    /// <summary>The trained tensors without their names, in the same order.</summary>
    public IReadOnlyList<Parameter> Tensors => Parameters.Select(p => p.Parameter).ToList();

    /// <summary>Whether a decoder layer's trained tensors have their whole gradient when the layer's checkpointed backward
    /// ends, so that a step executor may sum them over ranks or step them right there (<see cref="StepExecutor"/>).</summary>
    public abstract bool GradientsPerLayer { get; }

    /// <summary>The file of a checkpoint folder that holds the trained tensors.</summary>
    public abstract string CheckpointFile { get; }

    /// <summary>The tensors a checkpoint holds, by the names of <see cref="CheckpointFile"/> (streamed from memory).</summary>
    public abstract IReadOnlyDictionary<string, Tensor> CheckpointTensors();

    /// <summary>Reads the trained tensors back from a checkpoint's <see cref="CheckpointFile"/>.</summary>
    public abstract void LoadCheckpoint(string file);

    /// <summary>How the distance of the model from its base is measured during the run.</summary>
    public abstract BaseDistance Distance(IEnumerable<ILossTerm> terms);

    /// <summary>Called before each micro-batch's forward pass with a seed that is a function of the run's seed, the step
    /// and the micro-batch's first example: seeds whatever the trained set draws in its forward (adapter dropout).</summary>
    public virtual void BeginMicroBatch(long seed) { }

    /// <summary>The share of the model's entries that the run changed (NaN where it is not tracked). Every rank calls it.</summary>
    public abstract double TouchedFraction(BlockOptimizer optimizer, ICollective comm);

    /// <summary>At the end of a run: makes the in-memory model the fine-tuned one (adapters merged into the weights).</summary>
    public virtual void Finish() { }

    /// <summary>Writes the fine-tuned model's folder: the HF model, and what the trained set adds beside it.</summary>
    public virtual void WriteModel(CausalLM lm, string folder) => HfFolder.Save(lm, folder);

    public virtual void Dispose() => GC.SuppressFinalize(this);
}

/// <summary>
/// A kind of trained set, as the memory plan and the trainer's choice see it before any weight is loaded: which tensors
/// it trains for a model's shape, how it is attached, and what it adds to a plan (<see cref="MemoryPlanner"/>). One
/// class per kind (<see cref="WholeModel.Kind"/>, <see cref="AdapterSet.Kind"/>); <see cref="Of"/> chooses once.
/// </summary>
public abstract class TrainedKind
{
    /// <summary>The kind a method trains: LoRA's adapters, else the whole model.</summary>
    public static TrainedKind Of(MethodSpec method) => method.Lora is { } lora ? new AdapterSet.Kind(lora) : WholeModel.Kind.Instance;

    /// <summary>Attaches the set to a loaded model.</summary>
    public abstract TrainedSet Attach(CausalLM lm, long seed);

    /// <summary>The trained tensors of a model of this shape, by name, with their shapes (read from the module built on
    /// the meta device: the shapes the loader fills).</summary>
    public abstract IReadOnlyList<(string Name, long[] Shape)> Shapes(CausalLMModule empty);

    /// <summary>Whether the model's own weights are frozen (no gradient, moment or master of their own).</summary>
    public abstract bool BaseFrozen { get; }

    /// <summary>See <see cref="TrainedSet.GradientsPerLayer"/>.</summary>
    public abstract bool GradientsPerLayer { get; }

    /// <summary>What one trained entry is called in a plan ("parameter", "adapter entry").</summary>
    public abstract string EntryName { get; }

    /// <summary>The plan's part for the set's own tensors beside the model's weights (null: none).</summary>
    public virtual PlanPart? OwnPart(ModelShape model, IReadOnlyList<(string Name, long[] Shape)> trained, int bytes, Precision precision) => null;

    /// <summary>Activation bytes per token the set adds: over all layers, and for the largest single layer (what a
    /// checkpointed backward keeps while recomputing one layer).</summary>
    public virtual (double All, double Layer) ActivationsPerToken(IReadOnlyList<(string Name, long[] Shape)> trained, int activationBytes) => (0, 0);

    /// <summary>The bytes the backward of the embeddings and head keeps beyond their gradients, per vocabulary × hidden
    /// entry (see <see cref="MemoryPlanner.HeadFloat32Bytes"/>).</summary>
    public abstract double HeadBackwardBytes(int weightBytes);

    /// <summary>The extra bytes at the end of the run (merging), beyond the resident state and the trained tensors' gradients.</summary>
    public virtual long EndBytes(ModelShape model, IReadOnlyList<(string Name, long[] Shape)> trained) => 0;

    /// <summary>What to say when no setting of the run fits the device.</summary>
    public abstract string NothingFits(MemoryPlan plan);

    /// <summary>A short description for plans and summaries.</summary>
    public abstract string Describe(ModelConfig config);
}

/// <summary>Every weight of the model is trained (full fine-tuning and the optimizer family's members).</summary>
public sealed class WholeModel : TrainedSet
{
    readonly CausalLM _lm;
    readonly IReadOnlyList<(string Name, Parameter Parameter)> _parameters;

    public WholeModel(CausalLM lm)
    {
        _lm = lm;
        _parameters = lm.Module.ModelParameters().ToList();
    }

    public override IReadOnlyList<(string Name, Parameter Parameter)> Parameters => _parameters;
    public override bool GradientsPerLayer => true;
    public override string CheckpointFile => "model.safetensors";
    public override IReadOnlyDictionary<string, Tensor> CheckpointTensors() => _lm.Module.StateDict();
    public override void LoadCheckpoint(string file) => _lm.Module.LoadWeights(file);
    public override BaseDistance Distance(IEnumerable<ILossTerm> terms) => BaseDistance.For(_lm, terms);

    public override double TouchedFraction(BlockOptimizer optimizer, ICollective comm)
    {
        if (!optimizer.TrackTouched) return double.NaN;
        var (touched, counted) = optimizer.TouchedCount();
        var sums = comm.Sum(touched, counted);
        return sums[1] == 0 ? 0 : sums[0] / sums[1];
    }

    /// <summary>The whole model as a kind.</summary>
    public sealed class Kind : TrainedKind
    {
        public static readonly Kind Instance = new();
        public override TrainedSet Attach(CausalLM lm, long seed) => new WholeModel(lm);
        public override IReadOnlyList<(string Name, long[] Shape)> Shapes(CausalLMModule empty) => MemoryPlanner.ParameterShapes(empty);
        public override bool BaseFrozen => false;
        public override bool GradientsPerLayer => true;
        public override string EntryName => "parameter";
        public override double HeadBackwardBytes(int weightBytes) => MemoryPlanner.HeadFloat32Bytes + MemoryPlanner.HeadWeightCopies * weightBytes;
        public override string NothingFits(MemoryPlan plan) =>
            "no setting of precision, checkpointing, micro-batch or length fits: use a device with more memory, or more devices (mpirun -n N shards the optimizer state over N ranks)";
        public override string Describe(ModelConfig config) => "every weight";
    }
}
