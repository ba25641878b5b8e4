using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Distributed;

/// <summary>
/// The collectives over MPI, bound directly to the system's MPI library with function pointers (no wrapper package):
/// the eleven calls used here, against the MPICH ABI (<c>libmpich.so.12</c> / <c>libmpi.so.12</c>: MPICH, Intel MPI,
/// and the MPICH derivatives of Cray and others), whose handles are 32-bit integers with fixed values. MPI.NET was the
/// alternative: it targets MS-MPI (the same ABI family) and needs its <c>msmpi.dll</c> mapped to MPICH on Linux by a
/// DLL-import resolver — a package and a resolver for eleven calls. Open MPI has another ABI (handles are pointers to
/// its globals) and is refused with a message.
/// Every operation is non-blocking underneath and waited for with a deadline (<see cref="Timeout"/>), so that a rank
/// whose peer died or hangs stops with a message instead of waiting for ever. Tensors on a device go through host
/// buffers (pinned for CUDA), or stay on the device where the MPI build is CUDA-aware (<c>MOFO_MPI_CUDA_AWARE=1</c>).
/// </summary>
public sealed unsafe class MpiCollective : ICollective
{
    // MPICH ABI constants (mpi.h of MPICH 3.x/4.x; the same in Intel MPI and MS-MPI)
    const int CommWorld = 0x44000000;
    const int TByte = 0x4c00010d, TFloat = 0x4c00040a, TDouble = 0x4c00080b;
    const int OpSum = 0x58000003;
    const int ThreadSerialized = 2;
    const int ErrorsReturn = 0x54000001;
    static readonly IntPtr InPlace = new(-1);
    static readonly IntPtr StatusIgnore = new(1);
    const int Tag = 7041;

    readonly delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int*, int> _initThread;
    readonly delegate* unmanaged[Cdecl]<int*, int> _initialized;
    readonly delegate* unmanaged[Cdecl]<int*, int> _finalized;
    readonly delegate* unmanaged[Cdecl]<int> _finalize;
    readonly delegate* unmanaged[Cdecl]<int, int*, int> _commRank, _commSize;
    readonly delegate* unmanaged[Cdecl]<int, int, int> _abort;
    readonly delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int, int, int, int*, int> _iallreduce;
    readonly delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int, int, int, int, int*, int> _ireduce;
    readonly delegate* unmanaged[Cdecl]<IntPtr, int, int, int, int, int*, int> _ibcast;
    readonly delegate* unmanaged[Cdecl]<IntPtr, int, int, int, int, int, int*, int> _isend, _irecv;
    readonly delegate* unmanaged[Cdecl]<int*, int*, IntPtr, int> _test;
    readonly delegate* unmanaged[Cdecl]<byte*, int*, int> _libraryVersion;
    readonly delegate* unmanaged[Cdecl]<int, byte*, int*, int> _errorString;
    readonly delegate* unmanaged[Cdecl]<int, int, int> _setErrhandler;
    readonly bool _cudaAware;
    bool _disposed;

    /// <summary>How long one operation may wait for the other ranks before this rank gives up (default 600 s;
    /// <c>MOFO_COLLECTIVE_TIMEOUT</c> in seconds). Long enough for rank 0 to write a 7B checkpoint while the others wait.</summary>
    public TimeSpan Timeout { get; set; }

    /// <summary>The <see cref="Timeout"/> of a new collective: <c>MOFO_COLLECTIVE_TIMEOUT</c> seconds, else 600 (an
    /// unparsable value is an <see cref="OptionException"/> naming the variable).</summary>
    public static TimeSpan DefaultTimeout =>
        TimeSpan.FromSeconds(EnvironmentVariables.PositiveNumber(EnvironmentVariables.CollectiveTimeout) ?? 600);

    /// <summary>What the rank is doing, named in a timeout's message (e.g. "step 12: gradients").</summary>
    public string Activity { get; set; } = "starting";

    public int Rank { get; }
    public int Size { get; }
    public string Backend { get; }
    /// <summary>The MPI library file that was loaded.</summary>
    public string Library { get; }

