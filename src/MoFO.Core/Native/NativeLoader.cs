using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;

namespace MoFO.Native;

/// <summary>
/// Loads libtorch and TorchSharp's native bridge before the first torch call.
/// </summary>
/// <remarks>
/// A compiled program (the CLI, the tests) finds the build's patched <c>libLibTorchSharp.so</c> in
/// <c>runtimes/linux-x64/native/</c> by itself. Under <c>dotnet fsi</c>, TorchSharp's own probing does not find it, so
/// <see cref="EnsureLoaded"/> loads libtorch and then the bridge by absolute path from the folder of the referenced
/// assemblies; the later by-name lookups of the runtime then resolve to the already-loaded libraries.
/// Call it first in any entry point (the DSL and the CLI do); it is idempotent and cheap after the first call.
/// </remarks>
public static class NativeLoader
{
    static readonly object Gate = new();
    static bool _loaded;

    /// <summary>The file that was loaded as libLibTorchSharp, or null when TorchSharp's own probing was left to do it.</summary>
    public static string? LoadedBridge { get; private set; }

    public static void EnsureLoaded()
    {
        lock (Gate)
        {
            if (_loaded) return;
            if (RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            {
                var dir = FindNativeDirectory();
                if (dir is not null)
                {
                    var bridge = Path.Combine(dir, "libLibTorchSharp.so");
                    // libtorch.so pulls in libtorch_cpu.so (and libtorch_cuda.so for the CUDA backend) via $ORIGIN.
                    var libtorch = Path.Combine(dir, "libtorch.so");
                    if (File.Exists(libtorch)) Load(libtorch);
                    Load(bridge);
                    LoadedBridge = bridge;
                }
            }
            // The first torch call initializes TorchSharp against the libraries now in the process.
            _ = torch.get_num_threads();
            _loaded = true;
        }
    }

    static void Load(string path)
    {
        try
        {
            NativeLibrary.Load(path);
        }
        catch (DllNotFoundException e) when (e.Message.Contains("GLIBCXX_3.4.32"))
        {
            throw new InvalidOperationException(
                $"{path} requires GLIBCXX_3.4.32, which this system's libstdc++ lacks, and the build did not patch it. " +
                "Rebuild the project with 'dotnet build' (its PatchLibTorchSharp step marks that requirement weak in the output copy), " +
                "or reference the assemblies from a build output folder, not from the NuGet cache.", e);
        }
    }

    /// <summary>The folder holding the native TorchSharp libraries beside the loaded assemblies, if any.</summary>
    public static string? FindNativeDirectory()
    {
        var candidates = new[] { typeof(NativeLoader).Assembly, typeof(torch).Assembly }
            .Select(a => a.Location)
            .Where(l => !string.IsNullOrEmpty(l))
            .Select(l => Path.GetDirectoryName(l)!)
            .Distinct();
        foreach (var baseDir in candidates)
        {
            foreach (var sub in new[] { Path.Combine("runtimes", RidFolder(), "native"), "" })
            {
                var d = Path.Combine(baseDir, sub);
                if (File.Exists(Path.Combine(d, "libLibTorchSharp.so"))) return d;
            }
        }
        return null;
    }

    static string RidFolder() => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? "linux-arm64" : "linux-x64";
}
