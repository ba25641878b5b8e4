using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Optim;

/// <summary>One parameter tensor as the optimizer sees it, with its state.</summary>
public sealed class Block
{
    internal Block(int index, string name, Tensor parameter, int group, BlockKind kind)
    {
        Index = index; Name = name; Parameter = parameter; Group = group; Kind = kind; Numel = parameter.numel();
    }

    public int Index { get; }
    public string Name { get; }
    public Tensor Parameter { get; }
    /// <summary>The index of the parameter group the block belongs to.</summary>
    public int Group { get; }
    /// <summary>Filtered, Dense or Frozen (resolved; never Auto).</summary>
    public BlockKind Kind { get; internal set; }
    public long Numel { get; }
    /// <summary>The number of steps this block has taken (blocks without a gradient are skipped, as in PyTorch).</summary>
    public long Step { get; internal set; }
    /// <summary>Entries that received the update in the last step that touched this block.</summary>
    public long LastUpdated { get; internal set; }
    /// <summary>The optimizer's moment tensors (Adam: exp_avg, exp_avg_sq; Lion: exp_avg; GD: none); float32 for a
    /// bfloat16 parameter, else the parameter's dtype.</summary>
    /// <remarks>Under <see cref="MomentStorage.Blockwise8Bit"/> the moments live in <see cref="Quantized"/>, and this list
    /// holds their float32 working copies only while the block steps (empty between steps).</remarks>
    public IReadOnlyList<Tensor> Moments { get { Owner?.EnsureState(); return _moments; } }
    internal Tensor[] _moments = Array.Empty<Tensor>();
    /// <summary>The optimizer that holds the block (its state is allocated on first use).</summary>
    internal BlockOptimizer? Owner;
    /// <summary>The moments in 8 bits (<see cref="MomentStorage.Blockwise8Bit"/>); null when they are float32.</summary>
    public IReadOnlyList<QuantizedMoment>? Quantized { get { Owner?.EnsureState(); return _quantized; } }
    internal QuantizedMoment[]? _quantized;
    /// <summary>A bit per entry, set once the entry has received an update (only when touch tracking is on): a flat
    /// uint8 tensor of ⌈numel/8⌉ bytes, bit j of byte i for the flat entry 8i + j, the bits past numel 0
    /// (<see cref="TouchedBits"/>).</summary>
    public Tensor? Touched { get; internal set; }
    /// <summary>The float32 master of a bfloat16 parameter under <see cref="BFloat16Update.MasterWeights"/> (created at
    /// the block's first step from the bfloat16 weight, or by a state load); null otherwise.</summary>
    public Tensor? Master { get; internal set; }
    /// <summary>Whether this process holds the block's state and steps it (false for the blocks that other ranks own in
    /// a data-parallel run with sharded state: <see cref="BlockOptimizer.Shard"/>).</summary>
    public bool Owned { get; internal set; } = true;
    /// <summary>The fast path's guess of the next threshold (speed only; never changes the selection).</summary>
    internal ThresholdGuess Guess { get; } = new();
}

/// <summary>Per-step diagnostics of one block.</summary>
/// <param name="UpdatedFraction">entries that received the update in the last step ÷ numel (weight decay, which
/// scales every entry, is not counted).</param>
/// <param name="TouchedFraction">entries ever updated ÷ numel; null unless touch tracking is on.</param>
public sealed record BlockStats(string Name, BlockKind Kind, long Numel, long Updated, double UpdatedFraction, double? TouchedFraction);

/// <summary>
/// The base of the family: parameter groups, blocks, a step loop under <c>no_grad</c> and a dispose scope, state
/// save/load (to a dictionary of tensors, or atomically to a file) and diagnostics. Members override
/// <see cref="StepBlock"/>.
/// </summary>
public abstract class BlockOptimizer : IDisposable
{
    readonly List<ParamGroup> _groups;
    readonly List<Block> _blocks = new();