    /// <summary>Whether this process was started by an MPI launcher with more than one rank (MPICH's Hydra: PMI_SIZE;
    /// Open MPI: OMPI_COMM_WORLD_SIZE; Slurm's PMI: PMI_SIZE).</summary>
    public static bool Launched =>
        int.TryParse(Environment.GetEnvironmentVariable("PMI_SIZE"), out var n) && n > 1
        || int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE"), out var m) && m > 1;

    /// <summary>The ranks of this job on this machine (Hydra: MPI_LOCALNRANKS; Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE), or null.</summary>
    public static int? LocalRanks =>
        int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALNRANKS"), out var n) ? n
        : int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), out var m) ? m : null;

    /// <summary>This rank's index among the job's ranks on this machine (Hydra: MPI_LOCALRANKID; Open MPI:
    /// OMPI_COMM_WORLD_LOCAL_RANK), or null: a rank uses GPU <c>LocalRank mod GPUs</c> when told <c>--device cuda</c>.</summary>
    public static int? LocalRank =>
        int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALRANKID"), out var n) ? n
        : int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_RANK"), out var m) ? m : null;

    static readonly string[] Candidates = ["libmpich.so.12", "libmpi.so.12", "libmpich.so", "libmpi_mt.so.12"];

    /// <summary>Loads the MPI library (MOFO_MPI_LIBRARY, else MPICH's usual names) and initialises MPI.</summary>
    public MpiCollective()
    {
        if (int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE"), out _))
            throw new DistributedException("this job was started by Open MPI's mpirun; MoFO.NET binds the MPICH ABI (MPICH, Intel MPI). Launch with MPICH's launcher: mpirun.mpich -n N ./mofo … (Debian: apt install mpich)");
        var explicitLib = Environment.GetEnvironmentVariable("MOFO_MPI_LIBRARY");
        IntPtr lib = IntPtr.Zero;
        string? loaded = null;
        foreach (var name in string.IsNullOrEmpty(explicitLib) ? Candidates : [explicitLib])
            if (NativeLibrary.TryLoad(name, out lib)) { loaded = name; break; }
        if (loaded is null)
            throw new DistributedException(string.IsNullOrEmpty(explicitLib)
                ? $"no MPI library with the MPICH ABI was found ({string.Join(", ", Candidates)}); install MPICH (Debian: apt install mpich) or set MOFO_MPI_LIBRARY to its libmpi.so.12"
                : $"MOFO_MPI_LIBRARY = {explicitLib}: the library could not be loaded");
        Library = loaded;
        IntPtr F(string name) => NativeLibrary.TryGetExport(lib, name, out var f) ? f
            : throw new DistributedException($"{loaded}: the MPI function {name} is missing (is it an MPI-3 library with the MPICH ABI?)");
        _initThread = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int*, int>)F("MPI_Init_thread");
        _initialized = (delegate* unmanaged[Cdecl]<int*, int>)F("MPI_Initialized");
        _finalized = (delegate* unmanaged[Cdecl]<int*, int>)F("MPI_Finalized");
        _finalize = (delegate* unmanaged[Cdecl]<int>)F("MPI_Finalize");
        _commRank = (delegate* unmanaged[Cdecl]<int, int*, int>)F("MPI_Comm_rank");
        _commSize = (delegate* unmanaged[Cdecl]<int, int*, int>)F("MPI_Comm_size");
        _abort = (delegate* unmanaged[Cdecl]<int, int, int>)F("MPI_Abort");
        _iallreduce = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int, int, int, int*, int>)F("MPI_Iallreduce");
        _ireduce = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr, int, int, int, int, int, int*, int>)F("MPI_Ireduce");
        _ibcast = (delegate* unmanaged[Cdecl]<IntPtr, int, int, int, int, int*, int>)F("MPI_Ibcast");
        _isend = (delegate* unmanaged[Cdecl]<IntPtr, int, int, int, int, int, int*, int>)F("MPI_Isend");
        _irecv = (delegate* unmanaged[Cdecl]<IntPtr, int, int, int, int, int, int*, int>)F("MPI_Irecv");
        _test = (delegate* unmanaged[Cdecl]<int*, int*, IntPtr, int>)F("MPI_Test");
        _libraryVersion = (delegate* unmanaged[Cdecl]<byte*, int*, int>)F("MPI_Get_library_version");
        _errorString = (delegate* unmanaged[Cdecl]<int, byte*, int*, int>)F("MPI_Error_string");
        _setErrhandler = (delegate* unmanaged[Cdecl]<int, int, int>)F("MPI_Comm_set_errhandler");

        var version = new byte[8192];
        int len = 0;
        fixed (byte* v = version) Check(_libraryVersion(v, &len), "MPI_Get_library_version");
        var text = Encoding.ASCII.GetString(version, 0, Math.Clamp(len, 0, version.Length)).Trim('\0', ' ', '\n');
        if (text.Contains("Open MPI", StringComparison.OrdinalIgnoreCase))
            throw new DistributedException($"{loaded} is Open MPI ({FirstLine(text)}); MoFO.NET binds the MPICH ABI. Set MOFO_MPI_LIBRARY to MPICH's libmpich.so.12");
        int flag = 0;
        Check(_initialized(&flag), "MPI_Initialized");
        if (flag == 0)
        {
            int provided = 0;
            Check(_initThread(IntPtr.Zero, IntPtr.Zero, ThreadSerialized, &provided), "MPI_Init_thread");
        }
        // errors come back as codes (a peer that died fails this rank's pending operation), so that this rank can say so
        Check(_setErrhandler(CommWorld, ErrorsReturn), "MPI_Comm_set_errhandler");
        int rank = 0, size = 0;
        Check(_commRank(CommWorld, &rank), "MPI_Comm_rank");
        Check(_commSize(CommWorld, &size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
        Backend = $"mpi ({FirstLine(text)})";
        _cudaAware = EnvironmentVariables.Switch(EnvironmentVariables.MpiCudaAware);
        Timeout = DefaultTimeout;
    }

    static string FirstLine(string s) => s.Split('\n')[0].Trim();

    void Check(int code, string call)
    {
        if (code == 0) return;
        var text = new byte[1024];
        int len = 0;
        string message = "";
        try
        {
            fixed (byte* t = text)
                if (_errorString != null && _errorString(code, t, &len) == 0) message = ": " + Encoding.ASCII.GetString(text, 0, Math.Clamp(len, 0, text.Length)).Trim('\0', ' ', '\n');
        }
        catch (Exception) { }
        throw new DistributedException($"rank {Rank} of {Size}: {call} failed while {Activity} (MPI error {code}{message}); a peer rank has probably died. The last checkpoint in the output folder is intact: resume it with --resume");
    }

    /// <summary>Waits for a request, testing it; spins briefly first (most collectives of a step are short), then sleeps a
    /// millisecond between tests, and gives up after <see cref="Timeout"/>.</summary>
    void Wait(int request, string call)
    {
        int flag = 0;
        var clock = Stopwatch.StartNew();
        for (int i = 0; ; i++)
        {
            Check(_test(&request, &flag, StatusIgnore), "MPI_Test");
            if (flag != 0) return;
            if (i < 20000) Thread.SpinWait(50);
            else Thread.Sleep(1);
            if (clock.Elapsed > Timeout)
                throw new CollectiveTimeoutException(
                    $"rank {Rank} of {Size}: {call} waited {Timeout.TotalSeconds:F0} s for the other ranks while {Activity}; a rank has died or hangs, so the job ends (MOFO_COLLECTIVE_TIMEOUT sets the limit)");
        }
    }

    const long ChunkBytes = 1L << 30;

    static int MpiType(ScalarType t) => t switch
    {
        ScalarType.Float32 => TFloat,
        ScalarType.Float64 => TDouble,
        _ => throw new ArgumentException($"reductions take float32 or float64 tensors, not {t}"),
    };

    /// <summary>Runs <paramref name="op"/> on the tensor's memory in chunks of at most 1 GiB (MPI counts are 32-bit),
    /// staged through a host buffer when the tensor is not contiguous host memory (and the build not CUDA-aware).</summary>
    void OnMemory(Tensor t, bool readBack, Action<IntPtr, long, int> op)
    {
        using var noGrad = no_grad();
        long elem = t.ElementSize;
        bool direct = t.is_contiguous() && (t.device_type == DeviceType.CPU || _cudaAware && t.device_type == DeviceType.CUDA);
        Tensor host = direct ? t : t.device_type == DeviceType.CUDA ? t.cpu().pin_memory() : t.contiguous().clone();
        try
        {
            IntPtr basePtr = DataPointer(host);
            long n = host.numel();
            long per = Math.Max(1, ChunkBytes / elem);
            for (long i = 0; i < n; i += per)
                op(basePtr + (nint)(i * elem), Math.Min(per, n - i), (int)elem);
            if (!direct && readBack) t.copy_(host);
        }
        finally { if (!ReferenceEquals(host, t)) host.Dispose(); }
    }

    static IntPtr DataPointer(Tensor t)
    {
        if (t.numel() == 0) return IntPtr.Zero;
        if (t.device_type == DeviceType.CPU) return (IntPtr)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
        return TensorData(t.Handle);
    }

    static delegate* unmanaged[Cdecl]<IntPtr, IntPtr> _thsData;

    /// <summary>A device tensor's address, from LibTorchSharp's THSTensor_data (TorchSharp exposes no data_ptr).</summary>
    static IntPtr TensorData(IntPtr handle)
    {
        if (_thsData == null)
        {
            if (!NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var lib)
                || !NativeLibrary.TryGetExport(lib, "THSTensor_data", out var f))
                throw new DistributedException("CUDA-aware MPI needs LibTorchSharp's THSTensor_data, which was not found; unset MOFO_MPI_CUDA_AWARE");
            _thsData = (delegate* unmanaged[Cdecl]<IntPtr, IntPtr>)f;
        }
        return _thsData(handle);
    }

    public void AllReduceSum(Tensor t)
    {
        var type = MpiType(t.dtype);
        OnMemory(t, true, (p, n, _) =>
        {
            int req;
            Check(_iallreduce(InPlace, p, (int)n, type, OpSum, CommWorld, &req), "MPI_Iallreduce");
            Wait(req, "allreduce");
        });
    }

    public void ReduceSum(Tensor t, int root)
    {
        var type = MpiType(t.dtype);
        bool atRoot = Rank == root;
        OnMemory(t, atRoot, (p, n, _) =>
        {
            int req;
            Check(atRoot ? _ireduce(InPlace, p, (int)n, type, OpSum, root, CommWorld, &req)
                         : _ireduce(p, IntPtr.Zero, (int)n, type, OpSum, root, CommWorld, &req), "MPI_Ireduce");
            Wait(req, $"reduce to rank {root}");
        });
    }

    public void Broadcast(Tensor t, int root)
    {
        OnMemory(t, Rank != root, (p, n, elem) =>
        {
            int req;
            Check(_ibcast(p, checked((int)(n * elem)), TByte, root, CommWorld, &req), "MPI_Ibcast");
            Wait(req, $"broadcast from rank {root}");
        });
    }

    public void Send(Tensor t, int dest)
    {
        OnMemory(t, false, (p, n, elem) =>
        {
            int req;
            Check(_isend(p, checked((int)(n * elem)), TByte, dest, Tag, CommWorld, &req), "MPI_Isend");
            Wait(req, $"send to rank {dest}");
        });
    }

    public void Receive(Tensor t, int source)
    {
        OnMemory(t, true, (p, n, elem) =>
        {
            int req;
            Check(_irecv(p, checked((int)(n * elem)), TByte, source, Tag, CommWorld, &req), "MPI_Irecv");
            Wait(req, $"receive from rank {source}");
        });
    }

    public void Abort(int code)
    {
        Console.Error.Flush();
        _abort(CommWorld, code);
        Environment.Exit(code);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        int done = 0;
        if (_finalized(&done) == 0 && done == 0) _finalize();
    }
}

/// <summary>A distributed run cannot start or continue (no MPI library, an unsupported launcher, a failed MPI call).</summary>
public sealed class DistributedException(string message) : Exception(message);
