/// The forgetting report of a fine-tune (`mofo train --report`, `Report.forgetting` in scripts): the general measures
/// at the model's scale, the distance from the base weights and the fine-tuning task itself, on the base and on the
/// fine-tuned model. Every number comes from `Evals.measure`, the function `mofo eval` calls, so each row equals the
/// `mofo eval` command it names. Writes report.json and report.html (table, training curves, per-layer and per-tensor
/// distance) and prints the table.
module MoFO.Dsl.Report

open System
open System.Collections.Generic
open System.Globalization
open System.IO
open System.Net
open System.Text
open System.Text.RegularExpressions
open Plotly.NET
open MoFO
open MoFO.Evaluation
open MoFO.Models

/// Which general measures a report runs (the task's measures and the distance come with every suite).
[<RequireQualifiedAccess>]
type Suite =
    /// what a tiny model can show: pretrain-proxy NLL, story cloze, greedy intactness
    | Tiny
    /// the paper's benchmarks: MMLU, ARC-easy, ARC-challenge, HellaSwag (when its jsonl is given), GSM8K, HumanEval
    | Paper
    /// Tiny below 100M parameters, else Paper
    | Auto

    member s.Name = match s with Tiny -> "tiny" | Paper -> "paper" | Auto -> "auto"
    /// Parses tiny, paper or auto; `flag` names the option in the error.
    static member Parse(flag: string, value: string) =
        match value.ToLowerInvariant() with
        | "tiny" -> Tiny
        | "paper" -> Paper
        | "auto" -> Auto
        | _ -> raise (ArgumentException $"{flag} {value}: expected tiny, paper or auto")

/// Models below this many parameters get the tiny suite under `Suite.Auto`.
let autoThreshold = 100_000_000L

/// Parameters of a model (tied weights counted once).
let parameterCount (m: CausalLM) = m.Module.parameters() |> Seq.sumBy (fun p -> p.numel())

/// The suite for a model of `parameters` parameters.
let resolve (suite: Suite) (parameters: int64) =
    match suite with
    | Suite.Auto -> if parameters < autoThreshold then Suite.Tiny else Suite.Paper
    | s -> s

/// The measures of a (resolved) suite in report order, from the measure table: the suite's general measures that can
/// run under these settings (HellaSwag only with its file), the distance, the task's.
let measures (suite: Suite) (task: TaskData option) (settings: Settings) =
    let tag =
        match suite with
        | Suite.Tiny -> SuiteTag.Tiny
        | Suite.Paper -> SuiteTag.Paper
        | Suite.Auto -> raise (ArgumentException "Report.measures: resolve Suite.Auto first (Report.resolve)")
    let general = Measure.All |> List.filter (fun m -> m.Suite = Some tag && m.Available settings)
    let taskMeasures =
        match task with
        | Some t -> [ Measure.TaskLoss; Measure.TaskTokenAccuracy; if t.Choices.IsSome then Measure.TaskAccuracy ]
        | None -> []
    general @ [ Measure.Distance ] @ taskMeasures

/// The task rows' data from a held-out file in a training format, read as the trainer reads its eval set (DPR: template
/// 0, plus its two-choice form for the task accuracy).
let heldOutTask (format: MoFO.Data.DataFormat) (path: string) (maxLength: int) : TaskData =
    let isDpr = format = MoFO.Data.DataFormat.Dpr
    let examples = MoFO.Data.InstructionData.Read(path, format, "eval", (if isDpr then 0 else -1))
    { Name = $"{(string format).ToLowerInvariant()} ({Path.GetFileName(Path.TrimEndingDirectorySeparator path)})"
      HeldOut = List.ofSeq examples
      Choices = (if isDpr then Some (MoFO.Data.Dpr.AsMultipleChoice(MoFO.Data.Dpr.Read path, 0) |> List.ofSeq) else None)
      MaxLength = maxLength }

/// Fails before any work when a measure's data or the code sandbox is missing (a report must not fail after training).
let preflight (ms: Measure list) (s: Settings) = Evals.preflight ms s

/// One row: a measure on the base and on the fine-tuned model.
type MeasureRow =
    { Measure: Measure
      /// None where the measure is not taken on the base model (the distance)
      Base: float option
      FineTuned: float
      /// fine-tuned − base
      Delta: float option
      HigherIsBetter: bool
      /// the `mofo eval` command that gives `FineTuned` (and `Base`), where one exists
      Command: string option
      BaseCommand: string option
      Metrics: (string * float) list
      BaseMetrics: (string * float) list
      Count: int }

    /// 1 better, -1 worse, 0 unchanged, None when there is no base value.
    member r.Verdict =
        r.Delta |> Option.filter (fun d -> not (Double.IsNaN d))
        |> Option.map (fun d -> if d = 0.0 then 0 elif (d > 0.0) = r.HigherIsBetter then 1 else -1)

