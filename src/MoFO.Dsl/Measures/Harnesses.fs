/// How each measure is computed: the harnesses of the field's benchmarks, the forgetting measures and the fine-tuning
/// task's own numbers. The measures (module `Measure`) call these; `Evals.measure` runs a measure.
module MoFO.Dsl.Harnesses

open System
open System.Collections.Generic
open System.IO
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models

/// The first `limit` items (all when None).
let take (limit: int option) (xs: 'a seq) =
    match limit with
    | Some n -> Seq.truncate n xs |> Seq.toList
    | None -> Seq.toList xs

let mcOutcome (s: McSummary) =
    { Value = s.AccNorm
      Metrics = [ "acc", s.Acc; "acc_stderr", s.AccStderr; "acc_norm", s.AccNorm; "chance", s.Chance ]
      Count = s.Count
      Items = Items.Choices (List.ofSeq s.Items) }

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
    let test = MoFO.Data.Gsm8kData.Read testPath |> take limit
    let train = MoFO.Data.Gsm8kData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain)
    use progress = progressFor "gsm8k" test.Length "problems"
    let s = Gsm8k.Evaluate(model, test, train, shots, maxNewTokens, 8, progress)
    { Value = s.StrictMatch
      Metrics = [ "exact_match_strict", s.StrictMatch; "exact_match_flexible", s.FlexibleMatch ]
      Count = s.Items.Count
      Items = Items.Answers (List.ofSeq s.Items) }

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
      Metrics = metrics; Count = s.Problems; Items = Items.Programs { Problems = problems; Results = List.ofSeq s.Results } }

/// Seeded samples of the base model from BOS (cached under `cache`).
let baseSamples (baseModel: ILanguageModel) (n: int) (tokens: int) (seed: int64) (cache: string) =
    Forgetting.BaseSamples(baseModel, Forgetting.SampleSpec(n, tokens, 1.0, seed), cache)

/// The pretraining-loss proxy: mean token NLL on the base model's samples.
let pretrainProxy (model: ILanguageModel) (samples: IReadOnlyList<string>) =
    use progress = progressFor "pretrain-proxy" samples.Count "samples"
    let l = Forgetting.Loss(model, samples, 16, progress)
    { Value = l.MeanTokenNll; Metrics = [ "pretrain_proxy_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]
      Count = l.Texts; Items = Items.NotKept }

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
    { Value = List.average agree; Metrics = [ "greedy_intact", List.average agree ]; Count = openings.Length; Items = Items.PerPrompt agree }

/// L2 distance of the weights from the base model's, in total and per tensor.
let distance (model: CausalLM) (baseModel: CausalLM) =
    let d = ParameterDistance.Compute(baseModel.Module.StateDict(), model.Module.StateDict(), baseModel.Name, model.Name)
    { Value = d.L2; Metrics = [ "l2", d.L2; "relative", d.Relative; "base_norm", d.BaseNorm ]; Count = d.PerTensorL2.Count
      Items = Items.PerTensor d.PerTensorL2 }

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
    { Value = l.MeanTokenNll; Metrics = [ "mean_token_nll", l.MeanTokenNll; "perplexity", l.Perplexity; "tokens", float l.Tokens ]; Count = l.Texts; Items = Items.NotKept }

let taskFit (model: CausalLM) (task: TaskData) = TaskMetrics.Fit(model, ResizeArray task.HeldOut, task.MaxLength)

/// The context's base-model samples under its settings (cached).
let samplesOf (ctx: Context) =
    baseSamples ctx.Base.Value ctx.Settings.Samples ctx.Settings.SampleTokens ctx.Settings.Seed ctx.Settings.Cache

/// The context's task under the settings' TaskLimit; `name` names the measure that needs it in the error.
let taskOf (ctx: Context) (name: string) =
    let t = ctx.Task |> Option.defaultWith (fun () -> raise (OptionException("Task", $"Task: the measure {name} needs the fine-tuning task's held-out data")))
    match ctx.Settings.TaskLimit with
    | Some n -> { t with HeldOut = List.truncate n t.HeldOut; Choices = t.Choices |> Option.map (List.truncate n) }
    | None -> t

/// A probe of `model` whose task fit is computed on first use.
let probe (ctx: Context) (model: CausalLM) (name: string) = { Model = model; Fit = lazy (taskFit model (taskOf ctx name)) }

/// MMLU's subjects by category, as the harness groups them (57 subjects).
let mmluCategories =
    [ "stem",
      [ "abstract_algebra"; "anatomy"; "astronomy"; "college_biology"; "college_chemistry"; "college_computer_science"
        "college_mathematics"; "college_physics"; "computer_security"; "conceptual_physics"; "electrical_engineering"
        "elementary_mathematics"; "high_school_biology"; "high_school_chemistry"; "high_school_computer_science"
        "high_school_mathematics"; "high_school_physics"; "high_school_statistics"; "machine_learning" ]
      "humanities",
      [ "formal_logic"; "high_school_european_history"; "high_school_us_history"; "high_school_world_history"
        "international_law"; "jurisprudence"; "logical_fallacies"; "moral_disputes"; "moral_scenarios"; "philosophy"
        "prehistory"; "professional_law"; "world_religions" ]
      "social_sciences",
      [ "econometrics"; "high_school_geography"; "high_school_government_and_politics"; "high_school_macroeconomics"
        "high_school_microeconomics"; "high_school_psychology"; "human_sexuality"; "professional_psychology"
        "public_relations"; "security_studies"; "sociology"; "us_foreign_policy" ]
      "other",
      [ "business_ethics"; "clinical_knowledge"; "college_medicine"; "global_facts"; "human_aging"; "management"
        "marketing"; "medical_genetics"; "miscellaneous"; "nutrition"; "professional_accounting"; "professional_medicine"
        "virology" ] ]
