/// Every measure of a model in one place: the harnesses of the field's benchmarks, the forgetting measures and the
/// fine-tuning task itself, and `table`, the one declaration of each measure (key, name, direction, unit, the assets it
/// needs, how it runs, its `mofo eval` task and knobs). `mofo eval`, `mofo train --report` and the experiment DSL all go
/// through `measure`, so one setting gives one number whichever way it is asked for.
module MoFO.Dsl.Evals

open System
open System.Collections.Generic
open System.IO
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models

let private take (limit: int option) (xs: 'a seq) =
    match limit with
    | Some n -> Seq.truncate n xs |> Seq.toList
    | None -> Seq.toList xs

let mcOutcome (s: McSummary) =
    { Value = s.AccNorm
      Metrics = [ "acc", s.Acc; "acc_stderr", s.AccStderr; "acc_norm", s.AccNorm; "chance", s.Chance ]
      Count = s.Count
      Items = s.Items |> Seq.toArray :> obj }

/// HumanEval's per-sample results with the problems they answer (what the lm-eval samples file needs).
type HumanEvalItems = { Problems: HumanEvalProblem list; Results: HumanEvalSampleResult list }

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
    let test = Gsm8kData.Read testPath |> take limit
    let train = Gsm8kData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain)
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
      Metrics = metrics; Count = s.Problems; Items = { Problems = problems; Results = List.ofSeq s.Results } :> obj }

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