type ForgettingReport =
    { BaseModel: string
      FineTunedModel: string
      Suite: Suite
      Parameters: int64
      Task: string option
      Rows: MeasureRow list
      /// L2 distance from the base per tensor (HF names) and per layer ("embeddings", "layer N", "final norm", "head")
      PerTensorL2: (string * float) list
      PerLayerL2: (string * float) list
      /// the training curves, when a metrics.jsonl was found
      Steps: MoFO.Training.StepMetrics list
      MetricsFile: string option
      /// the forgetting watch's curve (learning against forgetting over steps), when the run watched forgetting
      Watch: MoFO.Training.WatchPoint list
      ElapsedSeconds: float
      JsonPath: string
      HtmlPath: string }

/// The group of a tensor for the per-layer distance.
let layerOf (name: string) =
    let m = Regex.Match(name, @"^(?:model|gpt_neox)\.layers\.(\d+)\.")
    if m.Success then "layer " + m.Groups[1].Value
    elif name.Contains "embed_tokens" || name.Contains "embed_in" then "embeddings"
    elif name.StartsWith "lm_head" || name.StartsWith "embed_out" then "head"
    elif name.StartsWith "model.norm." || name.StartsWith "gpt_neox.final_layer_norm." then "final norm"
    else name

/// Per-layer L2 (the root of the summed squares of its tensors), in model order.
let perLayer (perTensor: (string * float) list) =
    let order (g: string) =
        match g with
        | "embeddings" -> -1, g
        | "final norm" -> Int32.MaxValue - 1, g
        | "head" -> Int32.MaxValue, g
        | _ when g.StartsWith "layer " -> int (g.Substring 6), g
        | _ -> Int32.MaxValue - 2, g
    perTensor
    |> List.groupBy (fst >> layerOf)
    |> List.map (fun (g, xs) -> g, sqrt (xs |> List.sumBy (fun (_, d) -> d * d)))
    |> List.sortBy (fst >> order)

/// Reads a trainer's metrics.jsonl (the run folder's one reader).
let readMetrics (path: string) = MoFO.Training.RunFolder.ReadMetrics path |> List.ofSeq

// ---- output ---------------------------------------------------------------------------------------------------------

let private fmt (m: Measure) (x: float) =
    if Double.IsNaN x then "–"
    elif m.IsAccuracy then (100.0 * x).ToString("0.00", CultureInfo.InvariantCulture) + " %"
    else x.ToString("0.0000", CultureInfo.InvariantCulture)

let private fmtDelta (m: Measure) (x: float) =
    if Double.IsNaN x then "–"
    elif m.IsAccuracy then (100.0 * x).ToString("+0.00;-0.00;0.00", CultureInfo.InvariantCulture) + " pt"
    else x.ToString("+0.0000;-0.0000;0.0000", CultureInfo.InvariantCulture)

let private verdictText (r: MeasureRow) =
    match r.Verdict with Some 1 -> "better" | Some -1 -> "worse" | Some _ -> "same" | None -> ""

/// The table as console text.
let table (r: ForgettingReport) =
    let sb = StringBuilder()
    let line (a: string) (b: string) (c: string) (d: string) (e: string) =
        sb.AppendLine($"{a.PadRight 22}{b.PadLeft 12}{c.PadLeft 12}{d.PadLeft 13}  {e}".TrimEnd()) |> ignore
    let task = r.Task |> Option.map (fun t -> $", task {t}") |> Option.defaultValue ""
    sb.AppendLine($"forgetting report ({r.Suite.Name} suite, {r.Parameters:N0} parameters{task}, {r.ElapsedSeconds:F1} s)") |> ignore
    line "measure" "base" "fine-tuned" "delta" ""
    for x in r.Rows do
        let arrow = if x.HigherIsBetter then "↑" else "↓"
        line $"{x.Measure.Name} {arrow}" (x.Base |> Option.map (fmt x.Measure) |> Option.defaultValue "")
            (fmt x.Measure x.FineTuned) (x.Delta |> Option.map (fmtDelta x.Measure) |> Option.defaultValue "") (verdictText x)
    sb.ToString()

