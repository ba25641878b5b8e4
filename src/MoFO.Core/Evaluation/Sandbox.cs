using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace MoFO.Evaluation;

/// <summary>Limits for one untrusted program.</summary>
public sealed record SandboxLimits
{
    /// <summary>Wall-clock limit; the program is killed after it (default 3 s).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(3);
    /// <summary>CPU-time limit in seconds (RLIMIT_CPU).</summary>
    public int CpuSeconds { get; init; } = 3;
    /// <summary>Address-space limit in bytes (RLIMIT_AS; default 1 GiB).</summary>
    public long MemoryBytes { get; init; } = 1L << 30;
    /// <summary>Processes the program may have at once (RLIMIT_NPROC for its own user id).</summary>
    public int MaxProcesses { get; init; } = 16;
    /// <summary>Bytes of stdout plus stderr before the program is killed (default 1 MiB).</summary>
    public long MaxOutputBytes { get; init; } = 1L << 20;
    /// <summary>Largest file the program may write (RLIMIT_FSIZE; default 16 MiB).</summary>
    public long MaxFileBytes { get; init; } = 16L << 20;
}

public enum SandboxStatus { Passed, Failed, TimedOut, OutputLimitExceeded }

/// <summary>What happened to one program: status, exit code, and the tails of its output.</summary>
public sealed record SandboxResult(SandboxStatus Status, int? ExitCode, string Stdout, string Stderr, TimeSpan Elapsed)
{
    public bool Passed => Status == SandboxStatus.Passed;

    /// <summary>A one-line description in human-eval's style ("passed", "timed out", "failed: …").</summary>
    public string Describe() => Status switch
    {
        SandboxStatus.Passed => "passed",
        SandboxStatus.TimedOut => "timed out",
        SandboxStatus.OutputLimitExceeded => "failed: output limit exceeded",
        _ => "failed: " + LastLine(Stderr, ExitCode),
    };

    static string LastLine(string stderr, int? code)
    {
        var line = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim();
        return string.IsNullOrEmpty(line) ? $"exit code {code}" : line;
    }
}

/// <summary>The sandbox cannot run here and the user did not allow running without it.</summary>
public sealed class SandboxUnavailableException(string message, string? remedy = null) : InvalidOperationException(message), IRemedy
{
    /// <summary><c>allowUnsandboxed</c> where running without the sandbox would be possible.</summary>
    public string? Remedy { get; } = remedy;
}

/// <summary>
/// Runs untrusted Python programs (generated code) in a bubblewrap sandbox: no network (a new network namespace),
/// new PID/IPC/UTS namespaces, a read-only view of the system folders only (/usr, /lib*, /bin, /sbin, /etc — not the
/// home or project folders), a private empty /tmp, and one private writable working folder that is deleted
/// afterwards. When run as root, each worker slot runs the program under its own unprivileged user id
/// (60000 + slot), so that the process limit (RLIMIT_NPROC) binds. CPU time, address space, file size, process
/// count and output size are limited; a wall-clock timeout kills the whole sandbox (its PID namespace dies with it).
/// Without bubblewrap, <see cref="Create"/> refuses unless the caller explicitly allows unsandboxed execution, which
/// then still applies the resource limits but not the isolation.
/// </summary>
public sealed class PythonSandbox
{
    public string Python { get; }
    public string? Bwrap { get; }
    public bool Isolated => Bwrap is not null;
    public SandboxLimits Limits { get; }

    PythonSandbox(string python, string? bwrap, SandboxLimits limits)
    {
        Python = python;
        Bwrap = bwrap;
        Limits = limits;
    }

