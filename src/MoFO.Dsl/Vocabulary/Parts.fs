namespace MoFO.Dsl

open System
open System.IO
open MoFO
open MoFO.Data
open MoFO.Training

/// Where the pretrained model comes from.
[<RequireQualifiedAccess>]
type ModelSource =
    /// the real pretrained stories260K (llama2.c) under the data root: the tiny scale
    | Stories260K
    | Llama2c of path: string
    /// a HuggingFace folder (config.json, safetensors, tokenizer): Pythia, TinyLlama, Llama-2
    | HfFolder of path: string
    member m.Path =
        match m with
        | Stories260K -> DataRoot.Require DataRoot.Assets.Stories260K
        | Llama2c p | HfFolder p ->
            if not (File.Exists p || Directory.Exists p) then raise (MissingAssetException $"{Path.GetFullPath p}: the model is missing (expected a llama2.c .bin or an HF folder with config.json)")
            Path.GetFullPath p
    member m.Label =
        match m with
        | Stories260K -> "stories260K"
        | Llama2c p | HfFolder p -> Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath p))

/// The fine-tuning data: its training examples and its held-out examples (the task measures use them). How each is
/// read: `Datasets.load`.
[<RequireQualifiedAccess>]
type Dataset =
    /// Rahman & Ng's definite pronoun resolution (FLAN's definite_pronoun_resolution source), FLAN-style templates in
    /// rotation; held out: the test split, scored also as a two-choice task
    | Dpr
    /// MetaMathQA in Tulu messages; `path` None = the 1,024-example subset under the data root (tiny: 128 held out)
    | MetaMathQA of path: string option
    /// Code-Alpaca; `path` None = the 2k file under the data root (the two empty outputs dropped; 128 held out)
    | CodeAlpaca of path: string option
    /// GSM8K train (held out: the first 128 test problems)
    | Gsm8kTrain
    /// any file of a supported format, with an optional held-out file (else 128 seeded examples are held out)
    | File of name: string * path: string * format: DataFormat * heldOut: string option
    member d.Name =
        match d with
        | Dpr -> "DPR" | MetaMathQA _ -> "MetaMathQA" | CodeAlpaca _ -> "Code-Alpaca" | Gsm8kTrain -> "GSM8K-train"
        | File (n, _, _, _) -> n
    member d.Key =
        match d with
        | Dpr -> "dpr"
        | MetaMathQA p -> "metamathqa" + (p |> Option.map (fun p -> ":" + Path.GetFullPath p) |> Option.defaultValue "")
        | CodeAlpaca p -> "codealpaca" + (p |> Option.map (fun p -> ":" + Path.GetFullPath p) |> Option.defaultValue "")
        | Gsm8kTrain -> "gsm8k-train"
        | File (n, p, f, h) -> $"""{n}:{Path.GetFullPath p}:{f}:{defaultArg h ""}"""

/// How to fine-tune: the knobs of a run. `Recipe.Default` is Core's defaults (`Defaults`, through
/// `TrainingOptions.Default`: the one set of defaults, which `mofo train` uses too); `Recipe.Paper` is the paper's
/// Appendix B on top of them (batch 128 in micro-batches of 4, 2 epochs, 1024 tokens), the recipe the reproductions
/// and scripts start from. `Lr` is Adam's learning rate: a member whose authors advise another step size runs at `Lr`
/// times its factor (`Recipe.lrFor`; Lion 0.2).
type Recipe =
    { Lr: float
      Steps: int option
      Epochs: int
      BatchSize: int
      MicroBatchSize: int
      MaxLength: int
      Schedule: Schedule
      WarmupRatio: float
      WeightDecay: float
      MaxGradNorm: float
      /// train on at most this many examples (None: all)
      TrainLimit: int option
      /// MetaMathQA at paper scale: the paper trains on a seeded 10 %
      SampleFraction: float option
      /// the dtype of weights, gradients and activations (bf16: float32 loss and moments)
      Precision: Precision
      /// bf16: how the update reaches the weights (stochastic rounding by default, float32 master weights, nearest)
      BFloat16Update: MoFO.Optim.BFloat16Update
      /// recompute each decoder layer's activations in the backward pass
      GradientCheckpointing: bool
      /// how the optimizer keeps its moments: float32, or blockwise 8-bit (about a quarter of the memory)
      OptimizerState: MoFO.Optim.MomentStorage }
    /// Core's defaults (`TrainingOptions.Default`): lr 2e-5 cosine, 1 epoch of batch 16 (one micro-batch), 512 tokens.
    static member Default =
        let o = TrainingOptions.Default
        { Lr = o.LearningRate; Steps = Option.ofNullable o.Steps; Epochs = o.Epochs; BatchSize = o.BatchSize; MicroBatchSize = o.MicroBatch
          MaxLength = o.MaxLength; Schedule = o.Schedule; WarmupRatio = o.WarmupRatio; WeightDecay = o.WeightDecay; MaxGradNorm = o.MaxGradNorm
          TrainLimit = None; SampleFraction = None; Precision = o.Precision; BFloat16Update = o.BFloat16Update; GradientCheckpointing = o.GradientCheckpointing
          OptimizerState = o.OptimizerState }
    /// The paper's recipe (Appendix B) on Core's defaults: batch 128 in micro-batches of 4, 2 epochs, 1024 tokens.
    static member Paper = { Recipe.Default with Epochs = 2; BatchSize = 128; MicroBatchSize = 4; MaxLength = 1024 }