/// The JSON document: the models, the suite, one object per measure, the distances.
let toJson (r: ForgettingReport) =
    Json.obj
        [ "base", Json.str r.BaseModel
          "fineTuned", Json.str r.FineTunedModel
          "suite", Json.str r.Suite.Name
          "parameters", Json.int r.Parameters
          "task", Json.strOpt r.Task
          "measures", Json.arr [
              for x in r.Rows ->
                  Json.obj
                      [ "key", Json.str x.Measure.Key
                        "name", Json.str x.Measure.Name
                        "base", (match x.Base with Some b -> Json.num b | None -> null)
                        "fineTuned", Json.num x.FineTuned
                        "delta", (match x.Delta with Some d -> Json.num d | None -> null)
                        "higherIsBetter", Json.bool x.HigherIsBetter
                        "verdict", Json.str (verdictText x)
                        "command", Json.strOpt x.Command
                        "baseCommand", Json.strOpt x.BaseCommand
                        "count", Json.int (int64 x.Count)
                        "metrics", Json.numbers x.Metrics
                        "baseMetrics", Json.numbers x.BaseMetrics ] ]
          "perLayerL2", Json.numbers r.PerLayerL2
          "perTensorL2", Json.numbers r.PerTensorL2
          "metricsFile", Json.strOpt r.MetricsFile
          "watch", Json.arr [
              for w in r.Watch ->
                  Json.obj
                      [ "step", Json.int (int64 w.Step)
                        "trainLoss", Json.num w.TrainLoss
                        "heldOutLoss", (if w.HeldOutLoss.HasValue then Json.num w.HeldOutLoss.Value else null)
                        "values", Json.numbers [ for KeyValue (k, v) in w.Values -> k, v ]
                        "rise", Json.numbers [ for KeyValue (k, v) in w.Rise -> k, v ] ] ]
          "elapsedSeconds", Json.num r.ElapsedSeconds ]
    |> Json.text

let private enc (s: string) = WebUtility.HtmlEncode s

let private htmlTable (r: ForgettingReport) =
    let sb = StringBuilder()
    let task = r.Task |> Option.map (fun t -> $" · task <b>{enc t}</b>") |> Option.defaultValue ""
    sb.Append($"<h1>Forgetting report</h1>\n<p>base <code>{enc r.BaseModel}</code> → fine-tuned <code>{enc r.FineTunedModel}</code><br>")
      .Append($"{r.Suite.Name} suite · {r.Parameters:N0} parameters{task} · {r.ElapsedSeconds:F1} s</p>\n")
      .Append("<table id=\"forgetting-table\">\n<tr><th>measure</th><th>base</th><th>fine-tuned</th><th>Δ</th><th>mofo eval</th></tr>\n") |> ignore
    for x in r.Rows do
        let cls = match x.Verdict with Some 1 -> "better" | Some -1 -> "worse" | _ -> "same"
        let arrow = if x.HigherIsBetter then "↑" else "↓"
        let cmd = x.Command |> Option.map (fun c -> $"<code>{enc c}</code>") |> Option.defaultValue ""
        let b = x.Base |> Option.map (fmt x.Measure) |> Option.defaultValue ""
        let d = x.Delta |> Option.map (fmtDelta x.Measure) |> Option.defaultValue ""
        sb.Append($"<tr><td>{enc x.Measure.Name} {arrow}</td><td>{b}</td><td>{fmt x.Measure x.FineTuned}</td>")
          .Append($"<td class=\"{cls}\">{d}</td><td>{cmd}</td></tr>\n") |> ignore
    sb.Append("</table>\n").ToString()

let private style =
    "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:2em} "
    + "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right} td:first-child,th:first-child,td:last-child{text-align:left} "
    + "td.better{background:#d4f4d4;color:#165c16} td.worse{background:#f8d4d4;color:#8a1616} code{font-size:85%}</style>"

