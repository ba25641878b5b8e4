/// `mofo eval`: one measure on one model, with a progress display and a JSON record. The tasks and what each flag sets
/// come from the measures' declarations (module `Measure`): the same function computes the number here, in reports and
/// in the DSL.
module MoFO.Dsl.Cli.Eval

open System
open System.IO
open System.Text.Json
open Argu
open MoFO
open MoFO.Models
open MoFO.Dsl

let private taskNames () = Measure.All |> List.choose (fun m -> m.Task |> Option.map (fun t -> t, m.Name))

type EvalArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Task of name: string
    | Tokenizer of path: string
    | Data of path: string
    | Limit of n: int
    | Shots of k: int
    | Output of path: string
    | Log_Samples
    | Base of path: string
    | Samples of n: int
    | Temperature of t: float
    | Top_P of p: float
    | K of ks: string
    | Max_New_Tokens of n: int
    | Seed of seed: int64
    | Cache of dir: string
    | Device of name: string
    | Unsafe_No_Sandbox
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "an HF model folder or a llama2.c .bin."
            | Task _ -> "the measure: " + String.Join(", ", taskNames () |> List.map fst) + "."
            | Tokenizer _ -> "the tokenizer file, if it is not beside the model."
            | Data _ -> "the task's data (defaults under the data root; required for hellaswag (its public jsonl), mc (a user jsonl) and perplexity (a .txt or a jsonl with \"text\"))."
            | Limit _ -> "evaluate only the first N items (MMLU: the first N of every subject)."
            | Shots _ -> "few-shot examples (default: 0; gsm8k 5)."
            | Output _ -> "write the metrics and per-item results as JSON to this file."
            | Base _ -> "pretrain-proxy / story-cloze: the base model whose samples are the data (default: --model itself); distance: the model to measure from (required)."
            | Samples _ -> "humaneval: completions per problem (default 10); pretrain-proxy/story-cloze: base-model samples (default 64)."
            | Temperature _ -> "humaneval sampling temperature (default 0.8; 0 = greedy)."
            | Top_P _ -> "humaneval nucleus sampling (default 0.95)."
            | K _ -> "humaneval: comma-separated k for pass@k, the first the headline (default 10,1)."
            | Max_New_Tokens _ -> "generation length (gsm8k 256, humaneval 512, samples 100)."
            | Seed _ -> "the seed of sampling and few-shot selection (default 1234)."
            | Cache _ -> "folder that caches base-model samples (default results/cache)."
            | Device _ -> "cpu (default; float32, or bfloat16 for a bfloat16 checkpoint) or cuda (bfloat16)."
            | Unsafe_No_Sandbox -> "humaneval: run generated code without bubblewrap when it is missing (dangerous)."
            | Log_Samples -> "with --output: also write lm-evaluation-harness's per-document samples, samples_<task>_<timestamp>.jsonl beside it."

/// The settings of one `mofo eval` (the paper's protocol, with the flags applied through the measure's declaration).
let settings (m: Measure) (args: ParseResults<EvalArgs>) =
    let knobs =
        { Data = args.TryGetResult Data; Limit = args.TryGetResult Limit; Shots = args.TryGetResult Shots; Samples = args.TryGetResult Samples
          Temperature = args.TryGetResult Temperature; TopP = args.TryGetResult Top_P
          Ks = args.TryGetResult K |> Option.map EvalSamples.parseKs; MaxNewTokens = args.TryGetResult Max_New_Tokens; Seed = args.TryGetResult Seed }
    let s = { Settings.Paper with Cache = args.GetResult(Cache, Settings.DefaultCache); UnsafeNoSandbox = args.Contains Unsafe_No_Sandbox }
    m.Apply knobs s

/// A measure against the base model (the distance, KL to base) needs `--base`: said before anything else is read.
let private requireBase (m: Measure) (args: ParseResults<EvalArgs>) =
    if Evals.againstBase m && not (args.Contains Base) then
        raise (OptionException("Base", $"--task {args.GetResult Task}: --base is required (the model to measure from)"))

/// Runs a measure on a loaded model (through `Evals.measure`, as the DSL and `mofo train --report` do).
let evaluateMeasure (m: Measure) (model: CausalLM) (args: ParseResults<EvalArgs>) : Outcome =
    requireBase m args
    let s = settings m args
    let baseModel = lazy (match args.TryGetResult Base with Some p -> ModelLoader.Load(p, Option.toObj (args.TryGetResult Tokenizer)) | None -> model)
    try
        Evals.preflight [ m ] s
        Evals.measure { Base = baseModel; Task = None; Settings = s } model m
    finally
        if baseModel.IsValueCreated && not (obj.ReferenceEquals(baseModel.Value, model)) then baseModel.Value.Dispose()

/// Runs the task on a loaded model.
let evaluate (model: CausalLM) (args: ParseResults<EvalArgs>) : Outcome = evaluateMeasure (Evals.ofTask (args.GetResult Task)) model args

/// Writes the results file: lm-evaluation-harness's results JSON with MoFO.NET's own record of the evaluation beside
/// its keys, and with --log-samples the harness's samples files beside it.
let private write (path: string) (m: Measure) (outcome: Outcome) (seconds: float) (args: ParseResults<EvalArgs>) =
    let s = settings m args
    let modelPath = Path.GetFullPath(args.GetResult Model)
    let ts, groups = LmEval.tasks m s outcome
    let root = LmEval.results modelPath s (args.TryGetResult Limit) seconds ts groups
    let options = JsonSerializerOptions(WriteIndented = true, NumberHandling = Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals)
    let record =
        {| task = args.GetResult Task; measure = m.Key; model = modelPath; count = outcome.Count
           metrics = dict outcome.Metrics; elapsedSeconds = seconds; items = outcome.Items.ToJson options |}
    let own = Text.Json.Nodes.JsonNode.Parse(JsonSerializer.Serialize(record, options)).AsObject()
    for KeyValue (k, v) in Seq.toList own do
        own.Remove k |> ignore
        root[k] <- v
    AtomicFile.WriteAllText(path, root.ToJsonString(options))
    if args.Contains Log_Samples then
        let stamp = DateTime.UtcNow.ToString("yyyy-MM-ddTHH-mm-ss.ffffff", Globalization.CultureInfo.InvariantCulture)
        for f in LmEval.writeSamples (Path.GetDirectoryName(Path.GetFullPath path)) stamp ts do printfn "samples: %s" f
    printfn "written: %s" path

/// `mofo eval` with the tasks of `measures` (`run`: every declared measure).
let runWith (measures: Measure list) (args: ParseResults<EvalArgs>) =
    let m = Evals.ofTaskIn measures (args.GetResult Task)
    requireBase m args
    if args.Contains Log_Samples && not (args.Contains Output) then
        raise (OptionException("Output", "--log-samples writes beside the results file: pass --output FILE"))
    let clock = Diagnostics.Stopwatch.StartNew()
    use model = ModelLoader.Load(args.GetResult Model, Option.toObj (args.TryGetResult Tokenizer), MoFO.Runtime.device (args.TryGetResult Device))
    let outcome = evaluateMeasure m model args
    printfn "%s on %s (%d items, %.1f s)" (args.GetResult Task) model.Name outcome.Count clock.Elapsed.TotalSeconds
    for (k, v) in outcome.Metrics do
        printfn "  %-24s %.4f" k v
    args.TryGetResult Output |> Option.iter (fun path -> write path m outcome clock.Elapsed.TotalSeconds args)
    0

let run (args: ParseResults<EvalArgs>) = runWith Measure.All args
