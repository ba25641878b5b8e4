using static TorchSharp.torch;

namespace MoFO.Distributed;

/// <summary>
/// The few collective operations data-parallel training needs, over the ranks of one job. Tensors are reduced and
/// broadcast in place; a backend that cannot reach device memory stages through host buffers. One backend is one class
/// (<see cref="MpiCollective"/> today; NCCL is the next one to add).
/// </summary>
public interface ICollective : IDisposable
{
    /// <summary>This process's rank, 0 ≤ Rank &lt; Size.</summary>
    int Rank { get; }
    /// <summary>The number of ranks in the job.</summary>
    int Size { get; }
    /// <summary>The backend's name, for logs ("single", "mpi: MPICH 4.0.2", …).</summary>
    string Backend { get; }
    /// <summary>Sums a float32 or float64 tensor over all ranks; every rank holds the sum afterwards.</summary>
    void AllReduceSum(Tensor t);
    /// <summary>Sums a float32 or float64 tensor over all ranks into <paramref name="root"/>'s tensor; the other ranks'
    /// tensors are left unchanged.</summary>
    void ReduceSum(Tensor t, int root);
    /// <summary>Copies <paramref name="root"/>'s tensor (any dtype) into every rank's tensor of the same shape.</summary>
    void Broadcast(Tensor t, int root);
    /// <summary>Sends a tensor to one rank, which receives it with <see cref="Receive"/> into a tensor of the same shape
    /// and dtype. Messages from one rank to another arrive in the order sent.</summary>
    void Send(Tensor t, int dest);
    void Receive(Tensor t, int source);
    /// <summary>Ends every rank of the job at once with an exit code (after a rank failed).</summary>
    void Abort(int code);
}

/// <summary>A collective operation waited longer than the job's timeout: another rank died or hangs.</summary>
public sealed class CollectiveTimeoutException(string message) : Exception(message);

/// <summary>One process, no peers: every operation is the identity.</summary>
public sealed class SingleProcess : ICollective
{
    public static readonly SingleProcess Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public string Backend => "single";
    public void AllReduceSum(Tensor t) { }
    public void ReduceSum(Tensor t, int root) { }
    public void Broadcast(Tensor t, int root) { }
    public void Send(Tensor t, int dest) => throw new InvalidOperationException("a single process has no peer to send to");
    public void Receive(Tensor t, int source) => throw new InvalidOperationException("a single process has no peer to receive from");
    public void Abort(int code) => Environment.Exit(code);
    public void Dispose() { }
}

/// <summary>Helpers over any <see cref="ICollective"/>.</summary>
public static class CollectiveExtensions
{
    /// <summary>Names what the rank is doing, for the message of a collective that times out.</summary>
    public static void Activity(this ICollective c, int step, string what)
    {
        if (c is MpiCollective m) m.Activity = $"step {step}: {what}";
    }

    /// <summary>The sum of a number over all ranks (float64).</summary>
    public static double Sum(this ICollective c, double x)
    {
        if (c.Size == 1) return x;
        using var t = tensor(new[] { x });
        c.AllReduceSum(t);
        return t.data<double>()[0];
    }

    /// <summary>The sums of several numbers over all ranks, in one operation.</summary>
    public static double[] Sum(this ICollective c, params double[] xs)
    {
        if (c.Size == 1) return xs;
        using var t = tensor(xs);
        c.AllReduceSum(t);
        return t.data<double>().ToArray();
    }

    /// <summary>Sends a byte string (its length first).</summary>
    public static void SendBytes(this ICollective c, byte[] bytes, int dest)
    {
        using var n = tensor(new[] { (long)bytes.Length });
        c.Send(n, dest);
        if (bytes.Length == 0) return;
        using var t = tensor(bytes);
        c.Send(t, dest);
    }

    public static byte[] ReceiveBytes(this ICollective c, int source)
    {
        using var n = zeros(1, TorchSharp.torch.ScalarType.Int64);
        c.Receive(n, source);
        var length = n.data<long>()[0];
        if (length == 0) return [];
        using var t = zeros(length, TorchSharp.torch.ScalarType.Byte);
        c.Receive(t, source);
        return t.data<byte>().ToArray();
    }
}

/// <summary>
/// Which rank owns which parameter tensor (ZeRO stage 1–2 by whole tensors): tensors are assigned largest first to the
/// rank with the fewest elements so far (ties to the lower rank), so that every rank holds about 1/N of the optimizer
/// state and each tensor's top-α selection stays exact. The assignment depends only on the tensor sizes and N.
/// </summary>
public sealed class ShardPlan
{
    public ShardPlan(IReadOnlyList<long> numels, int ranks)
    {
        if (ranks < 1) throw new ArgumentOutOfRangeException(nameof(ranks), ranks, "ranks must be ≥ 1");
        Ranks = ranks;
        var owner = new int[numels.Count];
        var load = new long[ranks];
        foreach (var i in Enumerable.Range(0, numels.Count).OrderByDescending(i => numels[i]).ThenBy(i => i))
        {
            int best = 0;
            for (int r = 1; r < ranks; r++) if (load[r] < load[best]) best = r;
            owner[i] = best;
            load[best] += numels[i];
        }
        Owner = owner;
        Load = load;
    }

    public int Ranks { get; }
    /// <summary>The owning rank of each tensor, by index.</summary>
    public IReadOnlyList<int> Owner { get; }
    /// <summary>The elements each rank owns.</summary>
    public IReadOnlyList<long> Load { get; }
    /// <summary>The largest share ÷ the even share (1 = perfectly balanced).</summary>
    public double Imbalance => Load.Max() / Math.Max(1.0, Load.Sum() / (double)Ranks);
}

/// <summary>
/// The job this process belongs to: the collective over all its ranks, started on first use — MPI when an MPI launcher
/// started the process with more than one rank (<see cref="MpiCollective.Launched"/>), else a single process.
/// </summary>
public static class Job
{
    static ICollective? _world;
    static readonly object Gate = new();

    public static ICollective World
    {
        get
        {
            lock (Gate) return _world ??= MpiCollective.Launched ? new MpiCollective() : SingleProcess.Instance;
        }
    }

    /// <summary>Whether this process runs as one of several ranks (without starting MPI when it does not).</summary>
    public static bool Distributed => MpiCollective.Launched;

    /// <summary>Whether this process writes the job's files and output: rank 0, or a single process.</summary>
    public static bool IsRoot => !Distributed || World.Rank == 0;

    /// <summary>Finalizes MPI when it was started.</summary>
    public static void End()
    {
        lock (Gate)
        {
            _world?.Dispose();
            _world = null;
        }
    }
}
