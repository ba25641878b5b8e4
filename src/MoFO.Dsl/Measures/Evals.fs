/// Runs the measures (module `Measure`) on a model. `mofo eval`, `mofo train --report` and the experiment DSL all go
/// through `measure`, so one setting gives one number whichever way it is asked for.
module MoFO.Dsl.Evals

open System
open System.IO
open MoFO
open MoFO.Evaluation
open MoFO.Models

/// The measure of a `mofo eval` task name among `measures`, or an OptionException on field Task listing them.
let ofTaskIn (measures: Measure list) (name: string) =
    measures |> List.tryFind (fun m -> m.Task = Some name)
    |> Option.defaultWith (fun () ->
        let names = String.Join(", ", measures |> List.choose (fun m -> m.Task))
        raise (OptionException("Task", $"Task {name}: unknown (expected one of {names})")))

/// The measure of a `mofo eval` task name, or an OptionException on field Task listing them.
let ofTask (name: string) = ofTaskIn Measure.All name

/// Fails before any work when a measure's data or the code sandbox is missing (a report must not fail after training).
let preflight (ms: Measure list) (s: Settings) =
    for m in ms do
        if m.Available s then
            for path in m.Assets s do
                if not (File.Exists path || Directory.Exists path) then
                    raise (MissingAssetException($"{path}: the data of {m.Name} is missing"))
        if m.Needs |> List.contains Need.Sandbox then PythonSandbox.Create(SandboxLimits(), s.UnsafeNoSandbox) |> ignore

/// Runs one measure on a model.
let measure (ctx: Context) (model: CausalLM) (m: Measure) : Outcome = m.Run ctx (Harnesses.probe ctx model m.Name)

/// Runs several measures on one model, in order (lazily: each is computed when the sequence reaches it); the held-out
/// task fit that TaskLoss, TaskTokenAccuracy and a choice-less TaskAccuracy share is computed once.
let measureAll (ctx: Context) (model: CausalLM) (ms: seq<Measure>) : seq<Measure * Outcome> =
    let p = Harnesses.probe ctx model "the task measures"
    ms |> Seq.map (fun m -> m, m.Run ctx p)

/// Whether a measure compares with the base model, so that it is zero on the base model itself (the distance, KL).
let againstBase (m: Measure) = m.Needs |> List.contains Need.Base

/// `mofo eval`'s knobs as command-line text (the equivalent command of a report row).
let private knobText (k: EvalKnobs) =
    let inv (x: float) = x.ToString("G", Globalization.CultureInfo.InvariantCulture)
    let q (p: string) = if p.Contains ' ' then $"\"{p}\"" else p
    [ k.Data |> Option.map (fun d -> $" --data {q d}")
      k.Shots |> Option.map (fun n -> $" --shots {n}")
      k.Samples |> Option.map (fun n -> $" --samples {n}")
      k.Temperature |> Option.map (fun t -> $" --temperature {inv t}")
      k.TopP |> Option.map (fun t -> $" --top-p {inv t}")
      k.Ks |> Option.map (fun ks -> " --k " + String.Join(",", ks))
      k.MaxNewTokens |> Option.map (fun n -> $" --max-new-tokens {n}")
      k.Limit |> Option.map (fun n -> $" --limit {n}") ]
    |> List.choose id |> String.concat ""

/// The `mofo eval` command line that computes the same number (for reports); None for measures without a task.
let command (modelPath: string) (basePath: string) (s: Settings) (m: Measure) =
    let q (p: string) = if p.Contains ' ' then $"\"{p}\"" else p
    m.Task |> Option.map (fun task ->
        let usesBase = m.Needs |> List.exists (fun n -> n = Need.Base || n = Need.BaseSamples)
        let baseFlag = if usesBase then $" --base {q basePath}" else ""
        $"mofo eval --model {q modelPath} --task {task}{baseFlag}{knobText (m.Knobs s)}")
