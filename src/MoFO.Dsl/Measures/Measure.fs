namespace MoFO.Dsl

open System
open System.IO
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models

/// A measure of a model. Each is declared once, with its key, name, direction, unit, assets, how it runs and its
/// `mofo eval` task, in `Evals.table`; its facts are members (`m.Name`, `m.Key`, …; module MeasureFacts).
[<RequireQualifiedAccess>]
type Measure =
    /// MMLU accuracy (the paper: 0-shot)
    | Mmlu
    /// ARC-Easy, acc_norm
    | ArcEasy
    /// ARC-Challenge, acc_norm
    | ArcChallenge
    /// HellaSwag, acc_norm (its public jsonl must be given: it is not available offline)
    | HellaSwag
    /// a user's own multiple-choice jsonl (question, choices, answer), acc_norm
    | Mc
    /// GSM8K, 5-shot greedy exact match (strict)
    | Gsm8k
    /// HumanEval pass@k in the sandbox (paper: pass@10)
    | HumanEval
    /// mean token NLL on a text corpus (.txt paragraphs or jsonl "text")
    | Perplexity
    /// mean token NLL of the fine-tuned model on seeded samples of the base model: the data-free pretraining-loss proxy
    | PretrainProxy
    /// story cloze built from the base model's samples, acc_norm
    | StoryCloze
    /// agreement of greedy continuations with the base model's (1 = the base model's stories intact)
    | GreedyIntact
    /// L2 distance of the weights from the base model
    | Distance
    /// mean per-token KL(fine-tuned ‖ base) at the answer positions of the held-out task ("RL's Razor")
    | KlToBase
    /// mean per-token KL(fine-tuned ‖ base) on seeded samples of the base model
    | KlToBaseSamples
    /// held-out loss of the fine-tuning task (answer tokens, teacher-forced)
    | TaskLoss
    /// held-out top-1 accuracy on the answer tokens of the fine-tuning task
    | TaskTokenAccuracy
    /// the task's own accuracy where it has one (DPR: the candidate with the higher likelihood)
    | TaskAccuracy

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

/// One measurement: the headline value, every metric of the harness, the items it ran on.
type Outcome = { Value: float; Metrics: (string * float) list; Count: int; Items: obj }

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
