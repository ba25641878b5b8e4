/// Every measure of a model in one place, as typed values: the field's benchmarks, the forgetting measures and the
/// fine-tuning task itself. `mofo eval`, `mofo train --report` and the experiment DSL all call these functions, so one
/// setting gives one number whichever way it is asked for.
module MoFO.Dsl.Evals

open System
open System.Collections.Generic
open System.IO
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models

/// A measure of a model. Each has one headline number (`Measure.value` of its outcome).
[<RequireQualifiedAccess>]
type Measure =
    /// MMLU, 0-shot accuracy (the paper's column)
    | Mmlu
    /// ARC-Easy, acc_norm
    | ArcEasy
    /// ARC-Challenge, acc_norm
    | ArcChallenge
    /// HellaSwag, acc_norm (its public jsonl must be given: it is not available offline)
    | HellaSwag
    /// GSM8K, 5-shot greedy exact match (strict)
    | Gsm8k
    /// HumanEval pass@k in the sandbox (paper: pass@10)
    | HumanEval
    /// mean token NLL of the fine-tuned model on seeded samples of the base model: the data-free pretraining-loss proxy
    | PretrainProxy
    /// story cloze built from the base model's samples, acc_norm
    | StoryCloze
    /// agreement of greedy continuations with the base model's (1 = the base model's stories intact)
    | GreedyIntact
    /// L2 distance of the weights from the base model
    | Distance
    /// held-out loss of the fine-tuning task (answer tokens, teacher-forced)
    | TaskLoss
    /// held-out top-1 accuracy on the answer tokens of the fine-tuning task
    | TaskTokenAccuracy
    /// the task's own accuracy where it has one (DPR: the candidate with the higher likelihood)
    | TaskAccuracy

    member m.Name =
        match m with
        | Mmlu -> "MMLU" | ArcEasy -> "ARC-easy" | ArcChallenge -> "ARC-challenge" | HellaSwag -> "HellaSwag"
        | Gsm8k -> "GSM8K" | HumanEval -> "HumanEval" | PretrainProxy -> "pretrain-proxy NLL" | StoryCloze -> "story-cloze"
        | GreedyIntact -> "greedy intact" | Distance -> "L2 from base" | TaskLoss -> "task loss"
        | TaskTokenAccuracy -> "task token acc" | TaskAccuracy -> "task acc"
    /// The key in JSON files.
    member m.Key =
        match m with
        | Mmlu -> "mmlu" | ArcEasy -> "arc_easy" | ArcChallenge -> "arc_challenge" | HellaSwag -> "hellaswag"
        | Gsm8k -> "gsm8k" | HumanEval -> "humaneval" | PretrainProxy -> "pretrain_proxy_nll" | StoryCloze -> "story_cloze"
        | GreedyIntact -> "greedy_intact" | Distance -> "distance_l2" | TaskLoss -> "task_loss"
        | TaskTokenAccuracy -> "task_token_acc" | TaskAccuracy -> "task_acc"
    /// Whether a larger value is better.
    member m.HigherIsBetter = match m with PretrainProxy | TaskLoss | Distance -> false | _ -> true
    /// A percentage in the paper's tables (accuracies) rather than a raw number.
    member m.IsAccuracy =
        match m with
        | Mmlu | ArcEasy | ArcChallenge | HellaSwag | Gsm8k | HumanEval | StoryCloze | TaskAccuracy | TaskTokenAccuracy | GreedyIntact -> true
        | _ -> false
    static member All =
        [ Mmlu; ArcEasy; ArcChallenge; HellaSwag; Gsm8k; HumanEval; PretrainProxy; StoryCloze; GreedyIntact; Distance; TaskLoss; TaskTokenAccuracy; TaskAccuracy ]
    static member Parse(s: string) =
        let known = String.Join(", ", Measure.All |> List.map (fun m -> m.Key))
        Measure.All |> List.tryFind (fun m -> m.Key = s || m.Name = s)
        |> Option.defaultWith (fun () -> raise (ArgumentException $"unknown measure '{s}' (expected one of {known})"))

