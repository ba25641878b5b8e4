/// `mofo eval`: one benchmark or forgetting measure on one model, with a progress display and a JSON record.
module MoFO.Dsl.Cli.Eval

open System
open System.Collections.Generic
open System.IO
open System.Text.Json
open Argu
open MoFO
open MoFO.Evaluation
open MoFO.Models
open MoFO.Dsl

[<RequireQualifiedAccess>]
type EvalTask =
    | Mmlu
    | Arc_Easy
    | Arc_Challenge
    | Hellaswag
    | Mc
    | Gsm8k
    | Humaneval
    | Perplexity
    | Pretrain_Proxy
    | Story_Cloze
    | Distance

type EvalArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Task of EvalTask
    | Tokenizer of path: string
    | Data of path: string
    | Limit of n: int
    | Shots of k: int
    | Output of path: string
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
            | Task _ -> "the benchmark or measure."
            | Tokenizer _ -> "the tokenizer file, if it is not beside the model."
            | Data _ -> "the task's data (defaults under the data root; required for hellaswag (its public jsonl), mc (a user jsonl) and perplexity (a .txt or a jsonl with \"text\"))."
            | Limit _ -> "evaluate only the first N items (MMLU: the first N of every subject)."
            | Shots _ -> "few-shot examples (default: 0; gsm8k 5)."
            | Output _ -> "write the metrics and per-item results as JSON to this file."
            | Base _ -> "pretrain-proxy / story-cloze: the base model whose samples are the data (default: --model itself); distance: the model to measure from (required)."
            | Samples _ -> "humaneval: completions per problem (default 10); pretrain-proxy/story-cloze: base-model samples (default 64)."
            | Temperature _ -> "humaneval sampling temperature (default 0.8; 0 = greedy)."
            | Top_P _ -> "humaneval nucleus sampling (default 0.95)."
            | K _ -> "humaneval: comma-separated k for pass@k (default 1,10)."
            | Max_New_Tokens _ -> "generation length (gsm8k 256, humaneval 512, samples 100)."
            | Seed _ -> "the seed of sampling and few-shot selection (default 1234)."
            | Cache _ -> "folder that caches base-model samples (default results/cache)."
            | Device _ -> "cpu (default, float32) or cuda (bfloat16)."
            | Unsafe_No_Sandbox -> "humaneval: run generated code without bubblewrap when it is missing (dangerous)."

let private defaultData (task: EvalTask) =
    match task with
    | EvalTask.Mmlu -> Some (Path.GetDirectoryName(DataRoot.Require DataRoot.Assets.MmluTest))
    | EvalTask.Arc_Easy -> Some (DataRoot.Require DataRoot.Assets.ArcEasy)
    | EvalTask.Arc_Challenge -> Some (DataRoot.Require DataRoot.Assets.ArcChallenge)
    | EvalTask.Gsm8k -> Some (DataRoot.Require DataRoot.Assets.Gsm8kTest)
    | EvalTask.Humaneval -> Some (DataRoot.Require DataRoot.Assets.HumanEval)
    | _ -> None