/// Texts of a corpus: a .txt of paragraphs separated by blank lines, or a jsonl with "text".
let readTexts (path: string) =
    if path.EndsWith ".jsonl" || path.EndsWith ".jsonl.gz" then
        [ for l in MoFO.Data.JsonLines.Read path -> l.String "text" ]
    else
        File.ReadAllText(path).Split([| "\n\n" |], StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> Array.toList

/// Perplexity of a corpus: mean token NLL (and its exp) over its texts.
let perplexity (model: ILanguageModel) (texts: string list) =
    use progress = progressFor "perplexity" texts.Length "texts"
    let l = Forgetting.Loss(model, texts, 16, progress)
    { Value = l.MeanTokenNll; Metrics = [ "mean_token_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]; Count = l.Texts; Items = null }

let taskFit (model: CausalLM) (task: TaskData) = TaskMetrics.Fit(model, ResizeArray task.HeldOut, task.MaxLength)

// ---- the declaration of every measure -------------------------------------------------------------------------------

/// A model being measured, with the held-out task fit that TaskLoss, TaskTokenAccuracy and a choice-less TaskAccuracy
/// share (computed once, on first use).
type Probe = { Model: CausalLM; Fit: Lazy<TaskFit> }

/// What a measure needs besides the model.
[<RequireQualifiedAccess>]
type Need =
    /// the base model (its samples, or its weights)
    | Base
    /// the fine-tuning task's held-out data
    | Task

/// One measure, declared once.
type Info =
    { Measure: Measure
      /// the key in JSON files and caches
      Key: string
      /// the name in tables
      Name: string
      HigherIsBetter: bool
      Unit: MeasureUnit
      /// the report suite that lists it as a general capability (None: the distance and the task's measures)
      Suite: SuiteTag option
      Needs: Need list
      /// the files it reads under these settings (a missing one is a MissingAssetException before any work)
      Assets: Settings -> string list
      /// whether it can run under these settings (HellaSwag only with its file)
      Available: Settings -> bool
      /// `mofo eval --task <name>` (None: only inside a run or a report)
      Task: string option
      /// the settings it reads, as `mofo eval`'s knobs (for the equivalent command)
      Knobs: Settings -> EvalKnobs
      /// `mofo eval`'s knobs onto the settings
      Apply: EvalKnobs -> Settings -> Settings
      Run: Context -> Probe -> Outcome }

let private asset (a: Asset) = DataRoot.Require a
let private orElse (k: EvalKnobs) (key: string) (s: Settings) = match k.Data with Some d -> { s with Data = s.Data |> Map.add key d } | None -> s
let private limitOf (k: EvalKnobs) (key: string) (s: Settings) = match k.Limit with Some n -> s.WithLimit(key, n) | None -> s
let private shotsOf (k: EvalKnobs) (key: string) (s: Settings) = match k.Shots with Some n -> { s with Shots = s.Shots |> Map.add key n } | None -> s
let private seedOf (k: EvalKnobs) (s: Settings) = match k.Seed with Some x -> { s with Seed = x } | None -> s
let private samplesOfKnobs (k: EvalKnobs) (s: Settings) =
    { s with Samples = defaultArg k.Samples s.Samples; SampleTokens = defaultArg k.MaxNewTokens s.SampleTokens }
let private knobs (s: Settings) (key: string) = { EvalKnobs.None with Limit = s.Limit key; Data = s.DataOf key }
let private dataFor (s: Settings) (key: string) (fallback: unit -> string) = s.DataOf key |> Option.defaultWith fallback
let private needData (s: Settings) (key: string) (what: string) =
    s.DataOf key |> Option.defaultWith (fun () -> raise (OptionException("Data", $"Data: {key} needs {what}")))

let private samplesOf (ctx: Context) =
    baseSamples ctx.Base.Value ctx.Settings.Samples ctx.Settings.SampleTokens ctx.Settings.Seed ctx.Settings.Cache

/// The context's task under the settings' TaskLimit; `name` names the measure that needs it in the error.
let private taskOf (ctx: Context) (name: string) =
    let t = ctx.Task |> Option.defaultWith (fun () -> raise (OptionException("Task", $"Task: the measure {name} needs the fine-tuning task's held-out data")))
    match ctx.Settings.TaskLimit with
    | Some n -> { t with HeldOut = List.truncate n t.HeldOut; Choices = t.Choices |> Option.map (List.truncate n) }
    | None -> t

let private choice (key: string) (name: string) (m: Measure) (suite: SuiteTag option) (file: Settings -> string) (read: string -> McItem list) =
    { Measure = m; Key = key; Name = name; HigherIsBetter = true; Unit = MeasureUnit.Accuracy; Suite = suite; Needs = []
      Assets = (fun s -> [ file s ]); Available = (fun _ -> true); Task = Some (key.Replace('_', '-'))
      Knobs = (fun s -> { knobs s key with Shots = Some (s.ShotsOf key) })
      Apply = (fun k s -> s |> orElse k key |> limitOf k key |> shotsOf k key |> seedOf k)
      Run = (fun ctx p -> multipleChoice p.Model (key.Replace('_', '-')) (read (file ctx.Settings) |> take (ctx.Settings.Limit key)) (ctx.Settings.ShotsOf key) (int ctx.Settings.Seed)) }

/// Every measure, in the order of `Measure`'s cases.
let table : Info list =
    [ { Measure = Measure.Mmlu; Key = "mmlu"; Name = "MMLU"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy; Suite = Some SuiteTag.Paper; Needs = []
        Assets = (fun s -> [ dataFor s "mmlu" (fun () -> Path.GetDirectoryName(asset DataRoot.Assets.MmluTest)) ])
        Available = (fun _ -> true); Task = Some "mmlu"
        Knobs = (fun s -> { knobs s "mmlu" with Shots = Some (s.ShotsOf "mmlu") })
        Apply = (fun k s -> s |> orElse k "mmlu" |> limitOf k "mmlu" |> shotsOf k "mmlu" |> seedOf k)
        Run = (fun ctx p ->
            let s = ctx.Settings
            mmlu p.Model (dataFor s "mmlu" (fun () -> Path.GetDirectoryName(asset DataRoot.Assets.MmluTest))) (s.ShotsOf "mmlu") (s.Limit "mmlu")) }
      choice "arc_easy" "ARC-easy" Measure.ArcEasy (Some SuiteTag.Paper) (fun s -> dataFor s "arc_easy" (fun () -> asset DataRoot.Assets.ArcEasy)) (fun p -> Arc.Read p |> Seq.toList)
      choice "arc_challenge" "ARC-challenge" Measure.ArcChallenge (Some SuiteTag.Paper) (fun s -> dataFor s "arc_challenge" (fun () -> asset DataRoot.Assets.ArcChallenge)) (fun p -> Arc.Read p |> Seq.toList)
      { choice "hellaswag" "HellaSwag" Measure.HellaSwag (Some SuiteTag.Paper) (fun s -> needData s "hellaswag" "HellaSwag's public jsonl (hellaswag_val.jsonl; not available offline)") (fun p -> HellaSwag.Read p |> Seq.toList) with
          Assets = (fun s -> s.DataOf "hellaswag" |> Option.toList)
          Available = (fun s -> (s.DataOf "hellaswag").IsSome)
          Run = (fun ctx p ->
            match ctx.Settings.DataOf "hellaswag" with
            | Some file -> multipleChoice p.Model "hellaswag" (HellaSwag.Read file |> take (ctx.Settings.Limit "hellaswag")) (ctx.Settings.ShotsOf "hellaswag") (int ctx.Settings.Seed)
            | None -> { Value = nan; Metrics = [ "unavailable", nan ]; Count = 0; Items = "HellaSwag is not available offline: give its public jsonl (hellaswag_val.jsonl)" }) }
      { choice "mc" "multiple choice" Measure.Mc None (fun s -> needData s "mc" "a multiple-choice jsonl (question, choices, answer)") (fun p -> McJsonl.Read p |> Seq.toList) with
          Assets = (fun s -> s.DataOf "mc" |> Option.toList); Available = (fun s -> (s.DataOf "mc").IsSome) }
      { Measure = Measure.Gsm8k; Key = "gsm8k"; Name = "GSM8K"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy; Suite = Some SuiteTag.Paper; Needs = []
        Assets = (fun s -> [ dataFor s "gsm8k" (fun () -> asset DataRoot.Assets.Gsm8kTest); asset DataRoot.Assets.Gsm8kTrain ])
        Available = (fun _ -> true); Task = Some "gsm8k"
        Knobs = (fun s -> { knobs s "gsm8k" with Shots = Some (s.ShotsOf "gsm8k"); MaxNewTokens = Some s.Gsm8kMaxNewTokens })
        Apply = (fun k s -> { (s |> orElse k "gsm8k" |> limitOf k "gsm8k" |> shotsOf k "gsm8k" |> seedOf k) with Gsm8kMaxNewTokens = defaultArg k.MaxNewTokens s.Gsm8kMaxNewTokens })
        Run = (fun ctx p ->
            let s = ctx.Settings
            gsm8k p.Model (dataFor s "gsm8k" (fun () -> asset DataRoot.Assets.Gsm8kTest)) (s.ShotsOf "gsm8k") s.Gsm8kMaxNewTokens (s.Limit "gsm8k")) }
      { Measure = Measure.HumanEval; Key = "humaneval"; Name = "HumanEval"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy; Suite = Some SuiteTag.Paper; Needs = []
        Assets = (fun s -> [ dataFor s "humaneval" (fun () -> asset DataRoot.Assets.HumanEval) ])
        Available = (fun _ -> true); Task = Some "humaneval"
        Knobs = (fun s ->
            { knobs s "humaneval" with
                Samples = Some s.HumanEvalSamples; Temperature = Some s.HumanEvalTemperature; TopP = Some s.HumanEvalTopP
                Ks = Some s.HumanEvalKs; MaxNewTokens = Some s.HumanEvalMaxNewTokens })
        Apply = (fun k s ->
            { (s |> orElse k "humaneval" |> limitOf k "humaneval" |> seedOf k) with
                HumanEvalSamples = defaultArg k.Samples s.HumanEvalSamples; HumanEvalTemperature = defaultArg k.Temperature s.HumanEvalTemperature
                HumanEvalTopP = defaultArg k.TopP s.HumanEvalTopP; HumanEvalKs = defaultArg k.Ks s.HumanEvalKs
                HumanEvalMaxNewTokens = defaultArg k.MaxNewTokens s.HumanEvalMaxNewTokens })
        Run = (fun ctx p ->
            let s = ctx.Settings
            humanEval p.Model (dataFor s "humaneval" (fun () -> asset DataRoot.Assets.HumanEval)) s.HumanEvalSamples s.HumanEvalTemperature s.HumanEvalTopP
                s.HumanEvalMaxNewTokens s.HumanEvalKs s.Seed (s.Limit "humaneval") s.UnsafeNoSandbox) }
      { Measure = Measure.Perplexity; Key = "perplexity"; Name = "perplexity NLL"; HigherIsBetter = false; Unit = MeasureUnit.Nats; Suite = None; Needs = []
        Assets = (fun s -> s.DataOf "perplexity" |> Option.toList); Available = (fun s -> (s.DataOf "perplexity").IsSome); Task = Some "perplexity"
        Knobs = (fun s -> knobs s "perplexity")
        Apply = (fun k s -> s |> orElse k "perplexity" |> limitOf k "perplexity")
        Run = (fun ctx p ->
            let file = needData ctx.Settings "perplexity" "a text corpus (.txt, paragraphs separated by blank lines, or jsonl with \"text\")"
            perplexity p.Model (readTexts file |> take (ctx.Settings.Limit "perplexity"))) }
      { Measure = Measure.PretrainProxy; Key = "pretrain_proxy_nll"; Name = "pretrain-proxy NLL"; HigherIsBetter = false; Unit = MeasureUnit.Nats
        Suite = Some SuiteTag.Tiny; Needs = [ Need.Base ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = Some "pretrain-proxy"
        Knobs = (fun s -> { knobs s "pretrain_proxy_nll" with Samples = Some s.Samples; MaxNewTokens = Some s.SampleTokens })
        Apply = (fun k s -> s |> samplesOfKnobs k |> limitOf k "pretrain_proxy_nll" |> seedOf k)
        Run = (fun ctx p -> pretrainProxy p.Model (samplesOf ctx |> take (ctx.Settings.Limit "pretrain_proxy_nll") |> ResizeArray)) }
      { Measure = Measure.StoryCloze; Key = "story_cloze"; Name = "story-cloze"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy
        Suite = Some SuiteTag.Tiny; Needs = [ Need.Base ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = Some "story-cloze"
        Knobs = (fun s -> { knobs s "story_cloze" with Samples = Some s.Samples; MaxNewTokens = Some s.SampleTokens })
        Apply = (fun k s -> s |> samplesOfKnobs k |> limitOf k "story_cloze" |> seedOf k)
        Run = (fun ctx p -> storyCloze p.Model (samplesOf ctx) (int ctx.Settings.Seed) (ctx.Settings.Limit "story_cloze")) }
      { Measure = Measure.GreedyIntact; Key = "greedy_intact"; Name = "greedy intact"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy
        Suite = Some SuiteTag.Tiny; Needs = [ Need.Base ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = None
        Knobs = (fun s -> EvalKnobs.None); Apply = (fun _ s -> s)
        Run = (fun ctx p -> greedyIntact p.Model ctx.Base.Value (samplesOf ctx) ctx.Settings.IntactPrompts ctx.Settings.IntactTokens) }
      { Measure = Measure.Distance; Key = "distance_l2"; Name = "L2 from base"; HigherIsBetter = false; Unit = MeasureUnit.Weights
        Suite = None; Needs = [ Need.Base ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = Some "distance"
        Knobs = (fun _ -> EvalKnobs.None); Apply = (fun _ s -> s)
        Run = (fun ctx p -> distance p.Model ctx.Base.Value) }
      { Measure = Measure.KlToBase; Key = "kl_to_base"; Name = "KL to base (task)"; HigherIsBetter = false; Unit = MeasureUnit.Nats
        Suite = None; Needs = [ Need.Base; Need.Task ]; Assets = (fun s -> s.DataOf "kl_to_base" |> Option.toList); Available = (fun _ -> true)
        Task = Some "kl-to-base"
        Knobs = (fun s -> knobs s "kl_to_base")
        Apply = (fun k s -> s |> orElse k "kl_to_base" |> limitOf k "kl_to_base")
        Run = (fun ctx p ->
            // the fine-tuning task's held-out examples, or (mofo eval) a jsonl of {prompt, completion} given as --data
            let examples, maxLength =
                match ctx.Task, ctx.Settings.DataOf "kl_to_base" with
                | Some _, _ -> let t = taskOf ctx "KL to base" in t.HeldOut, t.MaxLength
                | None, Some file -> MoFO.Data.InstructionData.Read(file, MoFO.Data.DataFormat.Jsonl) |> Seq.toList |> take (ctx.Settings.Limit "kl_to_base"), 512
                | None, None -> raise (OptionException("Data", "Data: kl-to-base needs the task's held-out examples (mofo eval: --data, a jsonl of {prompt, completion})"))
            let r = KlToBase.OnTask(p.Model, ctx.Base.Value, ResizeArray examples, maxLength)
            { Value = r.MeanTokenKl; Metrics = [ "kl_to_base", r.MeanTokenKl; "tokens", float r.Tokens ]; Count = r.Examples; Items = null }) }
      { Measure = Measure.KlToBaseSamples; Key = "kl_to_base_samples"; Name = "KL to base (samples)"; HigherIsBetter = false; Unit = MeasureUnit.Nats
        Suite = None; Needs = [ Need.Base ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = Some "kl-to-base-samples"
        Knobs = (fun s -> { knobs s "kl_to_base_samples" with Samples = Some s.Samples; MaxNewTokens = Some s.SampleTokens })
        Apply = (fun k s -> s |> samplesOfKnobs k |> limitOf k "kl_to_base_samples" |> seedOf k)
        Run = (fun ctx p ->
            let samples = samplesOf ctx |> take (ctx.Settings.Limit "kl_to_base_samples") |> ResizeArray
            let r = KlToBase.OnTexts(p.Model, ctx.Base.Value, samples)
            { Value = r.MeanTokenKl; Metrics = [ "kl_to_base_samples", r.MeanTokenKl; "tokens", float r.Tokens ]; Count = r.Examples; Items = null }) }
      { Measure = Measure.TaskLoss; Key = "task_loss"; Name = "task loss"; HigherIsBetter = false; Unit = MeasureUnit.Nats
        Suite = None; Needs = [ Need.Task ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = None
        Knobs = (fun _ -> EvalKnobs.None); Apply = (fun _ s -> s)
        Run = (fun _ p ->
            let f = p.Fit.Value
            { Value = f.MeanTokenNll; Metrics = [ "task_loss", f.MeanTokenNll; "task_token_acc", f.TokenAccuracy; "tokens", float f.Tokens ]; Count = f.Examples; Items = null }) }
      { Measure = Measure.TaskTokenAccuracy; Key = "task_token_acc"; Name = "task token acc"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy
        Suite = None; Needs = [ Need.Task ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = None
        Knobs = (fun _ -> EvalKnobs.None); Apply = (fun _ s -> s)
        Run = (fun _ p ->
            let f = p.Fit.Value
            { Value = f.TokenAccuracy; Metrics = [ "task_token_acc", f.TokenAccuracy; "task_loss", f.MeanTokenNll; "tokens", float f.Tokens ]; Count = f.Examples; Items = null }) }
      { Measure = Measure.TaskAccuracy; Key = "task_acc"; Name = "task acc"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy
        Suite = None; Needs = [ Need.Task ]; Assets = (fun _ -> []); Available = (fun _ -> true); Task = None
        Knobs = (fun _ -> EvalKnobs.None); Apply = (fun _ s -> s)
        Run = (fun ctx p ->
            match (taskOf ctx "task acc").Choices with
            | Some items -> multipleChoice p.Model "task" items 0 (int ctx.Settings.Seed) |> fun o -> { o with Value = (o.Metrics |> List.find (fun (k, _) -> k = "acc") |> snd) }
            | None ->
                let f = p.Fit.Value
                { Value = f.TokenAccuracy; Metrics = [ "task_token_acc", f.TokenAccuracy ]; Count = f.Examples; Items = null }) } ]

let private byMeasure = table |> List.map (fun i -> i.Measure, i) |> dict

/// The declaration of a measure.
let info (m: Measure) = byMeasure[m]

/// The measure of a `mofo eval` task name, or an OptionException on field Task listing them.
let ofTask (name: string) =
    table |> List.tryFind (fun i -> i.Task = Some name)
    |> Option.map (fun i -> i.Measure)
    |> Option.defaultWith (fun () ->
        let names = String.Join(", ", table |> List.choose (fun i -> i.Task))
        raise (OptionException("Task", $"Task {name}: unknown (expected one of {names})")))

/// Fails before any work when a measure's data or the code sandbox is missing (a report must not fail after training).
let preflight (ms: Measure list) (s: Settings) =
    for m in ms do
        let i = info m
        if i.Available s then
            for path in i.Assets s do
                if not (File.Exists path || Directory.Exists path) then
                    raise (MissingAssetException($"{path}: the data of {i.Name} is missing"))
        if m = Measure.HumanEval then PythonSandbox.Create(SandboxLimits(), s.UnsafeNoSandbox) |> ignore

/// A probe of `model` whose task fit is computed on first use.
let probe (ctx: Context) (model: CausalLM) (name: string) = { Model = model; Fit = lazy (taskFit model (taskOf ctx name)) }

/// Runs one measure on a model.
let measure (ctx: Context) (model: CausalLM) (m: Measure) : Outcome = (info m).Run ctx (probe ctx model (info m).Name)

/// Runs several measures on one model, in order (lazily: each is computed when the sequence reaches it); the held-out
/// task fit that TaskLoss, TaskTokenAccuracy and a choice-less TaskAccuracy share is computed once.
let measureAll (ctx: Context) (model: CausalLM) (ms: seq<Measure>) : seq<Measure * Outcome> =
    let p = probe ctx model "the task measures"
    ms |> Seq.map (fun m -> m, (info m).Run ctx p)

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
    let i = info m
    let q (p: string) = if p.Contains ' ' then $"\"{p}\"" else p
    i.Task |> Option.map (fun task ->
        let baseFlag = if i.Needs |> List.contains Need.Base then $" --base {q basePath}" else ""
        $"mofo eval --model {q modelPath} --task {task}{baseFlag}{knobText (i.Knobs s)}")