module Recipe =
    /// The learning rate a method runs at under a recipe: `Lr` times the method's factor (Lion: 0.2; LoRA: 10).
    let lrFor (m: Method) (r: Recipe) = r.Lr * m.LrScale

    /// The word a script uses for one of Core's option fields: the `Recipe` field that sets it (`LearningRate` →
    /// `Recipe.Lr`), or the method's argument; None for a field a script does not set. Errors in a script name these.
    let scriptField (coreField: string) =
        match coreField with
        | "LearningRate" -> Some "Recipe.Lr"
        | "Steps" | "Epochs" | "BatchSize" | "MicroBatchSize" | "MaxLength" | "Schedule" | "WarmupRatio" | "WeightDecay"
        | "MaxGradNorm" | "Precision" | "GradientCheckpointing" | "TrainLimit" | "SampleFraction" | "OptimizerState" -> Some ("Recipe." + coreField)
        | "MasterWeights" | "BFloat16Update" -> Some "Recipe.BFloat16Update"
        | "Alpha" -> Some "the method's α (Method.MoFO α, …)"
        | "Lambda" -> Some "the method's λ (Method.L1 λ, Method.L2 λ)"
        | "LoraRank" -> Some "Method.LoRA's rank"
        | "LoraTargets" -> Some "Method.LoRA's targets"
        | "Method" -> Some "Experiment.Method"
        | "WatchForgetting" | "WatchEvery" -> Some "Experiment.withWatch"
        | "ForgettingBudget" -> Some "Experiment.withBudget"
        | _ -> None

    /// Checks what Core does not see of a recipe (the training limit, the sample fraction); an OptionException on the
    /// field otherwise.
    let check (r: Recipe) =
        match r.TrainLimit with
        | Some n when n < 1 -> raise (OptionException("TrainLimit", $"TrainLimit {n}: must be at least 1 (or None: every example)"))
        | _ -> ()
        match r.SampleFraction with
        | Some f when not (f > 0.0 && f <= 1.0) -> raise (OptionException("SampleFraction", $"SampleFraction {f}: must lie in (0, 1]"))
        | _ -> ()

/// The paper's models and data at paper scale (from a JSON config file); None = not given.
type PaperPaths =
    { Pythia160m: string option
      Llama2_7b: string option
      TinyLlama: string option
      MetaMathQA: string option
      CodeAlpaca: string option
      Trace: string option
      HellaSwag: string option
      Device: string option }
    static member Empty =
        { Pythia160m = None; Llama2_7b = None; TinyLlama = None; MetaMathQA = None; CodeAlpaca = None; Trace = None; HellaSwag = None; Device = None }

[<RequireQualifiedAccess>]
type Scale =
    | Tiny
    | Paper of PaperPaths
    member s.Name = match s with Tiny -> "tiny" | Paper _ -> "paper"
    /// Where the experiments of this scale run: the CPU at tiny scale, the config's device at paper scale.
    member s.Device =
        match s with
        | Paper p -> MoFO.Runtime.device p.Device
        | Tiny -> TorchSharp.torch.CPU

/// A measure of forgetting a run can watch while it trains (`Experiment.withWatch`), as `mofo train --watch-forgetting`
/// names it (Core's `ForgettingWatch`).
[<RequireQualifiedAccess>]
type Watch =
    /// the mean token NLL on 64 seeded samples of the base model (the pretraining-loss proxy)
    | PretrainProxy
    /// the mean KL to the base at the answer positions of the first 64 held-out examples (the base's log-probabilities
    /// computed once and kept in the run folder)
    | KlToBase
    /// the L2 distance of the weights from the base
    | Distance
    /// zero-shot acc_norm on the first `items` ARC-Easy test questions, in points
    | ArcEasy of items: int
    /// zero-shot acc_norm on the first `items` ARC-Challenge test questions, in points
    | ArcChallenge of items: int
    /// The name `--watch-forgetting` and `metrics.jsonl` use.
    member w.Name =
        match w with
        | PretrainProxy -> "pretrain-proxy" | KlToBase -> "kl-to-base" | Distance -> "distance"
        | ArcEasy n -> $"arc-easy:{n}" | ArcChallenge n -> $"arc-challenge:{n}"

/// The forgetting watch of an experiment: what it measures, every how many steps (and at the end), and the budgets
/// that stop the run (the rise allowed over the base; for accuracies the change allowed in points, ≤ 0).
type Watching =
    { Measures: Watch list
      Every: int
      Budget: (Watch * float) list }
    /// Nothing watched (every `Defaults.WatchEvery` steps once something is).
    static member None = { Measures = []; Every = Defaults.WatchEvery; Budget = [] }

/// How `Experiment.merged` combines fine-tunes of one base by their task vectors τᵢ = θᵢ − θ_base (`mofo merge`;
/// docs/methods.md "Merging").
[<RequireQualifiedAccess>]
type Merge =
    /// θ_base + Σ wᵢ·τᵢ: one weight per fine-tune, the experiment's own first, then the others' in their order
    | TaskArithmetic of weights: float list
    /// TIES: each τᵢ trimmed to its top-`density` fraction by magnitude, a sign elected per entry (that of Σ τ̂ᵢ), the
    /// entries that agree with it averaged
    | Ties of density: float
    /// DARE: each entry of each τᵢ kept with probability `density` and rescaled by 1/density (drawn from `seed`), then
    /// summed
    | Dare of density: float * seed: int
