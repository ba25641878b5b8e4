using System.Globalization;

namespace MoFO;

/// <summary>
/// The <c>MOFO_*</c> environment variables that hold a number or a switch, read in one place: unset (or empty) gives
/// the default, anything unparsable is an <see cref="OptionException"/> whose field is the variable (never ignored).
/// Paths (<c>MOFO_DATA</c>, <c>MOFO_CACHE</c>, <c>MOFO_TENSORBOARD</c>, <c>MOFO_MPI_LIBRARY</c>) are read where they
/// are used.
/// </summary>
public static class EnvironmentVariables
{
    /// <summary>Seconds a collective operation waits for the other ranks (a positive number; default 600).</summary>
    public const string CollectiveTimeout = "MOFO_COLLECTIVE_TIMEOUT";
    /// <summary>Whether the MPI build is CUDA-aware (1 or 0; default 0).</summary>
    public const string MpiCudaAware = "MOFO_MPI_CUDA_AWARE";
    /// <summary>Torch threads of a process (a positive integer; default: libtorch's, or the cores ÷ the ranks).</summary>
    public const string Threads = "MOFO_THREADS";
    /// <summary>Points of a sweep run at once (a positive integer; default by scale).</summary>
    public const string Parallel = "MOFO_PARALLEL";

    static string? Text(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } s ? s.Trim() : null;

    /// <summary>A positive integer, or null when the variable is unset.</summary>
    public static int? PositiveInteger(string name) =>
        Text(name) switch
        {
            null => null,
            var s when int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 1 => n,
            var s => throw new OptionException(name, $"{name}={s}: expected a positive integer"),
        };

    /// <summary>A positive finite number, or null when the variable is unset.</summary>
    public static double? PositiveNumber(string name) =>
        Text(name) switch
        {
            null => null,
            var s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) && x > 0 && double.IsFinite(x) => x,
            var s => throw new OptionException(name, $"{name}={s}: expected a positive number"),
        };

    /// <summary>A switch: 1 or true (on), 0 or false (off); unset is off.</summary>
    public static bool Switch(string name) =>
        Text(name)?.ToLowerInvariant() switch
        {
            null or "0" or "false" => false,
            "1" or "true" => true,
            _ => throw new OptionException(name, $"{name}={Text(name)}: expected 1 or 0"),
        };

    /// <summary>Reads every variable above, so that a bad value stops a command before it starts, whether or not the
    /// command would reach the place that uses it.</summary>
    public static void Check()
    {
        PositiveNumber(CollectiveTimeout);
        Switch(MpiCudaAware);
        PositiveInteger(Threads);
        PositiveInteger(Parallel);
    }
}