/// How the measures are run: item limits, shots, samples. `Settings.Tiny` keeps a stories260K evaluation to seconds;
/// `Settings.Paper` is the paper's protocol (full test sets, MMLU 0-shot, GSM8K 5-shot, HumanEval pass@10).
type Settings =
    { ArcLimit: int option
      MmluPerSubject: int option
      HellaSwagData: string option
      HellaSwagLimit: int option
      Gsm8kLimit: int option
      Gsm8kShots: int
      Gsm8kMaxNewTokens: int
      HumanEvalLimit: int option
      HumanEvalSamples: int
      HumanEvalTemperature: float
      HumanEvalK: int
      HumanEvalMaxNewTokens: int
      /// base-model samples for the pretrain proxy and story cloze
      Samples: int
      SampleTokens: int
      /// greedy intactness: prompts (openings of base samples) and tokens compared
      IntactPrompts: int
      IntactTokens: int
      Seed: int64
      /// task measures on at most this many held-out examples (None: all)
      TaskLimit: int option
      /// folder of cached base-model samples
      Cache: string
      UnsafeNoSandbox: bool }

    static member DefaultCache =
        Path.Combine(defaultArg (Option.ofObj (DataRoot.RepositoryRoot())) (Directory.GetCurrentDirectory()), "results", "cache")
    static member Paper =
        { ArcLimit = None; MmluPerSubject = None; HellaSwagData = None; HellaSwagLimit = None; Gsm8kLimit = None; Gsm8kShots = 5
          Gsm8kMaxNewTokens = 256; HumanEvalLimit = None; HumanEvalSamples = 10; HumanEvalTemperature = 0.8; HumanEvalK = 10
          HumanEvalMaxNewTokens = 512; Samples = 64; SampleTokens = 100; IntactPrompts = 16; IntactTokens = 48; Seed = 1234L; TaskLimit = None
          Cache = Settings.DefaultCache; UnsafeNoSandbox = false }
    /// The tiny scale: the real harnesses on fixed subsets (the first N items), greedy HumanEval pass@1. A 260K-parameter
    /// model is near chance on all of them; the forgetting measures and the task's own held-out numbers carry the signal.
    static member Tiny =
        { Settings.Paper with
            ArcLimit = Some 500; MmluPerSubject = Some 4; Gsm8kLimit = Some 24; Gsm8kMaxNewTokens = 96
            HumanEvalLimit = Some 16; HumanEvalSamples = 1; HumanEvalTemperature = 0.0; HumanEvalK = 1; HumanEvalMaxNewTokens = 96 }

/// One measurement: the headline value, every metric of the harness, the items it ran on.
type Outcome = { Value: float; Metrics: (string * float) list; Count: int; Items: obj }

let private take (limit: int option) (xs: 'a seq) =
    match limit with
    | Some n -> Seq.truncate n xs |> Seq.toList
    | None -> Seq.toList xs

let mcOutcome (s: McSummary) =
    { Value = s.AccNorm
      Metrics = [ "acc", s.Acc; "acc_stderr", s.AccStderr; "acc_norm", s.AccNorm; "chance", s.Chance ]
      Count = s.Count
      Items = s.Items |> Seq.map (fun i -> {| id = i.Id; gold = i.Gold; pred = i.Predicted; pred_norm = i.PredictedNorm; ll = i.LogLikelihoods |}) |> Seq.toArray :> obj }

/// A progress display for a measure (off when the console is not a terminal or progress is disabled).
let private progressFor name (total: int) unit = new ConsoleProgress(name, int64 total, unit)

/// Multiple choice by log-likelihood (ARC, HellaSwag, user jsonl, story cloze, DPR).
let multipleChoice (model: ILanguageModel) (name: string) (items: McItem list) (shots: int) (seed: int) =
    use progress = progressFor name (MultipleChoiceEvaluator.RequestCount items) "requests"
    MultipleChoiceEvaluator(Shots = shots, Seed = seed).Evaluate(model, name, items, null, progress) |> mcOutcome

/// MMLU: `root` holds test/ and dev/; the first `perSubject` questions of every subject when given.
let mmlu (model: ILanguageModel) (root: string) (shots: int) (perSubject: int option) =
    let test = Mmlu.ReadSplit(Path.Combine(root, "test"))
    let test = match perSubject with Some n -> Mmlu.LimitPerGroup(test, n) | None -> test
    use progress = progressFor "mmlu" (MultipleChoiceEvaluator.RequestCount test) "requests"
    let dev = if shots > 0 then Mmlu.ReadSplit(Path.Combine(root, "dev")) |> Seq.groupBy (fun i -> i.Group) |> Seq.map (fun (g, xs) -> g, Seq.toArray xs) |> dict else dict []
    let ev = MultipleChoiceEvaluator(Shots = shots, Sampler = FewShotSampler.FirstN)
    let s = ev.Evaluate(model, "mmlu", test, (fun item -> dev[item.Group] :> IReadOnlyList<_>), progress)
    { mcOutcome s with Value = s.Acc }

/// GSM8K: greedy generation with the harness's prompt and filters; the value is the strict exact match.
let gsm8k (model: ILanguageModel) (testPath: string) (shots: int) (maxNewTokens: int) (limit: int option) =
    let test = Gsm8k.Read testPath |> take limit
    let train = Gsm8k.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain)
    use progress = progressFor "gsm8k" test.Length "problems"
    let s = Gsm8k.Evaluate(model, test, train, shots, maxNewTokens, 8, progress)
    { Value = s.StrictMatch
      Metrics = [ "exact_match_strict", s.StrictMatch; "exact_match_flexible", s.FlexibleMatch ]
      Count = s.Items.Count
      Items = s.Items :> obj }

