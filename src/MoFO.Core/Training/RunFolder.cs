using System.Text.Json;
using System.Text.Json.Serialization;
using MoFO.Data;

namespace MoFO.Training;

/// <summary>One line of the metrics log (<c>metrics.jsonl</c>).</summary>
/// <param name="Distance">L2 distance from the base weights after the step; null on steps where it was not measured
/// (large models measure it every <see cref="TrainingOptions.DistanceEvery"/> steps).</param>
/// <param name="Forgetting">the forgetting watch's measures at this step (<see cref="ForgettingWatch"/>), when it watched, with the held-out loss on its probe set (<see cref="ForgettingWatch.HeldOutKey"/>).</param>
/// <param name="WatchSeconds">what that watch cost, in seconds.</param>
public sealed record StepMetrics(int Step, int Epoch, double Loss, double LearningRate, double GradNorm, double? Distance,
                                 double UpdatedFraction, long Tokens, double ElapsedSeconds, bool Skipped = false, double? EvalLoss = null,
                                 IReadOnlyDictionary<string, double>? Forgetting = null, double? WatchSeconds = null);

/// <summary>What a run ended with (<c>train_summary.json</c>): the trainer returns it and writes it, the DSL, the
/// report and the continual runner read it back with <see cref="RunFolder.ReadSummary()"/>.</summary>
/// <param name="Method">the method, as <see cref="MethodSpec.ToString"/> describes it.</param>
/// <param name="Steps">optimizer steps taken (the run's step counter at the end).</param>
/// <param name="FinalLoss">the training loss of the last step that was not skipped.</param>
/// <param name="EvalLoss">the held-out loss at the end (null without held-out data or when interrupted).</param>
/// <param name="Distance">L2 distance of the weights from the initial ones.</param>
/// <param name="TouchedFraction">entries updated at least once ÷ all entries.</param>
/// <param name="ModelDir">the final HF folder (null when interrupted).</param>
/// <param name="PeakResidentBytes">the process's peak resident memory at the end of the run (VmHWM; 0 where unknown).</param>
/// <param name="StoppedBy">why the run stopped before its last step ("forgetting budget"), or null.</param>
/// <param name="Budget">the budget stop: the measure, its rise, the limit, the step of the watch, the step of the kept model.</param>
public sealed record TrainResult(string Method, TrainingOptions Options, int Steps, int TotalSteps, bool Interrupted,
                                 double? FinalLoss, double? EvalLoss, double Distance, int Examples, int DroppedExamples,
                                 double TouchedFraction, double ElapsedSeconds, string OutputDir, string? ModelDir, long PeakResidentBytes = 0,
                                 string? StoppedBy = null, BudgetStop? Budget = null);

/// <summary>
/// A training run's folder and the one way its files are written and read: <c>metrics.jsonl</c> (one
/// <see cref="StepMetrics"/> per line), <c>train_summary.json</c> (<see cref="TrainResult"/>), <c>checkpoint/</c>
/// and <c>model/</c>. Malformed files are a <see cref="DataFormatException"/> naming the file, the line and the field.
/// </summary>
public sealed class RunFolder(string dir)
{
    public string Dir { get; } = Path.GetFullPath(dir);
    public string MetricsFile => Path.Combine(Dir, "metrics.jsonl");
    public string SummaryFile => Path.Combine(Dir, "train_summary.json");
    public string CheckpointDir => Path.Combine(Dir, "checkpoint");
    public string ModelDir => Path.Combine(Dir, "model");

    /// <summary>A finished (not interrupted) run's summary, or null when the folder has none or the run did not finish.</summary>
    public TrainResult? FinishedSummary()
    {
        if (!File.Exists(SummaryFile) || !Directory.Exists(ModelDir)) return null;
        var s = ReadSummary();
        return s.Interrupted ? null : s;
    }

    public TrainResult ReadSummary() => ReadSummary(SummaryFile);

    public static TrainResult ReadSummary(string file)
    {
        try
        {
            return JsonSerializer.Deserialize<TrainResult>(File.ReadAllText(file), Json)
                   ?? throw new DataFormatException(file, null, "empty training summary");
        }
        catch (JsonException e) { throw new DataFormatException(file, null, $"not a training summary ({Field(e)}{e.Message})", e); }
    }

    public void WriteSummary(TrainResult r) => AtomicFile.WriteAllText(SummaryFile, JsonSerializer.Serialize(r, Json));

    public IReadOnlyList<StepMetrics> ReadMetrics() => ReadMetrics(MetricsFile);

    /// <summary>Reads a metrics log; a line that is not a <see cref="StepMetrics"/> is an error naming the file and line.</summary>
    public static IReadOnlyList<StepMetrics> ReadMetrics(string file)
    {
        var list = new List<StepMetrics>();
        int line = 0;
        foreach (var text in File.ReadLines(file))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            try
            {
                list.Add(JsonSerializer.Deserialize<StepMetrics>(text, Json) ?? throw new DataFormatException(file, line, "null"));
            }
            catch (JsonException e) { throw new DataFormatException(file, line, $"not a metrics record ({Field(e)}{e.Message})", e); }
        }
        return list;
    }

    /// <summary>One metrics line (the trainer appends them as it goes).</summary>
    public static string MetricsLine(StepMetrics m) => JsonSerializer.Serialize(m, JsonLine);

    static string Field(JsonException e) => e.Path is { Length: > 0 } p ? $"at {p}: " : "";

    /// <summary>The JSON conventions of a run folder: camelCase, enums as strings, NaN allowed, required fields required.</summary>
    public static JsonSerializerOptions Json { get; } = new()
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        PropertyNameCaseInsensitive = true,
        RespectRequiredConstructorParameters = true,
        RespectNullableAnnotations = true,
        Converters = { new JsonStringEnumConverter() },
    };

    static readonly JsonSerializerOptions JsonLine = new(Json) { WriteIndented = false };
}
