/// `mofo eval`: one measure on one model, with a progress display and a JSON record. The tasks and what each flag sets
/// come from the measures' declarations (module `Measure`): the same function computes the number here, in reports and in
/// the DSL.
module MoFO.Dsl.Cli.Eval

open System
open System.IO
open System.Text.Json
open Argu
open MoFO
open MoFO.Models
open MoFO.Dsl

let private taskNames () = Measure.All |> List.choose (fun m -> m.Task |> Option.map (fun t -> t, m.Name))

/// `mofo eval`'s own flags (the shared ones are in `Flags`).
module private Own =
    let task =
        Flag.oneOf "--task" ("the measure: " + String.Join(", ", taskNames () |> List.map fst) + ".")
            (fun () -> taskNames () |> Seq.map fst) (fun s -> taskNames () |> List.exists (fun (t, _) -> t = s))
        |> Flag.sets "Task"
    let data = Flags.data.Describe "the task's data (defaults under the data root; required for hellaswag (its public jsonl), mc (a user jsonl) and perplexity (a .txt or a jsonl with \"text\"))."
    let limit = Flags.limit.Describe "evaluate only the first N items (MMLU: the first N of every subject)."
    let shots = Flag.int "--shots" "few-shot examples (default: 0; gsm8k 5)." |> Flag.atLeast 0
    let output = Flags.output.Describe "write the metrics and per-item results as JSON to this file."
    let logSamples = Flag.switch "--log-samples" "with --output: also write lm-evaluation-harness's per-document samples, samples_<task>_<timestamp>.jsonl beside it."
    let baseModel = Flag.text "--base" "pretrain-proxy / story-cloze / greedy-intact: the base model whose samples are the data (default: --model itself); distance, kl-to-base, kl-to-base-samples: the model to measure from (required)."
    let samples = Flag.int "--samples" "humaneval: completions per problem (default 10); pretrain-proxy/story-cloze: base-model samples (default 64)." |> Flag.atLeast 1
    let temperature = Flags.temperature.Describe "humaneval sampling temperature (default 0.8; 0 = greedy)."
    let topP = Flags.topP.Describe "humaneval nucleus sampling (default 0.95)."
    let k = Flags.k.Describe "humaneval: comma-separated k for pass@k, the first the headline (default 10,1)."
    let maxNewTokens = Flags.maxNewTokens.Describe "generation length (gsm8k 256, humaneval 512, samples 100)."
    let seed = Flags.seed.Describe "the seed of sampling and few-shot selection (default 1234)."
    let cache = Flags.cache.Describe "folder that caches base-model samples (default results/cache)."

type EvalArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Task of name: string
    | Tokenizer of path: string
    | Data of path: string
    | Limit of n: string
    | Shots of k: string
    | Output of path: string
    | Log_Samples
    | Base of path: string
    | Samples of n: string
    | Temperature of t: string
    | Top_P of p: string
    | K of ks: string
    | Max_New_Tokens of n: string
    | Seed of seed: string
    | Cache of dir: string
    | Device of name: string
    | Unsafe_No_Sandbox
    | Add_Bos of policy: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Flags.model | Task _ -> Own.task | Tokenizer _ -> Flags.tokenizer | Data _ -> Own.data | Limit _ -> Own.limit
            | Shots _ -> Own.shots | Output _ -> Own.output | Log_Samples -> Own.logSamples | Base _ -> Own.baseModel | Samples _ -> Own.samples
            | Temperature _ -> Own.temperature | Top_P _ -> Own.topP | K _ -> Own.k | Max_New_Tokens _ -> Own.maxNewTokens | Seed _ -> Own.seed
            | Cache _ -> Own.cache | Device _ -> Flags.inferenceDevice | Unsafe_No_Sandbox -> Flags.unsafeNoSandbox
            | Add_Bos _ -> Flags.addBos
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The task's name as given (`runWith` looks it up among its own measures; the command line checks it against every
/// declared task before the command runs).
let private taskOf (args: ParseResults<EvalArgs>) = args.GetResult Task

/// The settings of one `mofo eval` (the paper's protocol, with the flags applied through the measure's declaration).
let settings (m: Measure) (args: ParseResults<EvalArgs>) =
    let knobs =
        { Data = Flag.tryGet Own.data args; Limit = Flag.tryGet Own.limit args; Shots = Flag.tryGet Own.shots args; Samples = Flag.tryGet Own.samples args
          Temperature = Flag.tryGet Own.temperature args; TopP = Flag.tryGet Own.topP args
          Ks = Flag.tryGet Own.k args; MaxNewTokens = Flag.tryGet Own.maxNewTokens args; Seed = Flag.tryGet Own.seed args }
    let s = { Settings.Paper with Cache = Flag.getOr Own.cache Settings.DefaultCache args; UnsafeNoSandbox = Flag.has Flags.unsafeNoSandbox args }
    m.Apply knobs s