let private charts (r: ForgettingReport) =
    let steps = r.Steps |> List.map (fun p -> p.Step)
    let evalPts = r.Steps |> List.choose (fun p -> if p.EvalLoss.HasValue then Some (p.Step, p.EvalLoss.Value) else None)
    let sized (title: string) (x: string) (y: string) (c: GenericChart) =
        c |> Chart.withTitle title |> Chart.withXAxisStyle x |> Chart.withYAxisStyle y |> Chart.withSize (900, 420)
    let curves =
        if r.Steps.IsEmpty then []
        else
            [ [ Chart.Line(x = steps, y = (r.Steps |> List.map (fun p -> p.Loss)), Name = "train loss")
                if not evalPts.IsEmpty then Chart.Line(x = List.map fst evalPts, y = List.map snd evalPts, Name = "held-out loss", ShowMarkers = true) ]
              |> Chart.combine |> sized "Training loss" "step" "loss"
              (let pts = r.Steps |> List.choose (fun p -> if p.Distance.HasValue then Some (p.Step, p.Distance.Value) else None)
               Chart.Line(x = List.map fst pts, y = List.map snd pts, Name = "L2 from base", ShowMarkers = (pts.Length < 50)))
              |> sized "Distance from the base weights" "step" "L2"
              Chart.Line(x = steps, y = (r.Steps |> List.map (fun p -> p.UpdatedFraction)), Name = "updated fraction")
              |> sized "Fraction of entries updated per step" "step" "fraction" ]
    // the watch: each measure's rise over steps, and learning (held-out loss, else the step's training loss) against it
    let watched = r.Watch |> List.collect (fun w -> [ for KeyValue (k, _) in w.Rise -> k ]) |> List.distinct
    let learning (w: MoFO.Training.WatchPoint) = if w.HeldOutLoss.HasValue then w.HeldOutLoss.Value else w.TrainLoss
    let learnName = if r.Watch |> List.exists (fun w -> w.HeldOutLoss.HasValue) then "held-out loss" else "training loss"
    let watchCharts =
        if watched.IsEmpty then []
        else
            let over (k: string) = r.Watch |> List.filter (fun w -> w.Rise.ContainsKey k)
            [ [ for k in watched -> Chart.Line(x = (over k |> List.map (fun w -> w.Step)), y = (over k |> List.map (fun w -> w.Rise[k])), Name = $"{k} (rise over the base)", ShowMarkers = true) ]
              |> Chart.combine |> sized "Forgetting watched while training" "step" "rise over the base"
              [ for k in watched ->
                  let pts = over k |> List.filter (fun w -> Double.IsFinite(learning w))
                  Chart.Line(x = (pts |> List.map learning), y = (pts |> List.map (fun w -> w.Rise[k])), Name = k, ShowMarkers = true,
                             MultiText = (pts |> List.map (fun w -> $"step {w.Step}"))) ]
              |> Chart.combine |> sized $"Learning against forgetting over steps ({learnName} → lower is learned more)" learnName "rise over the base" ]
    let bars (title: string) (xs: (string * float) list) =
        Chart.Column(values = List.map snd xs, Keys = List.map fst xs, Name = "L2")
        |> Chart.withTitle title |> Chart.withYAxisStyle "L2 from base" |> Chart.withSize (max 900 (24 * xs.Length), 480)
    curves @ watchCharts @ [ bars "L2 distance from the base per layer" r.PerLayerL2; bars "L2 distance from the base per tensor" r.PerTensorL2 ]

/// The self-contained page: plotly.js embedded once (PlotlyJSReference.Full), the table, then one chart per figure.
let toHtml (r: ForgettingReport) =
    match charts r with
    | [] -> failwith "unreachable: a report always has the distance charts"
    | first :: rest ->
        let page = first |> Chart.withDisplayOptions (DisplayOptions.init (PlotlyJSReference = PlotlyJSReference.Full)) |> GenericChart.toEmbeddedHTML
        let body = page.IndexOf "<body>"
        let bodyEnd = page.LastIndexOf "</body>"
        let head = page.IndexOf "</head>"
        if body < 0 || bodyEnd < 0 || head < 0 then
            failwith "Plotly.NET's HTML has no <head>/<body>: the report page cannot be assembled (Plotly.NET version changed?)"
        let others = rest |> List.map GenericChart.toChartHTML |> String.concat "\n"
        page.Substring(0, head) + style + page.Substring(head, body + 6 - head) + "\n" + htmlTable r
        + page.Substring(body + 6, bodyEnd - body - 6) + "\n" + others + "\n" + page.Substring bodyEnd

// ---- the report -----------------------------------------------------------------------------------------------------

/// How the models are loaded and where the training curves are.
type Options =
    { /// the base model's tokenizer file, if it is not beside the model (the fine-tuned HF folder holds its own)
      Tokenizer: string option
      /// cpu (default) or cuda
      Device: string option
      /// the run's metrics.jsonl (default: in outDir, else beside the fine-tuned model's folder)
      MetricsFile: string option }
    static member Default = { Tokenizer = None; Device = None; MetricsFile = None }

/// The row of a measure: its outcome on the fine-tuned model and, where it was taken there, on the base model.
let row (settings: Settings) (basePath: string) (fineTunedPath: string) (m: Measure) (tuned: Outcome) (onBase: Outcome option) =
    { Measure = m; Base = onBase |> Option.map (fun x -> x.Value); FineTuned = tuned.Value
      Delta = onBase |> Option.map (fun x -> tuned.Value - x.Value); HigherIsBetter = m.HigherIsBetter
      Command = Evals.command fineTunedPath basePath settings m
      BaseCommand = (if Evals.againstBase m then None else Evals.command basePath basePath settings m)
      Metrics = tuned.Metrics; BaseMetrics = onBase |> Option.map (fun x -> x.Metrics) |> Option.defaultValue []; Count = tuned.Count }