    /// <param name="groups">the parameter groups.</param>
    /// <param name="lr">default learning rate of groups that do not set one.</param>
    /// <param name="weightDecay">default decoupled weight decay.</param>
    /// <param name="alpha">default update fraction (members that do not filter ignore it).</param>
    /// <param name="rule">decides Filtered/Dense for groups whose kind is Auto (default: <see cref="BlockRule.Default"/>).</param>
    /// <param name="trackTouched">keep a bit mask per block of the entries ever updated (costs a bit per entry).</param>
    /// <param name="moments">how many moment tensors per block the member keeps.</param>
    protected BlockOptimizer(IEnumerable<ParamGroup> groups, double lr, double weightDecay, double alpha,
                             Func<string, Tensor, BlockKind>? rule, bool trackTouched, int moments)
    {
        Validate.LearningRate(lr);
        Validate.WeightDecay(weightDecay);
        Validate.Alpha(alpha);
        _groups = groups?.ToList() ?? throw new ArgumentException("parameters: null", nameof(groups));
        if (_groups.Count == 0) throw new ArgumentException("parameters: the optimizer got an empty parameter list", nameof(groups));
        rule ??= BlockRule.Default;
        TrackTouched = trackTouched;
        MomentsPerBlock = moments;
        var seen = new HashSet<IntPtr>();
        if (_groups.All(g => g.Parameters.Count == 0))
            throw new ArgumentException("parameters: the optimizer got an empty parameter list", nameof(groups));
        for (int gi = 0; gi < _groups.Count; gi++)
        {
            var g = _groups[gi];
            g.LearningRate = Validate.LearningRate(g.LearningRateOption ?? lr, $"lr (group {gi})");
            g.InitialLearningRate = g.LearningRate;
            g.WeightDecay = Validate.WeightDecay(g.WeightDecayOption ?? weightDecay, $"weight_decay (group {gi})");
            g.Alpha = Validate.Alpha(g.AlphaOption ?? alpha, $"alpha (group {gi})");
            for (int j = 0; j < g.Parameters.Count; j++)
            {
                var p = g.Parameters[j];
                if (p is null) throw new ArgumentException($"parameters: group {gi} holds a null tensor at {j}", nameof(groups));
                if (!p.is_floating_point())
                    throw new ArgumentException($"parameters: {g.Names[j]} has dtype {p.dtype}; only floating-point tensors can be optimized", nameof(groups));
                if (!seen.Add(p.Handle))
                    throw new ArgumentException($"parameters: {g.Names[j]} appears more than once", nameof(groups));
                var kind = g.Kind == BlockKind.Auto ? rule(g.Names[j], p) : g.Kind;
                if (kind == BlockKind.Auto) kind = BlockKind.Dense;
                var b = new Block(_blocks.Count, g.Names[j], p, gi, kind);
                b.Owner = this;
                if (trackTouched) b.Touched = TouchedBits.Zeros(b.Numel, p.device).DetachFromDisposeScope();
                _blocks.Add(b);
            }
        }
    }

    /// <summary>One group of (name, parameter) pairs, as <c>module.named_parameters()</c> returns them.</summary>
    protected static IEnumerable<ParamGroup> OneGroup(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> named)
        => new[] { new ParamGroup(named) };

    /// <summary>One group of unnamed tensors.</summary>
    protected static IEnumerable<ParamGroup> OneGroup(IEnumerable<Tensor> parameters)
        => new[] { new ParamGroup(parameters) };

    public IReadOnlyList<ParamGroup> ParamGroups => _groups;
    public IReadOnlyList<Block> Blocks => _blocks;
    /// <summary>Calls of <see cref="step"/> so far.</summary>
    public long StepCount { get; private set; }
    public bool TrackTouched { get; }

    BFloat16Update _bf16Update = BFloat16Update.StochasticRounding;