/// HumanEval: n completions per problem, executed in the sandbox; every pass@k of `ks` (the value: pass@ of the first k).
let humanEval (model: ILanguageModel) (path: string) (n: int) (temperature: float) (topP: float) (maxNewTokens: int)
              (ks: int list) (seed: int64) (limit: int option) (unsafeNoSandbox: bool) =
    let problems = HumanEval.ReadProblems path |> take limit
    let sandbox = PythonSandbox.Create(SandboxLimits(), unsafeNoSandbox)
    let samples =
        use progress = progressFor "humaneval generation" problems.Length "problems"
        HumanEval.Generate(model, problems, n, temperature, topP, maxNewTokens, seed, progress)
    use progress = progressFor "humaneval execution" samples.Count "samples"
    let s = HumanEval.Score(samples, Dictionary(problems |> Seq.map (fun p -> KeyValuePair(p.TaskId, p))), sandbox, ks, 0, progress)
    let metrics = [ for KeyValue (k, v) in s.PassAtK -> $"pass@{k}", v ]
    { Value = (match ks with k :: _ when s.PassAtK.ContainsKey k -> s.PassAtK[k] | _ -> nan)
      Metrics = metrics; Count = s.Problems; Items = s.Results :> obj }

/// Seeded samples of the base model from BOS (cached under `cache`).
let baseSamples (baseModel: ILanguageModel) (n: int) (tokens: int) (seed: int64) (cache: string) =
    Forgetting.BaseSamples(baseModel, Forgetting.SampleSpec(n, tokens, 1.0, seed), cache)