    /// <summary>Finds python3 and bubblewrap. Throws <see cref="SandboxUnavailableException"/> when bubblewrap is missing
    /// and <paramref name="allowUnsandboxed"/> is false.</summary>
    /// <param name="bwrapPath">where bubblewrap is (default: /usr/bin/bwrap, else the PATH).</param>
    public static PythonSandbox Create(SandboxLimits? limits = null, bool allowUnsandboxed = false, string? bwrapPath = null)
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            throw new SandboxUnavailableException("the code-execution sandbox needs Linux (bubblewrap)");
        var python = FindExecutable("python3", preferred: "/usr/bin/python3")
            ?? throw new SandboxUnavailableException("python3 was not found on PATH; install it (Debian: apt-get install python3)");
        var bwrap = bwrapPath is not null ? (File.Exists(bwrapPath) ? bwrapPath : null) : FindExecutable("bwrap", preferred: "/usr/bin/bwrap");
        if (bwrap is null && !allowUnsandboxed)
            throw new SandboxUnavailableException(
                "bubblewrap (bwrap) is not installed, so generated code cannot be run in a sandbox. Install it " +
                "(Debian: apt-get install bubblewrap), or allow running untrusted code on this machine without isolation (allowUnsandboxed).", remedy: "allowUnsandboxed");
        return new PythonSandbox(python, bwrap, limits ?? new SandboxLimits());
    }

    static string? FindExecutable(string name, string preferred)
    {
        if (File.Exists(preferred)) return preferred;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }

    [DllImport("libc", SetLastError = true)] static extern int chown(string path, int owner, int group);
    [DllImport("libc")] static extern uint geteuid();

    static bool IsRoot => geteuid() == 0;

    /// <summary>Runs one program (Python source) with the limits; <paramref name="slot"/> distinguishes parallel workers.</summary>
    public SandboxResult Run(string program, int slot = 0)
    {
        var work = Directory.CreateTempSubdirectory("mofo-sandbox-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(work, "program.py"), program);
            int uid = 60000 + slot;
            bool dropUser = IsRoot && Isolated;
            if (dropUser)
            {
                chown(work, uid, uid);
                chown(Path.Combine(work, "program.py"), uid, uid);
            }
            var psi = new ProcessStartInfo
            {
                FileName = Bwrap ?? "prlimit",
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                WorkingDirectory = work,
            };
            var args = psi.ArgumentList;
            if (Isolated)
            {
                foreach (var a in new[] { "--ro-bind", "/usr", "/usr" }) args.Add(a);
                foreach (var d in new[] { "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc" })
                {
                    args.Add("--ro-bind-try"); args.Add(d); args.Add(d);
                }
                var pyPrefix = PythonPrefix();
                if (pyPrefix is not null) { args.Add("--ro-bind"); args.Add(pyPrefix); args.Add(pyPrefix); }
                foreach (var a in new[] { "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--bind", work, work, "--chdir", work,
                                          "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                                          "--die-with-parent", "--new-session", "--setenv", "HOME", work, "--setenv", "TMPDIR", work,
                                          "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--", "prlimit" })
                    args.Add(a);
            }
            int nproc = dropUser ? Limits.MaxProcesses : CurrentUserProcesses() + Limits.MaxProcesses;
            args.Add($"--cpu={Limits.CpuSeconds}");
            args.Add($"--as={Limits.MemoryBytes}");
            args.Add($"--fsize={Limits.MaxFileBytes}");
            args.Add($"--nproc={nproc}");
            args.Add("--core=0");
            args.Add("--");
            if (dropUser)
            {
                foreach (var a in new[] { "setpriv", $"--reuid={uid}", $"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--" })
                    args.Add(a);
            }
            args.Add(Python);
            args.Add("-I"); // isolated mode: no user site-packages, no PYTHON* environment
            args.Add(Path.Combine(work, "program.py"));
            return Execute(psi);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    string? PythonPrefix()
    {
        var real = new FileInfo(Python).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Python;
        foreach (var sys in new[] { "/usr/", "/bin/", "/lib/", "/sbin/" })
            if (real.StartsWith(sys, StringComparison.Ordinal)) return null;
        // e.g. /opt/python/bin/python3 → /opt/python
        return Path.GetDirectoryName(Path.GetDirectoryName(real));
    }

    static int CurrentUserProcesses()
    {
        try
        {
            var uid = geteuid().ToString();
            int count = 0;
            foreach (var d in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(d), out _)) continue;
                try
                {
                    var status = File.ReadLines(Path.Combine(d, "status")).FirstOrDefault(l => l.StartsWith("Uid:"));
                    if (status is not null && status.Split('\t', StringSplitOptions.RemoveEmptyEntries).ElementAtOrDefault(1) == uid) count++;
                }
                catch (IOException) { }
            }
            return count;
        }
        catch (Exception) { return 256; }
    }

    SandboxResult Execute(ProcessStartInfo psi)
    {
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {psi.FileName}");
        p.StandardInput.Close();
        long total = 0;
        bool overflow = false;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var cts = new CancellationTokenSource();
        Task Pump(StreamReader r, StringBuilder sb) => Task.Run(async () =>
        {
            var buf = new char[8192];
            int n;
            while ((n = await r.ReadAsync(buf, 0, buf.Length)) > 0)
            {
                if (Interlocked.Add(ref total, n) > Limits.MaxOutputBytes)
                {
                    overflow = true;
                    cts.Cancel();
                    return;
                }
                lock (sb) sb.Append(buf, 0, n);
            }
        });
        var pumps = Task.WhenAll(Pump(p.StandardOutput, stdout), Pump(p.StandardError, stderr));
        var exited = p.WaitForExitAsync(cts.Token);
        bool finished;
        try { finished = exited.Wait(Limits.Timeout + TimeSpan.FromMilliseconds(500)) && !overflow; }
        catch (AggregateException) { finished = false; }
        if (!finished)
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            p.WaitForExit(5000);
        }
        pumps.Wait(TimeSpan.FromSeconds(2));
        clock.Stop();
        string Tail(StringBuilder sb) { lock (sb) return sb.Length > 4000 ? sb.ToString(sb.Length - 4000, 4000) : sb.ToString(); }
        if (overflow) return new SandboxResult(SandboxStatus.OutputLimitExceeded, null, Tail(stdout), Tail(stderr), clock.Elapsed);
        if (!finished) return new SandboxResult(SandboxStatus.TimedOut, null, Tail(stdout), Tail(stderr), clock.Elapsed);
        var code = p.ExitCode;
        return new SandboxResult(code == 0 ? SandboxStatus.Passed : SandboxStatus.Failed, code, Tail(stdout), Tail(stderr), clock.Elapsed);
    }
}