let private take (limit: int option) (xs: 'a seq) =
    match limit with
    | Some n -> Seq.truncate n xs |> Seq.toList
    | None -> Seq.toList xs

let private readTexts (path: string) =
    if path.EndsWith ".jsonl" || path.EndsWith ".jsonl.gz" then
        [ for l in MoFO.Data.JsonLines.Read path -> l.String "text" ]
    else
        File.ReadAllText(path).Split([| "\n\n" |], StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> Array.toList

/// Base-model samples for the data-free measures (cached).
let baseSamples (basePath: string option) (model: CausalLM) (tokenizer: string option) (n: int) (tokens: int) (seed: int64) (cache: string) =
    match basePath with
    | None -> Evals.baseSamples model n tokens seed cache
    | Some p ->
        use b = ModelLoader.Load(p, Option.toObj tokenizer)
        Evals.baseSamples b n tokens seed cache

/// Runs one task on a loaded model (through the same functions as the DSL and `mofo train --report`).
let evaluate (model: CausalLM) (args: ParseResults<EvalArgs>) : Evals.Outcome =
    let task = args.GetResult Task
    let data = args.TryGetResult Data |> Option.orElseWith (fun () -> defaultData task)
    let needData what = data |> Option.defaultWith (fun () -> raise (ArgumentException $"--task {task}: pass --data with {what}"))
    let limit = args.TryGetResult Limit
    let seed = args.GetResult(Seed, 1234L)
    let cache = args.GetResult(Cache, Evals.Settings.DefaultCache)
    let samplesFor () =
        baseSamples (args.TryGetResult Base) model (args.TryGetResult Tokenizer) (args.GetResult(Samples, 64)) (args.GetResult(Max_New_Tokens, 100)) seed cache
    match task with
    | EvalTask.Mmlu -> Evals.mmlu model (needData "the MMLU folder (holding test/ and dev/)") (args.GetResult(Shots, 0)) limit
    | EvalTask.Arc_Easy | EvalTask.Arc_Challenge ->
        let name = if task = EvalTask.Arc_Easy then "arc-easy" else "arc-challenge"
        Evals.multipleChoice model name (Arc.Read(needData "an ARC jsonl") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Hellaswag ->
        Evals.multipleChoice model "hellaswag" (HellaSwag.Read(needData "HellaSwag's public jsonl (e.g. hellaswag_val.jsonl); it is not available offline") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Mc ->
        Evals.multipleChoice model "mc" (McJsonl.Read(needData "a multiple-choice jsonl") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Story_Cloze -> Evals.storyCloze model (samplesFor ()) (int seed) limit
    | EvalTask.Gsm8k ->
        Evals.gsm8k model (needData "the GSM8K test jsonl") (args.GetResult(Shots, 5)) (args.GetResult(Max_New_Tokens, 256)) limit
    | EvalTask.Humaneval ->
        let ks = args.TryGetResult K |> Option.map EvalSamples.parseKs |> Option.defaultValue [ 1; 10 ]
        Evals.humanEval model (needData "HumanEval.jsonl.gz") (args.GetResult(Samples, 10)) (args.GetResult(Temperature, 0.8)) (args.GetResult(Top_P, 0.95))
            (args.GetResult(Max_New_Tokens, 512)) ks seed limit (args.Contains Unsafe_No_Sandbox)
    | EvalTask.Perplexity ->
        let texts = readTexts (needData "a text corpus (.txt, paragraphs separated by blank lines, or jsonl with \"text\")") |> take limit
        use progress = new ConsoleProgress("perplexity", int64 texts.Length, "texts")
        let l = Forgetting.Loss(model, texts, 16, progress)
        { Value = l.MeanTokenNll; Metrics = [ "mean_token_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]; Count = l.Texts; Items = null }
    | EvalTask.Distance ->
        let basePath = args.TryGetResult Base |> Option.defaultWith (fun () -> raise (ArgumentException "--task distance: pass --base with the model to measure from"))
        use b = ModelLoader.Load(basePath, Option.toObj (args.TryGetResult Tokenizer))
        Evals.distance model b
    | EvalTask.Pretrain_Proxy -> Evals.pretrainProxy model (samplesFor () |> take limit |> ResizeArray)

let run (args: ParseResults<EvalArgs>) =
    let clock = Diagnostics.Stopwatch.StartNew()
    let modelPath = args.GetResult Model
    use model = ModelLoader.Load(modelPath, Option.toObj (args.TryGetResult Tokenizer), MoFO.Runtime.device (args.TryGetResult Device))
    let task = args.GetResult Task
    let outcome = evaluate model args
    let taskName = (string task).ToLowerInvariant().Replace('_', '-')
    printfn "%s on %s (%d items, %.1f s)" taskName model.Name outcome.Count clock.Elapsed.TotalSeconds
    for (k, v) in outcome.Metrics do
        printfn "  %-24s %.4f" k v
    args.TryGetResult Output
    |> Option.iter (fun path ->
        let record =
            {| task = taskName; model = Path.GetFullPath modelPath; count = outcome.Count
               metrics = dict outcome.Metrics; elapsedSeconds = clock.Elapsed.TotalSeconds; items = outcome.Items |}
        AtomicFile.WriteAllText(path, JsonSerializer.Serialize(record, JsonSerializerOptions(WriteIndented = true, NumberHandling = Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals)))
        printfn "written: %s" path)
    0