/// A measure against the base model (the distance, KL to base) needs `--base`: said before anything else is read.
let private requireBase (m: Measure) (args: ParseResults<EvalArgs>) =
    if Evals.againstBase m && (Flag.tryGet Own.baseModel args).IsNone then
        raise (OptionException("Base", $"--task {taskOf args}: --base is required (the model to measure from)"))

/// Runs a measure on a loaded model (through `Evals.measure`, as the DSL and `mofo train --report` do).
let evaluateMeasure (m: Measure) (model: CausalLM) (args: ParseResults<EvalArgs>) : Outcome =
    requireBase m args
    let s = settings m args
    let baseModel = lazy (match Flag.tryGet Own.baseModel args with Some p -> ModelLoader.Load(p, Option.toObj (Flag.tryGet Flags.tokenizer args)) | None -> model)
    try
        Evals.preflight [ m ] s
        Evals.measure { Base = baseModel; Task = None; Settings = s } model m
    finally
        if baseModel.IsValueCreated && not (obj.ReferenceEquals(baseModel.Value, model)) then baseModel.Value.Dispose()

/// Runs the task on a loaded model.
let evaluate (model: CausalLM) (args: ParseResults<EvalArgs>) : Outcome = evaluateMeasure (Evals.ofTask (taskOf args)) model args

/// Writes the results file: lm-evaluation-harness's results JSON with MoFO.NET's own record of the evaluation beside
/// its keys, and with --log-samples the harness's samples files beside it.
let private write (path: string) (m: Measure) (outcome: Outcome) (seconds: float) (args: ParseResults<EvalArgs>) =
    let s = settings m args
    let modelPath = Path.GetFullPath(Flag.get Flags.model args)
    let ts, groups = LmEval.tasks m s outcome
    let root = LmEval.results modelPath s (Flag.getOr Flags.addBos BosPolicy.Auto args) (Flag.tryGet Own.limit args) seconds ts groups
    let options = JsonSerializerOptions(WriteIndented = true, NumberHandling = Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals)
    let record =
        {| task = taskOf args; measure = m.Key; model = modelPath; count = outcome.Count
           metrics = dict outcome.Metrics; elapsedSeconds = seconds; items = outcome.Items.ToJson options |}
    let own = Text.Json.Nodes.JsonNode.Parse(JsonSerializer.Serialize(record, options)).AsObject()
    for KeyValue (k, v) in Seq.toList own do
        own.Remove k |> ignore
        root[k] <- v
    AtomicFile.WriteAllText(path, root.ToJsonString(options))
    if Flag.has Own.logSamples args then
        let stamp = DateTime.UtcNow.ToString("yyyy-MM-ddTHH-mm-ss.ffffff", Globalization.CultureInfo.InvariantCulture)
        for f in LmEval.writeSamples (Path.GetDirectoryName(Path.GetFullPath path)) stamp ts do printfn "samples: %s" f
    printfn "written: %s" path

/// `mofo eval` with the tasks of `measures` (`run`: every declared measure).
let runWith (measures: Measure list) (args: ParseResults<EvalArgs>) =
    let m = Evals.ofTaskIn measures (taskOf args)
    requireBase m args
    if Flag.has Own.logSamples args && (Flag.tryGet Own.output args).IsNone then
        raise (OptionException("Output", "--log-samples writes beside the results file: pass --output FILE"))
    let clock = Diagnostics.Stopwatch.StartNew()
    use model = ModelLoader.Load(Flag.get Flags.model args, Option.toObj (Flag.tryGet Flags.tokenizer args), MoFO.Runtime.device (Flag.tryGet Flags.inferenceDevice args))
    model.BosPolicy <- Flag.getOr Flags.addBos BosPolicy.Auto args
    let outcome = evaluateMeasure m model args
    printfn "%s on %s (%d items, %.1f s)" (taskOf args) model.Name outcome.Count clock.Elapsed.TotalSeconds
    for (k, v) in outcome.Metrics do
        printfn "  %-24s %.4f" k v
    Flag.tryGet Own.output args |> Option.iter (fun path -> write path m outcome clock.Elapsed.TotalSeconds args)
    0

let run (args: ParseResults<EvalArgs>) = runWith Measure.All args