/// `forgetting` with loading options.
let forgettingWith (o: Options) (basePath: string) (fineTunedPath: string) (task: TaskData option) (settings: Settings)
                   (suite: Suite) (outDir: string) =
    let clock = Diagnostics.Stopwatch.StartNew()
    let device = MoFO.Runtime.device o.Device
    use baseModel = ModelLoader.Load(basePath, Option.toObj o.Tokenizer, device)
    let parameters = parameterCount baseModel
    let suite = resolve suite parameters
    let ms = measures suite task settings
    preflight ms settings
    let ctx: Context = { Base = lazy baseModel; Task = task; Settings = settings }
    let run (who: string) (model: CausalLM) (ms: Measure list) =
        ms |> Seq.map (fun m -> eprintfn "report: %s on the %s model ..." m.Name who; m)
        |> Evals.measureAll ctx model
        |> Seq.toList
    let onBase = run "base" baseModel (ms |> List.filter (Evals.againstBase >> not)) |> dict
    use tuned = ModelLoader.Load(fineTunedPath, null, device)
    let onTuned = run "fine-tuned" tuned ms
    let rows = [ for m, t in onTuned -> row settings basePath fineTunedPath m t (match onBase.TryGetValue m with | true, x -> Some x | _ -> None) ]
    let perTensor = onTuned |> List.tryPick (fun (_, o) -> match o.Items with Items.PerTensor d -> Some [ for KeyValue (k, v) in d -> k, v ] | _ -> None)
                    |> Option.defaultWith (fun () -> failwith "Report: the distance's per-tensor items are missing (the report lists Measure.Distance)")
    let metricsFile =
        o.MetricsFile
        |> Option.orElse ([ Path.Combine(outDir, "metrics.jsonl")
                            Path.Combine(Path.GetDirectoryName(Path.GetFullPath(fineTunedPath).TrimEnd('/')), "metrics.jsonl") ]
                          |> List.tryFind File.Exists)
    let steps = metricsFile |> Option.map readMetrics |> Option.defaultValue []
    let watch = metricsFile |> Option.map (fun f -> MoFO.Training.ForgettingWatch.Curve(Path.GetDirectoryName f) |> List.ofSeq) |> Option.defaultValue []
    let report =
        { BaseModel = Path.GetFullPath basePath; FineTunedModel = Path.GetFullPath fineTunedPath; Suite = suite
          Parameters = parameters; Task = task |> Option.map (fun t -> t.Name); Rows = rows
          PerTensorL2 = perTensor; PerLayerL2 = perLayer perTensor; Steps = steps; MetricsFile = metricsFile; Watch = watch
          ElapsedSeconds = clock.Elapsed.TotalSeconds
          JsonPath = Path.GetFullPath(Path.Combine(outDir, "report.json")); HtmlPath = Path.GetFullPath(Path.Combine(outDir, "report.html")) }
    AtomicFile.WriteAllText(report.JsonPath, toJson report)
    AtomicFile.WriteAllText(report.HtmlPath, toHtml report)
    // the benchmarks of each model also in lm-evaluation-harness's results format (comparable with the harness's files)
    let harness (path: string) (outcomes: (Measure * Outcome) list) (file: string) =
        let tasks, groups = LmEval.tasksOf settings outcomes
        if not tasks.IsEmpty then
            let json = LmEval.results (Path.GetFullPath path) settings MoFO.Models.BosPolicy.Auto None clock.Elapsed.TotalSeconds tasks groups
            AtomicFile.WriteAllText(Path.Combine(outDir, file), json.ToJsonString(Text.Json.JsonSerializerOptions(WriteIndented = true)))
    harness basePath [ for KeyValue (m, o) in onBase -> m, o ] "lm_eval_results_base.json"
    harness fineTunedPath onTuned "lm_eval_results_tuned.json"
    printf "%s" (table report)
    printfn "report: %s, %s" report.JsonPath report.HtmlPath
    report

/// The forgetting report of `fineTunedPath` against `basePath`: evaluates both with the suite's measures (the distance
/// on the fine-tuned model only), writes report.json and report.html into `outDir`, prints the table, returns the record.
let forgetting (basePath: string) (fineTunedPath: string) (task: TaskData option) (settings: Settings) (suite: Suite) (outDir: string) =
    forgettingWith Options.Default basePath fineTunedPath task settings suite outDir