/// The pretraining-loss proxy: mean token NLL on the base model's samples.
let pretrainProxy (model: ILanguageModel) (samples: IReadOnlyList<string>) =
    use progress = progressFor "pretrain-proxy" samples.Count "samples"
    let l = Forgetting.Loss(model, samples, 16, progress)
    { Value = l.MeanTokenNll; Metrics = [ "pretrain_proxy_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]
      Count = l.Texts; Items = null }

/// Story cloze from the base model's samples (acc_norm is the value).
let storyCloze (model: ILanguageModel) (samples: IReadOnlyList<string>) (seed: int) (limit: int option) =
    multipleChoice model "story-cloze" (Forgetting.StoryCloze(samples, 3, seed) |> take limit) 0 seed

/// Greedy intactness: the openings (first 8 tokens) of base-model samples are continued greedily by the model for up
/// to `tokens` tokens (an early stop counts as an end-of-sequence token); the value is the fraction of those tokens that
/// the base model, given the same prefix, would also have chosen greedily. 1 for the base model itself; a model whose
/// stories have broken ("upon upon upon …", or an immediate stop) scores near 0, while a model that tells a different
/// but fluent story keeps a high score.
let greedyIntact (model: CausalLM) (baseModel: CausalLM) (samples: IReadOnlyList<string>) (prompts: int) (tokens: int) =
    let openings =
        samples |> Seq.truncate prompts
        |> Seq.map (fun s -> model.Tokenizer.Encode(s, true) |> Seq.truncate 9 |> Seq.toArray)
        |> Seq.toList
    let conts = model.GenerateTokens(ResizeArray openings, GenerationOptions(tokens, 0.0))
    let eos = model.Tokenizer.EosId
    use _ng = TorchSharp.torch.no_grad()
    let agree =
        [ for i in 0 .. openings.Length - 1 ->
            let cont = conts[i] |> Seq.toArray
            let cont = if cont.Length < tokens && eos.HasValue then Array.append cont [| eos.Value |] else cont
            if cont.Length = 0 then 0.0
            else
                let ids = Array.append openings[i] cont |> Array.map int64
                use scope = TorchSharp.torch.NewDisposeScope()
                let logits = baseModel.Logits(TorchSharp.torch.tensor(ids).unsqueeze(0L))
                let pred = logits.select(0, 0L).argmax(-1L).data<int64>().ToArray()
                // position j predicts token j + 1: the continuation starts after the opening's last position
                let start = openings[i].Length - 1
                let same = cont |> Array.mapi (fun k t -> if pred[start + k] = int64 t then 1 else 0) |> Array.sum
                float same / float cont.Length ]
    { Value = List.average agree; Metrics = [ "greedy_intact", List.average agree ]; Count = openings.Length; Items = agree |> List.toArray :> obj }

/// L2 distance of the weights from the base model's, in total and per tensor.
let distance (model: CausalLM) (baseModel: CausalLM) =
    let d = ParameterDistance.Compute(baseModel.Module.StateDict(), model.Module.StateDict(), baseModel.Name, model.Name)
    { Value = d.L2; Metrics = [ "l2", d.L2; "relative", d.Relative; "base_norm", d.BaseNorm ]; Count = d.PerTensorL2.Count
      Items = d.PerTensorL2 :> obj }

/// The fine-tuning task's held-out examples and, where the task has one, its multiple-choice form.
type TaskData = { Name: string; HeldOut: TrainingExample list; Choices: McItem list option; MaxLength: int }

let taskFit (model: CausalLM) (task: TaskData) = TaskMetrics.Fit(model, ResizeArray task.HeldOut, task.MaxLength)

/// What the measures of one model need besides the model: the base model (loaded on first use), the task, the settings.
type Context =
    { Base: Lazy<CausalLM>
      Task: TaskData option
      Settings: Settings }

let private samplesOf (ctx: Context) =
    baseSamples ctx.Base.Value ctx.Settings.Samples ctx.Settings.SampleTokens ctx.Settings.Seed ctx.Settings.Cache

/// The context's task under the settings' TaskLimit; `m` names the measure that needs it in the error.
let private taskOf (ctx: Context) (m: Measure) =
    let t = ctx.Task |> Option.defaultWith (fun () -> raise (ArgumentException $"the measure {m.Name} needs the fine-tuning task's held-out data"))
    match ctx.Settings.TaskLimit with
    | Some n -> { t with HeldOut = List.truncate n t.HeldOut; Choices = t.Choices |> Option.map (List.truncate n) }
    | None -> t

/// One measure, with the held-out task fit (TaskLoss, TaskTokenAccuracy) read from `fit`.
let private measureWith (fit: Lazy<TaskFit>) (ctx: Context) (model: CausalLM) (m: Measure) : Outcome =
    let s = ctx.Settings
    let task () = taskOf ctx m
    match m with
    | Measure.Mmlu -> mmlu model (Path.GetDirectoryName(DataRoot.Require DataRoot.Assets.MmluTest)) 0 s.MmluPerSubject
    | Measure.ArcEasy -> multipleChoice model "arc-easy" (Arc.Read(DataRoot.Require DataRoot.Assets.ArcEasy) |> take s.ArcLimit) 0 (int s.Seed)
    | Measure.ArcChallenge -> multipleChoice model "arc-challenge" (Arc.Read(DataRoot.Require DataRoot.Assets.ArcChallenge) |> take s.ArcLimit) 0 (int s.Seed)
    | Measure.HellaSwag ->
        match s.HellaSwagData with
        | Some p -> multipleChoice model "hellaswag" (HellaSwag.Read p |> take s.HellaSwagLimit) 0 (int s.Seed)
        | None -> { Value = nan; Metrics = [ "unavailable", nan ]; Count = 0; Items = "HellaSwag is not available offline: give its public jsonl (hellaswag_val.jsonl) in the paper config or --hellaswag" }
    | Measure.Gsm8k -> gsm8k model (DataRoot.Require DataRoot.Assets.Gsm8kTest) s.Gsm8kShots s.Gsm8kMaxNewTokens s.Gsm8kLimit
    | Measure.HumanEval ->
        let ks = if s.HumanEvalK = 1 then [ 1 ] else [ s.HumanEvalK; 1 ]
        humanEval model (DataRoot.Require DataRoot.Assets.HumanEval) s.HumanEvalSamples s.HumanEvalTemperature 0.95 s.HumanEvalMaxNewTokens ks s.Seed s.HumanEvalLimit s.UnsafeNoSandbox
    | Measure.PretrainProxy -> pretrainProxy model (samplesOf ctx)
    | Measure.StoryCloze -> storyCloze model (samplesOf ctx) (int s.Seed) None
    | Measure.GreedyIntact -> greedyIntact model ctx.Base.Value (samplesOf ctx) s.IntactPrompts s.IntactTokens
    | Measure.Distance -> distance model ctx.Base.Value
    | Measure.TaskLoss ->
        let f = fit.Value
        { Value = f.MeanTokenNll; Metrics = [ "task_loss", f.MeanTokenNll; "task_token_acc", f.TokenAccuracy; "tokens", float f.Tokens ]; Count = f.Examples; Items = null }
    | Measure.TaskTokenAccuracy ->
        let f = fit.Value
        { Value = f.TokenAccuracy; Metrics = [ "task_token_acc", f.TokenAccuracy; "task_loss", f.MeanTokenNll; "tokens", float f.Tokens ]; Count = f.Examples; Items = null }
    | Measure.TaskAccuracy ->
        match (task ()).Choices with
        | Some items -> multipleChoice model "task" items 0 (int s.Seed) |> fun o -> { o with Value = (o.Metrics |> List.find (fun (k, _) -> k = "acc") |> snd) }
        | None ->
            let f = fit.Value
            { Value = f.TokenAccuracy; Metrics = [ "task_token_acc", f.TokenAccuracy ]; Count = f.Examples; Items = null }

/// The held-out task fit of a model, computed on first use.
let private lazyFit (ctx: Context) (model: CausalLM) (m: Measure) = lazy (taskFit model (taskOf ctx m))

/// Runs one measure on a model.
let measure (ctx: Context) (model: CausalLM) (m: Measure) : Outcome = measureWith (lazyFit ctx model m) ctx model m

/// Runs several measures on one model, in order (lazily: each is computed when the sequence reaches it); the held-out
/// task fit that TaskLoss, TaskTokenAccuracy and a choice-less TaskAccuracy share is computed once.
let measureAll (ctx: Context) (model: CausalLM) (ms: seq<Measure>) : seq<Measure * Outcome> =
    let shared = ref None
    ms |> Seq.map (fun m ->
        let fit =
            match shared.Value with
            | Some f -> f
            | None ->
                let f = lazyFit ctx model m
                if m = Measure.TaskLoss || m = Measure.TaskTokenAccuracy || m = Measure.TaskAccuracy then shared.Value <- Some f
                f
        m, measureWith fit ctx model m)

/// The `mofo eval` command line that computes the same number (for reports).
let command (modelPath: string) (basePath: string) (s: Settings) (m: Measure) =
    let lim flag = function Some (n: int) -> $" --{flag} {n}" | None -> ""
    let q (p: string) = if p.Contains ' ' then $"\"{p}\"" else p
    match m with
    | Measure.Mmlu -> Some $"""mofo eval --model {q modelPath} --task mmlu{lim "limit" s.MmluPerSubject}"""
    | Measure.ArcEasy -> Some $"""mofo eval --model {q modelPath} --task arc-easy{lim "limit" s.ArcLimit}"""
    | Measure.ArcChallenge -> Some $"""mofo eval --model {q modelPath} --task arc-challenge{lim "limit" s.ArcLimit}"""
    | Measure.Gsm8k -> Some $"""mofo eval --model {q modelPath} --task gsm8k --shots {s.Gsm8kShots} --max-new-tokens {s.Gsm8kMaxNewTokens}{lim "limit" s.Gsm8kLimit}"""
    | Measure.HumanEval ->
        Some $"""mofo eval --model {q modelPath} --task humaneval --samples {s.HumanEvalSamples} --temperature {s.HumanEvalTemperature} --k {s.HumanEvalK} --max-new-tokens {s.HumanEvalMaxNewTokens}{lim "limit" s.HumanEvalLimit}"""
    | Measure.PretrainProxy -> Some $"""mofo eval --model {q modelPath} --task pretrain-proxy --base {q basePath} --samples {s.Samples} --max-new-tokens {s.SampleTokens}"""
    | Measure.StoryCloze -> Some $"""mofo eval --model {q modelPath} --task story-cloze --base {q basePath} --samples {s.Samples} --max-new-tokens {s.SampleTokens}"""
    | Measure.Distance -> Some $"""mofo eval --model {q modelPath} --task distance --base {q basePath}"""
    | _ -> None
