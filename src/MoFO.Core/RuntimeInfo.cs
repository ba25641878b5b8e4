using System.Reflection;
using MoFO.Native;
using TorchSharp;

namespace MoFO;

/// <summary>What <c>mofo info</c> reports: versions, devices, threads.</summary>
public sealed record RuntimeInfo(
    string MoFOVersion,
    string TorchSharpVersion,
    string LibTorchVersion,
    string Backend,
    IReadOnlyList<string> Devices,
    int Threads,
    string? NativeBridge)
{
    /// <summary>Loads the native libraries if needed and reads the versions from them.</summary>
    public static RuntimeInfo Collect()
    {
        NativeLoader.EnsureLoaded();
        var devices = new List<string> { "cpu" };
        if (torch.cuda.is_available())
            for (int i = 0; i < torch.cuda.device_count(); i++) devices.Add($"cuda:{i}");
        return new RuntimeInfo(
            Version(typeof(RuntimeInfo).Assembly),
            Version(typeof(torch).Assembly),
            ReadLibTorchVersion(),
            torch.cuda.is_available() ? "cuda" : "cpu",
            devices,
            torch.get_num_threads(),
            NativeLoader.LoadedBridge);
    }

    /// <summary>The libtorch version, as libtorch itself reports it (e.g. "2.10.0").</summary>
    public static string ReadLibTorchVersion()
    {
        NativeLoader.EnsureLoaded();
        return torch.__version__;
    }

    static string Version(Assembly a) =>
        a.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? a.GetName().Version?.ToString() ?? "unknown";
}
