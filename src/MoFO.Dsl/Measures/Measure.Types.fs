namespace MoFO.Dsl

open System
open System.Collections.Generic
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models

/// How a measure's number reads.
[<RequireQualifiedAccess>]
type MeasureUnit =
    /// a fraction in [0, 1], shown in % (accuracies, pass@k, agreement)
    | Accuracy
    /// a mean token negative log-likelihood
    | Nats
    /// a distance in weight space
    | Weights

/// Which forgetting report suite lists a measure as a general capability.
[<RequireQualifiedAccess>]
type SuiteTag =
    /// what a tiny model can show
    | Tiny
    /// the paper's benchmarks
    | Paper

/// How the measures are run: data files, item limits, shots, samples. `Settings.Tiny` keeps a stories260K evaluation
/// to seconds; `Settings.Paper` is the paper's protocol (full test sets, MMLU 0-shot, GSM8K 5-shot, HumanEval
/// pass@10). Maps are keyed by the measure's key (`m.Key`).
type Settings =
    { /// data files that replace the data root's (HellaSwag, a user's multiple choice and a perplexity corpus have none there)
      Data: Map<string, string>
      /// evaluate only the first N items (MMLU: per subject)
      Limits: Map<string, int>
      /// few-shot examples (default 0; GSM8K 5)
      Shots: Map<string, int>
      Gsm8kMaxNewTokens: int
      HumanEvalSamples: int
      HumanEvalTemperature: float
      HumanEvalTopP: float
      /// pass@k for each k; the first is the headline
      HumanEvalKs: int list
      HumanEvalMaxNewTokens: int
      /// base-model samples for the pretrain proxy, story cloze and greedy intactness
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
        { Data = Map.empty; Limits = Map.empty; Shots = Map.ofList [ "gsm8k", 5 ]; Gsm8kMaxNewTokens = 256
          HumanEvalSamples = 10; HumanEvalTemperature = 0.8; HumanEvalTopP = 0.95; HumanEvalKs = [ 10; 1 ]; HumanEvalMaxNewTokens = 512
          Samples = 64; SampleTokens = 100; IntactPrompts = 16; IntactTokens = 48; Seed = 1234L; TaskLimit = None
          Cache = Settings.DefaultCache; UnsafeNoSandbox = false }
    /// The tiny scale: the real harnesses on fixed subsets (the first N items), greedy HumanEval pass@1. A 260K-parameter
    /// model is near chance on all of them; the forgetting measures and the task's own held-out numbers carry the signal.
    static member Tiny =
        { Settings.Paper with
            Limits = Map.ofList [ "arc_easy", 500; "arc_challenge", 500; "mmlu", 4; "gsm8k", 24; "humaneval", 16 ]
            Gsm8kMaxNewTokens = 96; HumanEvalSamples = 1; HumanEvalTemperature = 0.0; HumanEvalKs = [ 1 ]; HumanEvalMaxNewTokens = 96 }
    /// The settings of a scale: `Tiny`, or `Paper` with the config's HellaSwag file.
    static member Of(scale: Scale) =
        match scale with
        | Scale.Tiny -> Settings.Tiny
        | Scale.Paper p -> { Settings.Paper with Data = (match p.HellaSwag with Some h -> Map.ofList [ "hellaswag", h ] | None -> Map.empty) }
    member s.Limit(key: string) = s.Limits |> Map.tryFind key
    member s.ShotsOf(key: string) = s.Shots |> Map.tryFind key |> Option.defaultValue 0
    member s.DataOf(key: string) = s.Data |> Map.tryFind key
    member s.WithLimit(key: string, n: int) = { s with Limits = s.Limits |> Map.add key n }

/// HumanEval's per-sample results with the problems they answer (what the lm-eval samples file needs).
type HumanEvalItems = { Problems: HumanEvalProblem list; Results: HumanEvalSampleResult list }

/// The per-item records of a measurement: what lm-evaluation-harness's samples file is written from, and the "items"
/// of `mofo eval --output`. A measure's output type is the case its `Run` returns; the writer of each case is in
/// `LmEval.tasks`.
[<RequireQualifiedAccess>]
type Items =
    /// only the aggregate is kept (the losses, the KL measures, the pretrain proxy)
    | NotKept
    /// multiple choice: every question's log-likelihoods and predictions (ARC, MMLU, HellaSwag, story cloze, DPR)
    | Choices of McItemResult list
    /// generated answers, extracted and matched (GSM8K)
    | Answers of Gsm8kItemResult list
    /// generated programs, executed (HumanEval)
    | Programs of HumanEvalItems
    /// a number per tensor, by HF name (the distance)
    | PerTensor of IReadOnlyDictionary<string, float>
    /// a number per prompt (greedy intactness)
    | PerPrompt of float list
    /// the measure could not run under its settings: why
    | Unavailable of reason: string

    /// The records as JSON (each case as its records serialize; null when none are kept).
    member i.ToJson(options: JsonSerializerOptions) : JsonNode =
        match i with
        | NotKept -> null
        | Choices xs -> JsonSerializer.SerializeToNode(List.toArray xs, options)
        | Answers xs -> JsonSerializer.SerializeToNode(List.toArray xs, options)
        | Programs h -> JsonSerializer.SerializeToNode(h, options)
        | PerTensor d -> JsonSerializer.SerializeToNode(d, options)
        | PerPrompt xs -> JsonSerializer.SerializeToNode(List.toArray xs, options)
        | Unavailable reason -> JsonValue.Create reason

/// One measurement: the headline value, every metric of the harness, the items it ran on.
type Outcome = { Value: float; Metrics: (string * float) list; Count: int; Items: Items }

/// The fine-tuning task's held-out examples and, where the task has one, its multiple-choice form.
type TaskData = { Name: string; HeldOut: TrainingExample list; Choices: McItem list option; MaxLength: int }

/// What the measures of one model need besides the model: the base model (loaded on first use), the task, the settings.
type Context =
    { Base: Lazy<CausalLM>
      Task: TaskData option
      Settings: Settings }

/// The knobs of one `mofo eval` run, in its own terms (what a measure's settings are, as the command sets them).
type EvalKnobs =
    { Data: string option
      Limit: int option
      Shots: int option
      Samples: int option
      Temperature: float option
      TopP: float option
      Ks: int list option
      MaxNewTokens: int option
      Seed: int64 option }
    static member None =
        { Data = None; Limit = None; Shots = None; Samples = None; Temperature = None; TopP = None; Ks = None; MaxNewTokens = None; Seed = None }

/// A model being measured, with the held-out task fit that TaskLoss, TaskTokenAccuracy and a choice-less TaskAccuracy
/// share (computed once, on first use).
type Probe = { Model: CausalLM; Fit: Lazy<TaskFit> }

/// What a measure needs besides the model.
[<RequireQualifiedAccess>]
type Need =
    /// samples (or greedy choices) of the base model: `mofo eval --base`, the model itself by default
    | BaseSamples
    /// the base model to compare with (its weights or its distributions): `mofo eval` requires `--base`; it is zero on
    /// the base model itself, so reports and runs do not take it there
    | Base
    /// the fine-tuning task's held-out data
    | Task
    /// the code sandbox (bubblewrap, or --unsafe-no-sandbox), checked before any work
    | Sandbox

/// A measure's task in lm-evaluation-harness (v0.4), where the harness has one.
type HarnessTask =
    { /// the harness's task name (`results["arc_easy"]`)
      Name: string
      /// the harness's metric keys that hold this measure's value, the first found wins ("acc_norm,none"); a key
      /// ending in `*` stands for every key it begins ("pass@1,*")
      Metrics: string list
      /// the task's version in the harness
      Version: float
      /// the harness's output_type ("multiple_choice", "generate_until")
      OutputType: string
      /// the documents of its split before --limit (n-samples' "original"), where one file is read
      Documents: Settings -> int option
      /// the harness's groups of subtasks by category (MMLU: a task per subject, in four categories); empty when the
      /// task has no subtasks
      Categories: (string * string list) list }

/// A measure of a model, declared once in module `Measure` (`Measure.ArcEasy`, …; `Measure.All`): its key in files,
/// its name in tables, its direction and unit, what it needs, how it runs and what it runs on, its `mofo eval` task and
/// knobs, its task in lm-evaluation-harness. Its per-item records are the `Items` case its `Run` returns. Two measures
/// are the same measure when their keys are equal.
[<CustomEquality; CustomComparison>]
type Measure =
    { /// the key in JSON files and caches ("arc_easy")
      Key: string
      /// the name in tables ("ARC-easy")
      Name: string
      HigherIsBetter: bool
      Unit: MeasureUnit
      /// the report suite that lists it as a general capability (None: the distance and the task's measures)
      Suite: SuiteTag option
      Needs: Need list
      /// `mofo eval --task <name>` (None: only inside a run or a report)
      Task: string option
      /// its task in lm-evaluation-harness (None: the results files name it by its key)
      Harness: HarnessTask option
      /// the files it reads under these settings (a missing one is a MissingAssetException before any work)
      Assets: Settings -> string list
      /// whether it can run under these settings (HellaSwag only with its file)
      Available: Settings -> bool
      /// the settings it reads, as `mofo eval`'s knobs (for the equivalent command; `Shots` is the n-shot it reports)
      Knobs: Settings -> EvalKnobs
      /// `mofo eval`'s knobs onto the settings
      Apply: EvalKnobs -> Settings -> Settings
      /// computes it
      Run: Context -> Probe -> Outcome }

    /// A percentage in the paper's tables (accuracies) rather than a raw number.
    member m.IsAccuracy = m.Unit = MeasureUnit.Accuracy
    override m.ToString() = m.Key
    override m.Equals(other: obj) =
        match other with
        | :? Measure as o -> String.Equals(m.Key, o.Key, StringComparison.Ordinal)
        | _ -> false
    override m.GetHashCode() = StringComparer.Ordinal.GetHashCode m.Key
    interface IComparable with
        member m.CompareTo(other: obj) =
            match other with
            | :? Measure as o -> String.CompareOrdinal(m.Key, o.Key)
            | _ -> invalidArg "other" $"a Measure compares with a Measure, not {other}"