    /// <summary>
    /// How bfloat16 parameters take their float32 update (default <see cref="BFloat16Update.StochasticRounding"/>);
    /// float32 parameters ignore it. The moments are float32 in every mode. Switching to
    /// <see cref="BFloat16Update.MasterWeights"/> starts each master from the bfloat16 weight at the block's next step;
    /// switching away drops the masters.
    /// </summary>
    public BFloat16Update BFloat16Update
    {
        get => _bf16Update;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentException($"BFloat16Update = {(int)value}: not a defined value", nameof(value));
            if (value != BFloat16Update.MasterWeights)
                foreach (var b in _blocks) { b.Master?.Dispose(); b.Master = null; }
            _bf16Update = value;
        }
    }

    MomentStorage _storage = MomentStorage.Float32;

    /// <summary>
    /// How the moments are kept between steps (default <see cref="MomentStorage.Float32"/>). Under
    /// <see cref="MomentStorage.Blockwise8Bit"/> each moment is a <see cref="QuantizedMoment"/> (signed code for m, unsigned
    /// for moments that are never negative, such as Adam's v); a step dequantizes the moments of the block it steps into
    /// float32 working copies, runs the member's float32 step on them (MoFO's selection ranks the updated float32 m, and
    /// the update reads the updated float32 m and v, as 8-bit Adam does), and quantizes them back. Setting it converts the
    /// moments the optimizer holds.
    /// </summary>
    public MomentStorage MomentStorage
    {
        get => _storage;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentException($"MomentStorage = {(int)value}: not a defined value", nameof(value));
            if (value == _storage) return;
            if (!_allocated) { _storage = value; return; }
            using var noGrad = no_grad();
            foreach (var b in _blocks.Where(b => b.Owned && b.Kind != BlockKind.Frozen))
            {
                if (value == MomentStorage.Blockwise8Bit)
                {
                    b._quantized = b._moments.Select((m, i) => Quantize(b, i, m)).ToArray();
                    foreach (var m in b._moments) m.Dispose();
                    b._moments = Array.Empty<Tensor>();
                }
                else
                {
                    b._moments = b._quantized!.Select(q => q.Dequantize(b.Parameter.shape).DetachFromDisposeScope()).ToArray();
                    foreach (var q in b._quantized!) q.Dispose();
                    b._quantized = null;
                }
            }
            _storage = value;
        }
    }

    bool _allocated;

    /// <summary>Allocates the moments of the blocks this process owns, as zeros in the storage chosen (once, at the first
    /// step, state access or read of <see cref="Block.Moments"/>: choosing 8-bit storage after construction never
    /// allocates float32 moments first).</summary>
    internal void EnsureState()
    {
        if (_allocated) return;
        _allocated = true;
        using var noGrad = no_grad();
        foreach (var b in _blocks.Where(b => b.Owned && b.Kind != BlockKind.Frozen)) AllocateState(b);
    }

    /// <summary>Zero moments for one block, in the storage chosen.</summary>
    void AllocateState(Block b)
    {
        var p = b.Parameter;
        if (_storage == MomentStorage.Blockwise8Bit)
            b._quantized = Enumerable.Range(0, MomentsPerBlock).Select(i => QuantizedMoment.Zeros(b.Numel, MomentIsSigned(i), p.device)).ToArray();
        else
        {
            var momentType = p.dtype == ScalarType.BFloat16 ? ScalarType.Float32 : p.dtype;
            b._moments = Enumerable.Range(0, MomentsPerBlock).Select(_ => zeros_like(p, dtype: momentType).DetachFromDisposeScope()).ToArray();
        }
    }

    /// <summary>
    /// Freezes a block or makes it trainable again (members that train a moving or static subset of the model). Frozen, a
    /// block holds no moments and its parameter stops taking a gradient (<c>requires_grad</c> off, its gradient freed);
    /// made trainable again (as a dense block), it starts from zero moments and step 0, as a block new to the optimizer
    /// (PyTorch's optimizers, whose state of a tensor is dropped). A frozen block never holds moments: the state of a
    /// block that leaves the trained set is dropped. Its float32 master (bfloat16 under master weights) and touched
    /// mask are kept.
    /// </summary>
    protected void SetFrozen(Block b, bool frozen)
    {
        using var noGrad = no_grad();
        _setsFrozen = true;
        if (b.Parameter.is_leaf)
        {
            b.Parameter.requires_grad_(!frozen);
            if (frozen) b.Parameter.grad = null;
        }
        if (frozen == (b.Kind == BlockKind.Frozen)) return;
        b.Kind = frozen ? BlockKind.Frozen : BlockKind.Dense;
        b.Step = 0;
        b.LastUpdated = 0;
        foreach (var m in b._moments) m.Dispose();
        b._moments = Array.Empty<Tensor>();
        foreach (var q in b._quantized ?? []) q.Dispose();
        b._quantized = null;
        if (!frozen && b.Owned && _allocated) AllocateState(b);
    }

    /// <summary>Whether <see cref="SetFrozen"/> was used: disposing the optimizer then gives every parameter its
    /// <c>requires_grad</c> back (the model may be trained again, by another optimizer).</summary>
    bool _setsFrozen;

    /// <summary>Whether moment <paramref name="index"/> of a block can be negative (it takes the signed 8-bit code); a
    /// member whose moment is never negative (Adam's v) says so, and that moment takes the finer unsigned code.</summary>
    protected virtual bool MomentIsSigned(int index) => true;

    QuantizedMoment Quantize(Block b, int index, Tensor x)
    {
        var q = QuantizedMoment.Zeros(b.Numel, MomentIsSigned(index), b.Parameter.device);
        q.Quantize(x);
        return q;
    }

    /// <summary>Steps an owned block that has a gradient: directly on float32 moments, or on float32 working copies of its
    /// 8-bit moments, quantized back after the step (the copies of one block at a time).</summary>
    void StepOwned(Block b, ParamGroup group, Tensor grad)
    {
        if (b._quantized is null) { StepBlock(b, group, grad); return; }
        var working = b._quantized.Select(q => q.Dequantize(b.Parameter.shape)).ToArray();
        try
        {
            b._moments = working;
            StepBlock(b, group, grad);
            for (int i = 0; i < working.Length; i++) b._quantized[i].Quantize(working[i]);
        }
        finally
        {
            b._moments = Array.Empty<Tensor>();
            foreach (var w in working) w.Dispose();
        }
    }

    /// <summary>The seed of stochastic rounding's counter-based random bits (default 0; saved and restored with the
    /// state). Entry i of block b in its step t rounds with <see cref="BFloat16Rounding.Random16"/>(
    /// <see cref="BFloat16Rounding.StepKey"/>(seed, t, b), i).</summary>
    public long RoundingSeed { get; set; }

    /// <summary>The parameter of a block as this step updates it (its master created if needed; its rounding key).</summary>
    private protected WeightTarget Target(Block b)
    {
        var p = b.Parameter;
        if (p.dtype != ScalarType.BFloat16) return new WeightTarget(p, null, _bf16Update, 0);
        if (_bf16Update == BFloat16Update.MasterWeights && b.Master is null)
        {
            using var noGrad = no_grad();
            b.Master = p.detach().to(ScalarType.Float32).contiguous().DetachFromDisposeScope();
        }
        return new WeightTarget(p, b.Master, _bf16Update, BFloat16Rounding.StepKey(RoundingSeed, b.Step, b.Index));
    }

    /// <summary>The learning rate of the first group (all groups, when set).</summary>
    public double LearningRate
    {
        get => _groups[0].LearningRate;
        set { foreach (var g in _groups) g.LearningRate = value; }
    }

    /// <summary>Clears the gradients (sets them to zero, as TorchSharp's optimizers do).</summary>
    public void zero_grad()
    {
        foreach (var b in _blocks)
        {
            using var g = b.Parameter.grad;
            if (g is not null) { g.detach_(); g.zero_(); }
        }
    }

    /// <summary>One optimizer step over every block that has a gradient.</summary>
    public void step()
    {
        EnsureState();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        StepCount++;
        BeginStep();
        foreach (var b in _blocks)
        {
            if (b.Kind == BlockKind.Frozen) { b.LastUpdated = 0; continue; }
            if (!b.Owned) { b.LastUpdated = 0; StepElsewhere(b, _groups[b.Group]); continue; }
            var grad = b.Parameter.grad;
            if (grad is null) { b.LastUpdated = 0; continue; }
            b.Step++;
            StepOwned(b, _groups[b.Group], grad);
        }
        EndStep();
    }

    // ---------------------------------------------------------------- a step in pieces (the step in the backward pass)

    readonly HashSet<int> _steppedThisStep = new();
    Dictionary<IntPtr, Block>? _byHandle;

    /// <summary>Starts a step whose blocks are stepped one by one as their gradients complete
    /// (<see cref="StepParameter"/>), then <see cref="FinishStep"/>: the same result as <see cref="step"/> for every
    /// member (MoFO's selection is per tensor), with each gradient freed as soon as its block has stepped.</summary>
    public void BeginPartialStep()
    {
        EnsureState();
        StepCount++;
        BeginStep();
        _steppedThisStep.Clear();
    }

    /// <summary>Steps the block of <paramref name="parameter"/> with its gradient (once per step; a frozen block or a
    /// parameter without a gradient takes no update). Returns whether it stepped.</summary>
    public bool StepParameter(Tensor parameter)
    {
        _byHandle ??= _blocks.ToDictionary(b => b.Parameter.Handle);
        if (!_byHandle.TryGetValue(parameter.Handle, out var b) || !_steppedThisStep.Add(b.Index)) return false;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        if (b.Kind == BlockKind.Frozen) { b.LastUpdated = 0; return false; }
        if (!b.Owned) { b.LastUpdated = 0; StepElsewhere(b, _groups[b.Group]); return false; }
        var grad = b.Parameter.grad;
        if (grad is null) { b.LastUpdated = 0; return false; }
        b.Step++;
        StepOwned(b, _groups[b.Group], grad);
        return true;
    }

    /// <summary>Steps every block not stepped yet in this partial step (the embeddings, final norm and head, whose
    /// gradients complete last).</summary>
    public void FinishStep()
    {
        foreach (var b in _blocks) StepParameter(b.Parameter);
        _steppedThisStep.Clear();
        using var noGrad = no_grad();
        EndStep();
    }

    /// <summary>Called once per step before the blocks (e.g. to draw random numbers in a fixed order).</summary>
    protected virtual void BeginStep() { }

    /// <summary>Called once per step after the blocks (<see cref="StepCount"/> counts this step): a member that moves its
    /// trained subset does it here, so that the next forward and backward see the new set's <c>requires_grad</c>.</summary>
    protected virtual void EndStep() { }

    /// <summary>Files the member writes into the run's folder when a run starts (name, text): e.g. Spectrum's choice
    /// (<c>spectrum.json</c>). None by default.</summary>
    public virtual IEnumerable<(string Name, string Text)> RunFiles() => [];

    /// <summary>Called in a step for a block that another rank owns and steps: a member that draws random numbers per
    /// block draws them here too, so that every rank's generator stays in the same state.</summary>
    protected virtual void StepElsewhere(Block block, ParamGroup group) { }

    /// <summary>
    /// Keeps the state of the blocks this process owns only (a data-parallel run whose optimizer state is sharded by
    /// whole tensors): the others' moments, touched masks and masters are freed, their steps are taken by their owners,
    /// and <see cref="state_dict"/>, <see cref="StateWrites"/> and <see cref="load_state_dict"/> cover the owned
    /// blocks and the shared counters only.
    /// </summary>
    public void Shard(Func<Block, bool> owns)
    {
        foreach (var b in _blocks)
        {
            b.Owned = owns(b);
            if (b.Owned) continue;
            foreach (var m in b._moments) m.Dispose();
            b._moments = Array.Empty<Tensor>();
            foreach (var q in b._quantized ?? []) q.Dispose();
            b._quantized = null;
            b.Touched?.Dispose(); b.Touched = null;
            b.Master?.Dispose(); b.Master = null;
        }
    }

    /// <summary>The number of moment tensors each block keeps (Adam 2, Lion 1, GD 0).</summary>
    public int MomentsPerBlock { get; }

    /// <summary>Updates one block in place; must set <see cref="Block.LastUpdated"/> and the touched mask.</summary>
    protected abstract void StepBlock(Block block, ParamGroup group, Tensor grad);

    /// <summary>
    /// The number of entries a filtered block updates: k = ⌊α·numel⌋, computed so that products that are integers in
    /// exact arithmetic (α = 0.29, numel = 100 → 29) are not cut down by binary rounding. k = 0 (a block smaller than
    /// 1/α) means the block gets no filtered update in that step (its moments still advance).
    /// </summary>
    public static long SelectedCount(long numel, double alpha)
    {
        var x = alpha * numel;
        var k = (long)Math.Floor(x);
        if (k + 1 <= numel && (k + 1) - x <= 1e-9 * Math.Max(1.0, x)) k++;
        return Math.Clamp(k, 0, numel);
    }

    // ---------------------------------------------------------------- state

    /// <summary>Extra state of the member (e.g. an RNG state), saved beside the blocks' moments.</summary>
    protected virtual IEnumerable<(string key, Tensor value)> ExtraState() => Array.Empty<(string, Tensor)>();
    /// <summary>Restores what <see cref="ExtraState"/> saved (before the blocks' moments: a member that moves its trained
    /// subset restores the subset here, and the frozen blocks' moments are not read).</summary>
    protected virtual void LoadExtraState(IReadOnlyDictionary<string, Tensor> state) { }

    /// <summary>
    /// The optimizer state as CPU tensors (copies), so that a trainer checkpoint can embed it: the step counters, each
    /// block's moments, touched mask and float32 master (bfloat16 parameters under master weights), each group's
    /// learning rate, the stochastic-rounding seed, and the member's extra state.
    /// </summary>
    public Dictionary<string, Tensor> state_dict()
    {
        EnsureState();
        using var noGrad = no_grad();
        var d = new Dictionary<string, Tensor>
        {
            ["step"] = tensor(StepCount),
            ["rounding.seed"] = tensor(RoundingSeed),
        };
        for (int gi = 0; gi < _groups.Count; gi++)
            d[$"group.{gi}.lr"] = tensor(_groups[gi].LearningRate, ScalarType.Float64);
        foreach (var b in _blocks.Where(b => b.Owned))
        {
            d[$"block.{b.Index}.step"] = tensor(b.Step);
            for (int i = 0; i < b._moments.Length; i++) d[$"block.{b.Index}.moment{i}"] = b._moments[i].cpu().clone();
            for (int i = 0; i < (b._quantized?.Length ?? 0); i++)
            {
                d[$"block.{b.Index}.moment{i}.codes"] = b._quantized![i].Codes.cpu().clone();
                d[$"block.{b.Index}.moment{i}.scales"] = b._quantized![i].Scales.cpu().clone();
            }
            if (b.Touched is not null) d[$"block.{b.Index}.touched"] = b.Touched.cpu().clone();
            if (b.Master is not null) d[$"block.{b.Index}.master"] = b.Master.cpu().clone();
        }
        foreach (var (k, v) in ExtraState()) d[k] = v.cpu().clone();
        return d;
    }

    /// <summary>
    /// The state as <see cref="Checkpoints.TensorWrite"/>s for a checkpoint streamed to disk tensor by tensor: the moments,
    /// touched masks and masters by reference (no copy on the CPU; one tensor at a time is copied to the CPU from another
    /// device), the counters and the member's extra state as small tensors. The keys are those of <see cref="state_dict"/>.
    /// </summary>
    public IReadOnlyList<Checkpoints.TensorWrite> StateWrites()
    {
        EnsureState();
        static Checkpoints.TensorWrite Big(string key, Tensor t) =>
            t.device_type == DeviceType.CPU && t.is_contiguous()
                ? Checkpoints.TensorWrite.Of(key, t)
                : new Checkpoints.TensorWrite(key, t.dtype, t.shape, () => { using var _ = no_grad(); return t.cpu().contiguous(); }, DisposeAfterWrite: true);
        static Checkpoints.TensorWrite Small(string key, Func<Tensor> make, ScalarType dtype, long[] shape) => new(key, dtype, shape, make, DisposeAfterWrite: true);
        var list = new List<Checkpoints.TensorWrite>
        {
            Small("step", () => tensor(StepCount), ScalarType.Int64, []),
            Small("rounding.seed", () => tensor(RoundingSeed), ScalarType.Int64, []),
        };
        for (int gi = 0; gi < _groups.Count; gi++)
        {
            var lr = _groups[gi].LearningRate;
            list.Add(Small($"group.{gi}.lr", () => tensor(lr, ScalarType.Float64), ScalarType.Float64, []));
        }
        foreach (var b in _blocks.Where(b => b.Owned))
        {
            var step = b.Step;
            list.Add(Small($"block.{b.Index}.step", () => tensor(step), ScalarType.Int64, []));
            for (int i = 0; i < b._moments.Length; i++) list.Add(Big($"block.{b.Index}.moment{i}", b._moments[i]));
            for (int i = 0; i < (b._quantized?.Length ?? 0); i++)
            {
                list.Add(Big($"block.{b.Index}.moment{i}.codes", b._quantized![i].Codes));
                list.Add(Big($"block.{b.Index}.moment{i}.scales", b._quantized![i].Scales));
            }
            if (b.Touched is not null) list.Add(Big($"block.{b.Index}.touched", b.Touched));
            if (b.Master is not null) list.Add(Big($"block.{b.Index}.master", b.Master));
        }
        foreach (var (k, v) in ExtraState())
        {
            var copy = v.cpu().clone();
            list.Add(new Checkpoints.TensorWrite(k, copy.dtype, copy.shape, () => copy, DisposeAfterWrite: true));
        }
        return list;
    }

    /// <summary>Restores a state from <see cref="state_dict"/>; throws <see cref="ArgumentException"/> naming a missing or
    /// mismatched entry. Under <see cref="BFloat16Update.MasterWeights"/> a saved master replaces the block's master and
    /// its bfloat16 parameter is set to it rounded to nearest; without a saved master the block starts its master from
    /// the bfloat16 weight at its next step. Saved masters are ignored in the other modes. A state without a rounding
    /// seed (saved before there was one) keeps <see cref="RoundingSeed"/>.</summary>
    public void load_state_dict(IReadOnlyDictionary<string, Tensor> state)
    {
        EnsureState();
        using var noGrad = no_grad();
        Tensor Get(string key)
            => state.TryGetValue(key, out var t) ? t
               : throw new ArgumentException($"optimizer state: the entry '{key}' is missing (was it saved by a different optimizer or parameter list?)", nameof(state));
        StepCount = Get("step").item<long>();
        if (state.TryGetValue("rounding.seed", out var seed)) RoundingSeed = seed.item<long>();
        for (int gi = 0; gi < _groups.Count; gi++) _groups[gi].LearningRate = Get($"group.{gi}.lr").item<double>();
        // first, so that a member that moves its trained subset has the saved one (frozen blocks hold no moments)
        LoadExtraState(state);
        foreach (var b in _blocks.Where(b => b.Owned))
        {
            b.Step = Get($"block.{b.Index}.step").item<long>();
            if (b.Kind != BlockKind.Frozen)
                for (int i = 0; i < MomentsPerBlock; i++) LoadMoment(b, i, state);
            if (b.Touched is not null)
            {
                if (state.TryGetValue($"block.{b.Index}.touched", out var tm)) TouchedBits.Load(b.Touched, tm, b.Numel, $"block.{b.Index}.touched", b.Name);
                else b.Touched.zero_();
            }
            if (b.Parameter.dtype == ScalarType.BFloat16 && _bf16Update == BFloat16Update.MasterWeights)
            {
                b.Master?.Dispose();
                b.Master = null;
                if (state.TryGetValue($"block.{b.Index}.master", out var ms))
                {
                    if (!ms.shape.SequenceEqual(b.Parameter.shape) || ms.dtype != ScalarType.Float32)
                        throw new ArgumentException($"optimizer state: block.{b.Index}.master ({b.Name}) has shape [{string.Join(",", ms.shape)}] {ms.dtype}, the parameter needs [{string.Join(",", b.Parameter.shape)}] Float32", nameof(state));
                    b.Master = ms.to(ScalarType.Float32, b.Parameter.device, copy: true).contiguous().DetachFromDisposeScope();
                    b.Parameter.copy_(b.Master);
                }
            }
        }
    }

    /// <summary>Restores moment <paramref name="i"/> of a block from a state saved in either storage: float32
    /// (<c>block.N.momentI</c>) or 8-bit (<c>block.N.momentI.codes</c> and <c>.scales</c>); a state saved in the other
    /// storage is converted (quantized, or dequantized).</summary>
    void LoadMoment(Block b, int i, IReadOnlyDictionary<string, Tensor> state)
    {
        var key = $"block.{b.Index}.moment{i}";
        var momentType = b.Parameter.dtype == ScalarType.BFloat16 ? ScalarType.Float32 : b.Parameter.dtype;
        if (state.ContainsKey(key + ".codes"))
        {
            // codes first, then scales: a state streamed from a file holds one tensor at a time
            var what = $"{key} ({b.Name})";
            using var temp = b._quantized is null ? QuantizedMoment.Zeros(b.Numel, MomentIsSigned(i), CPU) : null;
            var target = b._quantized?[i] ?? temp!;
            target.LoadCodes(state[key + ".codes"], what);
            if (!state.TryGetValue(key + ".scales", out var scales))
                throw new ArgumentException($"optimizer state: the entry '{key}.scales' is missing beside '{key}.codes' ({b.Name})", nameof(state));
            target.LoadScales(scales, what);
            if (temp is not null)
            {
                using var x = temp.Dequantize(b.Parameter.shape);
                b._moments[i].copy_(x);
            }
            return;
        }
        if (!state.TryGetValue(key, out var src))
            throw new ArgumentException($"optimizer state: the entry '{key}' is missing (was it saved by a different optimizer or parameter list?)", nameof(state));
        if (!src.shape.SequenceEqual(b.Parameter.shape) || src.dtype != momentType)
            throw new ArgumentException($"optimizer state: {key} ({b.Name}) has shape [{string.Join(",", src.shape)}] {src.dtype}, the parameter needs [{string.Join(",", b.Parameter.shape)}] {momentType}", nameof(state));
        if (b._quantized is not null) b._quantized[i].Quantize(src.to(b.Parameter.device));
        else b._moments[i].copy_(src);
    }

    const string Magic = "MOFO-OPTIM-STATE-1";

    /// <summary>Saves the state to a file atomically (a temporary file beside it, then a rename).</summary>
    public void Save(string path)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        var state = state_dict();
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            using (var w = new BinaryWriter(fs, Encoding.UTF8))
            {
                w.Write(Magic);
                w.Write(GetType().Name);
                w.Write(state.Count);
                foreach (var (k, t) in state.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    w.Write(k);
                    TensorIO.Write(w, t);
                }
                w.Flush();
                fs.Flush(true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
            foreach (var t in state.Values) t.Dispose();
        }
    }

    /// <summary>Loads a state saved by <see cref="Save"/>.</summary>
    public void Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"optimizer state file not found: {path}", path);
        var state = new Dictionary<string, Tensor>();
        try
        {
            using (var fs = File.OpenRead(path))
            using (var r = new BinaryReader(fs, Encoding.UTF8))
            {
                string magic;
                try { magic = r.ReadString(); } catch (Exception) { magic = ""; }
                if (magic != Magic) throw new ArgumentException($"{path} is not a MoFO.NET optimizer state file", nameof(path));
                var kind = r.ReadString();
                if (kind != GetType().Name)
                    throw new ArgumentException($"{path} holds the state of a {kind} optimizer; this is a {GetType().Name}", nameof(path));
                var n = r.ReadInt32();
                for (int i = 0; i < n; i++) { var k = r.ReadString(); state[k] = TensorIO.Read(r); }
            }
            load_state_dict(state);
        }
        finally
        {
            foreach (var t in state.Values) t.Dispose();
        }
    }

    // ---------------------------------------------------------------- diagnostics

    /// <summary>Per-block diagnostics of the last step.</summary>
    public IReadOnlyList<BlockStats> Diagnostics()
    {
        using var noGrad = no_grad();
        return _blocks.Select(b =>
        {
            double? touched = null;
            if (b.Touched is not null)
            {
                touched = b.Numel == 0 ? 0.0 : TouchedBits.Count(b.Touched) / (double)b.Numel;
            }
            return new BlockStats(b.Name, b.Kind, b.Numel, b.LastUpdated,
                                  b.Numel == 0 ? 0.0 : b.LastUpdated / (double)b.Numel, touched);
        }).ToList();
    }

    /// <summary>Entries updated in the last step ÷ all entries.</summary>
    public double UpdatedFraction()
    {
        long total = _blocks.Sum(b => b.Numel);
        return total == 0 ? 0 : _blocks.Sum(b => b.LastUpdated) / (double)total;
    }

    /// <summary>Entries ever updated ÷ all entries (needs touch tracking).</summary>
    public double TouchedFraction()
    {
        var (touched, total) = TouchedCount();
        return total == 0 ? 0 : touched / (double)total;
    }

    /// <summary>Entries ever updated and all entries, over the blocks this process owns (needs touch tracking).</summary>
    public (long Touched, long Numel) TouchedCount()
    {
        if (!TrackTouched) throw new InvalidOperationException("TouchedFraction needs the optimizer built with trackTouched = true");
        using var noGrad = no_grad();
        long total = 0, touched = 0;
        foreach (var b in _blocks.Where(b => b.Owned))
        {
            total += b.Numel;
            touched += TouchedBits.Count(b.Touched!);
        }
        return (touched, total);
    }

    protected static void MarkTouched(Block b, Tensor? mask)
    {
        if (b.Touched is null) return;
        TouchedBits.Or(b.Touched, mask, b.Numel);
    }

    public virtual void Dispose()
    {
        foreach (var b in _blocks)
        {
            if (_setsFrozen && b.Parameter.is_leaf && !b.Parameter.IsInvalid) b.Parameter.requires_grad_(true);
            foreach (var m in b._moments) m.Dispose();
            foreach (var q in b._quantized ?? []) q.Dispose();
            b.Touched?.Dispose();
            b.Master?.Dispose();
        }
        GC.SuppressFinalize(this);
    }
}

/// <summary>A raw, self-describing tensor encoding for the optimizer state file.</summary>
internal static class TensorIO
{
    public static void Write(BinaryWriter w, Tensor t)
    {
        using var c = t.cpu().contiguous();
        w.Write((int)c.dtype);
        w.Write(c.dim());
        foreach (var s in c.shape) w.Write(s);
        var bytes = c.bytes;
        w.Write((long)bytes.Length);
        w.Write(bytes);
    }

    public static Tensor Read(BinaryReader r)
    {
        var dtype = (ScalarType)r.ReadInt32();
        var nd = r.ReadInt64();
        var shape = new long[nd];
        for (int i = 0; i < nd; i++) shape[i] = r.ReadInt64();
        var len = r.ReadInt64();
        var t = empty(shape, dtype);
        var data = r.ReadBytes(checked((int)len));
        if (data.Length != len) throw new EndOfStreamException("optimizer state file is truncated");
        data.AsSpan().CopyTo(t.bytes);
        return t;
    }
}
