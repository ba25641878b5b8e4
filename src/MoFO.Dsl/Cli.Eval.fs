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

/// The metrics of one evaluation, and the per-item records that go to the JSON file.
type EvalOutcome = { Metrics: (string * float) list; Count: int; Items: obj }

let private mcOutcome (s: McSummary) =
    { Metrics = [ "acc", s.Acc; "acc_stderr", s.AccStderr; "acc_norm", s.AccNorm; "chance", s.Chance ]
      Count = s.Count
      Items = s.Items |> Seq.map (fun i -> {| id = i.Id; gold = i.Gold; pred = i.Predicted; pred_norm = i.PredictedNorm; ll = i.LogLikelihoods |}) |> Seq.toArray :> obj }

let private runMc (model: ILanguageModel) name (items: McItem list) shots seed =
    use progress = new ConsoleProgress(name, int64 (MultipleChoiceEvaluator.RequestCount items), "requests")
    MultipleChoiceEvaluator(Shots = shots, Seed = seed).Evaluate(model, name, items, null, progress) |> mcOutcome

/// Base-model samples for the data-free measures (cached).
let baseSamples (basePath: string option) (model: CausalLM) (tokenizer: string option) (n: int) (tokens: int) (seed: int64) (cache: string) =
    let spec = Forgetting.SampleSpec(n, tokens, 1.0, seed)
    match basePath with
    | None -> Forgetting.BaseSamples(model, spec, cache)
    | Some p ->
        use b = ModelLoader.Load(p, Option.toObj tokenizer)
        Forgetting.BaseSamples(b, spec, cache)

/// Runs one task on a loaded model.
let evaluate (model: CausalLM) (args: ParseResults<EvalArgs>) =
    let task = args.GetResult Task
    let data = args.TryGetResult Data |> Option.orElseWith (fun () -> defaultData task)
    let needData what = data |> Option.defaultWith (fun () -> raise (ArgumentException $"--task {task}: pass --data with {what}"))
    let limit = args.TryGetResult Limit
    let seed = args.GetResult(Seed, 1234L)
    let cache = args.GetResult(Cache, Path.Combine(defaultArg (Option.ofObj (DataRoot.RepositoryRoot())) ".", "results", "cache"))
    let samplesFor () =
        baseSamples (args.TryGetResult Base) model (args.TryGetResult Tokenizer) (args.GetResult(Samples, 64)) (args.GetResult(Max_New_Tokens, 100)) seed cache
    match task with
    | EvalTask.Mmlu ->
        let shots = args.GetResult(Shots, 0)
        let root = needData "the MMLU folder (holding test/ and dev/)"
        let test = Mmlu.ReadSplit(Path.Combine(root, "test"))
        let test = match limit with Some n -> Mmlu.LimitPerGroup(test, n) | None -> test
        use progress = new ConsoleProgress("mmlu", int64 (MultipleChoiceEvaluator.RequestCount test), "requests")
        let dev = if shots > 0 then Mmlu.ReadSplit(Path.Combine(root, "dev")) |> Seq.groupBy (fun i -> i.Group) |> Seq.map (fun (g, xs) -> g, Seq.toArray xs) |> dict else dict []
        let ev = MultipleChoiceEvaluator(Shots = shots, Sampler = FewShotSampler.FirstN)
        let s = ev.Evaluate(model, "mmlu", test, (fun item -> dev[item.Group] :> IReadOnlyList<_>), progress)
        mcOutcome s
    | EvalTask.Arc_Easy | EvalTask.Arc_Challenge ->
        let name = if task = EvalTask.Arc_Easy then "arc-easy" else "arc-challenge"
        runMc model name (Arc.Read(needData "an ARC jsonl") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Hellaswag ->
        runMc model "hellaswag" (HellaSwag.Read(needData "HellaSwag's public jsonl (e.g. hellaswag_val.jsonl); it is not available offline") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Mc ->
        runMc model "mc" (McJsonl.Read(needData "a multiple-choice jsonl") |> take limit) (args.GetResult(Shots, 0)) (int seed)
    | EvalTask.Story_Cloze ->
        let items = Forgetting.StoryCloze(samplesFor (), 3, int seed) |> take limit
        runMc model "story-cloze" items 0 (int seed)
    | EvalTask.Gsm8k ->
        let test = Gsm8k.Read(needData "the GSM8K test jsonl") |> take limit
        let train = Gsm8k.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain)
        use progress = new ConsoleProgress("gsm8k", int64 test.Length, "problems")
        let s = Gsm8k.Evaluate(model, test, train, args.GetResult(Shots, 5), args.GetResult(Max_New_Tokens, 256), 8, progress)
        { Metrics = [ "exact_match_strict", s.StrictMatch; "exact_match_flexible", s.FlexibleMatch ]
          Count = s.Items.Count
          Items = s.Items :> obj }
    | EvalTask.Humaneval ->
        let problems = HumanEval.ReadProblems(needData "HumanEval.jsonl.gz") |> take limit
        let ks = args.TryGetResult K |> Option.map EvalSamples.parseKs |> Option.defaultValue [ 1; 10 ]
        let sandbox = PythonSandbox.Create(SandboxLimits(), args.Contains Unsafe_No_Sandbox)
        let n = args.GetResult(Samples, 10)
        let samples =
            use progress = new ConsoleProgress("humaneval generation", int64 problems.Length, "problems")
            HumanEval.Generate(model, problems, n, args.GetResult(Temperature, 0.8), args.GetResult(Top_P, 0.95), args.GetResult(Max_New_Tokens, 512), seed, progress)
        use progress = new ConsoleProgress("humaneval execution", int64 samples.Count, "samples")
        let s = HumanEval.Score(samples, Dictionary(problems |> Seq.map (fun p -> KeyValuePair(p.TaskId, p))), sandbox, ks, 0, progress)
        { Metrics = [ for KeyValue (k, v) in s.PassAtK -> $"pass@{k}", v ]
          Count = s.Problems
          Items = s.Results :> obj }
    | EvalTask.Perplexity ->
        let texts = readTexts (needData "a text corpus (.txt, paragraphs separated by blank lines, or jsonl with \"text\")") |> take limit
        use progress = new ConsoleProgress("perplexity", int64 texts.Length, "texts")
        let l = Forgetting.Loss(model, texts, 16, progress)
        { Metrics = [ "mean_token_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]; Count = l.Texts; Items = null }
    | EvalTask.Distance ->
        let basePath = args.TryGetResult Base |> Option.defaultWith (fun () -> raise (ArgumentException "--task distance: pass --base with the model to measure from"))
        use b = ModelLoader.Load(basePath, Option.toObj (args.TryGetResult Tokenizer))
        let d = ParameterDistance.Compute(b.Module.StateDict(), model.Module.StateDict(), basePath, model.Name)
        { Metrics = [ "l2", d.L2; "relative", d.Relative; "base_norm", d.BaseNorm ]
          Count = d.PerTensorL2.Count
          Items = d.PerTensorL2 :> obj }
    | EvalTask.Pretrain_Proxy ->
        let texts = samplesFor () |> take limit
        use progress = new ConsoleProgress("pretrain-proxy", int64 texts.Length, "samples")
        let l = Forgetting.Loss(model, texts, 16, progress)
        { Metrics = [ "pretrain_proxy_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]; Count = l.Texts; Items = null }

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
