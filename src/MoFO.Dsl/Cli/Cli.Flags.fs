/// The flags several commands share, each defined once: spelling, help, parser and validation, and the Core option
/// field it sets. The training flags take their defaults from Core's `Defaults` (the one set of defaults; `mofo
/// methods` prints them). A command that means something more specific by a shared flag gives it its own help with
/// `Describe` (the same flag); a command's own flags are defined in its module.
module MoFO.Dsl.Cli.Flags

open System
open MoFO
open MoFO.Training
open MoFO.Models

// ---- the model, the data, the device -------------------------------------------------------------------------------

let model = Flag.text "--model" "the model: an HF folder (config.json, safetensors, tokenizer) or a llama2.c .bin (its tokenizer beside it)."

let tokenizer =
    Flag.text "--tokenizer" "the tokenizer (a SentencePiece .model or a tokenizer.json), if it is not beside the model."
    |> Flag.sets "tokenizerPath"

let data = Flag.text "--data" "the data file." |> Flag.sets "Data"

let output = Flag.text "--output" "where to write the result." |> Flag.sets "Output"

let device =
    let ok (s: string) = s = "cpu" || s = "cuda" || (s.StartsWith "cuda:" && fst (Int32.TryParse(s.Substring 5)))
    Flag.oneOf "--device" "cpu (default) or cuda (CUDA builds; cuda:N for one GPU)." (fun () -> Seq.ofList [ "cpu"; "cuda"; "cuda:N" ]) ok
    |> Flag.sets "Device"

/// `--device` where a model is loaded to generate or evaluate (not trained): the dtype follows the checkpoint.
let inferenceDevice = device.Describe "cpu (default; float32, or bfloat16 for a bfloat16 checkpoint) or cuda (bfloat16)."

let dataRoot =
    Flag.text "--data-root" "the folder with the real models, tokenizers and datasets (default: $MOFO_DATA, else ../shared/data beside the repository)."
    |> Flag.sets "DataRoot"

/// The model shapes of `ModelPresets` (tinyllama-1.1b, pythia-160m, llama-2-7b).
let like =
    let names = ModelPresets.All.Keys |> Seq.map (fun k -> k, k) |> List.ofSeq
    Flag.choice "--like" $"""a known model shape instead of a model: {String.Join(", ", List.map fst names)}.""" names |> Flag.sets "Like"

let layers = Flag.int "--layers" "with --like: another number of layers (every other dimension kept)." |> Flag.atLeast 1 |> Flag.sets "layers"

let shardSizeMb = Flag.int "--shard-size-mb" "largest shard in MiB; bigger checkpoints are sharded with model.safetensors.index.json." |> Flag.atLeast 1

let limit = Flag.int "--limit" "use only the first N items." |> Flag.atLeast 1

let seed = Flag.int64 "--seed" $"seed of data order, sub-sampling and random members (default {Defaults.Seed})."

let tensorboard =
    Flag.text "--tensorboard" "write TensorBoard event files to this folder (loss, learning rate, gradient norm, updated fraction, tokens/s, distance, held-out loss; rank 0 alone)."

let cache = Flag.text "--cache" "the folder of cached base-model samples (default results/cache)."

let unsafeNoSandbox =
    Flag.switch "--unsafe-no-sandbox" "HumanEval: run generated code without bubblewrap when it is missing (dangerous)."
    |> Flag.sets "allowUnsandboxed"

// ---- generation ----------------------------------------------------------------------------------------------------

let maxNewTokens = Flag.int "--max-new-tokens" "most tokens to generate." |> Flag.atLeast 1
let temperature = Flag.float "--temperature" "sampling temperature (0 = greedy)." |> Flag.atLeast 0.0
let topP = Flag.float "--top-p" "nucleus sampling mass." |> Flag.atLeast 0.0
let k = Flag.positiveInts "--k" "comma-separated k for pass@k."

// ---- benchmarks ----------------------------------------------------------------------------------------------------

let repetitions = Flag.int "--repetitions" "timed repetitions; the median is reported." |> Flag.atLeast 1
let warmup = Flag.int "--warmup" "untimed repetitions first." |> Flag.atLeast 0

// ---- the method ----------------------------------------------------------------------------------------------------

/// The names `--method` accepts, with what each is.
let private methodUsage =
    let members = Methods.Members |> Seq.map (fun m -> m.Name) |> String.concat ", "
    let terms = Methods.Terms |> Seq.map (fun t -> $"{t.Name} (AdamW + {t.Description})") |> String.concat ", "
    let adapters = Methods.Adapters |> Seq.map (fun struct (n, _, _) -> n) |> String.concat ", "
    $"{members}, {adapters} (adapters, the base frozen; see --lora-*), or {terms} (default {Defaults.Method}). Run `mofo methods` for a description of each."

let method =
    let accepts (s: string) = try Methods.Parse s |> ignore; true with :? OptionException -> false
    Flag.oneOf "--method" methodUsage (fun () -> Methods.Names :> seq<_>) accepts |> Flag.sets "Method"

let alpha =
    Flag.float "--alpha" $"the update fraction of MoFO and the BCD members: per tensor, the top-α entries take the step (default {Defaults.Alpha})."
    |> Flag.sets "Alpha"

let l1Lambda =
    Flag.float "--l1-lambda" $"strength of the L1 term toward the pretrained weights (with --method l1 default {Defaults.L1Lambda}; with another method it adds the term)."
    |> Flag.sets "Lambda"

let l2Lambda =
    Flag.float "--l2-lambda" $"strength of the L2 term toward the pretrained weights (with --method l2 default {Defaults.L2Lambda}; with another method it adds the term)."
    |> Flag.sets "Lambda"

let loraRank = Flag.int "--lora-rank" "--method lora|dora|pissa: the adapters' rank r (default 8)." |> Flag.sets "LoraRank"
let loraAlpha = Flag.float "--lora-alpha" "--method lora|dora|pissa: the scaling α (the update is α/r · B·A; default 2r)." |> Flag.sets "LoraAlpha"
let loraDropout = Flag.float "--lora-dropout" "--method lora|dora|pissa: dropout on the adapters' input (default 0)." |> Flag.sets "LoraDropout"

let loraTargets =
    Flag.text "--lora-targets" "--method lora|dora|pissa: comma-separated linear layers to adapt (default: the attention and MLP projections; Llama q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; GPT-NeoX query_key_value,dense,dense_h_to_4h,dense_4h_to_h)."
    |> Flag.sets "LoraTargets"

let loraOptimizer =
    let accepts (s: string) = try Methods.Member s |> ignore; true with :? OptionException -> false
    Flag.oneOf "--lora-optimizer" "--method lora|dora|pissa: the member that trains the adapters, adamw (default) or mofo (the filter on the adapters' moments, --alpha)."
        (fun () -> Methods.Members |> Seq.map (fun m -> m.Name)) accepts
    |> Flag.sets "LoraOptimizer"

let lisaLayers =
    Flag.int "--lisa-layers" $"--method lisa: decoder layers trained at once (default {Defaults.LisaLayers})." |> Flag.atLeast 1 |> Flag.sets "LisaLayers"
let lisaInterval =
    Flag.int "--lisa-interval" $"--method lisa: steps between two draws of the trained layers (default {Defaults.LisaInterval})." |> Flag.atLeast 1 |> Flag.sets "LisaInterval"
let badamInterval =
    Flag.int "--badam-interval" $"--method badam: steps a decoder layer is trained before the next (default {Defaults.BAdamInterval})." |> Flag.atLeast 1 |> Flag.sets "BAdamInterval"
let badamOrder =
    Flag.choice "--badam-order" "--method badam: the order of the layers, random (default: a fresh permutation each pass), ascending or descending."
        [ "random", MoFO.Optim.BlockOrder.Random; "ascending", MoFO.Optim.BlockOrder.Ascending; "descending", MoFO.Optim.BlockOrder.Descending ]
    |> Flag.sets "BAdamOrder"
let spectrumFraction =
    Flag.float "--spectrum-fraction" $"--method spectrum: the fraction of each module type trained, by signal-to-noise ratio (default {Defaults.SpectrumFraction})."
    |> Flag.sets "SpectrumFraction"

// ---- the training loop (defaults: Core's `Defaults`) ---------------------------------------------------------------

let lr = Flag.float "--lr" $"peak learning rate (default {Defaults.LearningRate}; LoRA usually wants about {Methods.LoraLrScale}× more)." |> Flag.sets "LearningRate"
let epochs = Flag.int "--epochs" $"epochs over the data (default {Defaults.Epochs})." |> Flag.sets "Epochs"
let steps = Flag.int "--steps" "optimizer steps (overrides --epochs)." |> Flag.sets "Steps"
let batchSize = Flag.int "--batch-size" $"examples per optimizer step (default {Defaults.BatchSize})." |> Flag.sets "BatchSize"

let microBatchSize =
    Flag.int "--micro-batch-size" "examples per forward/backward pass; gradients accumulate (default: the batch size)." |> Flag.sets "MicroBatchSize"

let maxLen = Flag.int "--max-len" $"truncate examples to this many tokens (default {Defaults.MaxLength})." |> Flag.sets "MaxLength"

let schedule =
    Flag.choice "--schedule" $"""constant, linear or cosine (default {Defaults.Schedule.ToString().ToLowerInvariant()})."""
        [ "constant", Schedule.Constant; "linear", Schedule.Linear; "cosine", Schedule.Cosine ]
    |> Flag.sets "Schedule"

let warmupRatio = Flag.float "--warmup-ratio" $"fraction of the steps for linear warmup (default {Defaults.WarmupRatio})." |> Flag.sets "WarmupRatio"
let weightDecay = Flag.float "--weight-decay" $"decoupled weight decay (default {Defaults.WeightDecay})." |> Flag.sets "WeightDecay"
let maxGradNorm = Flag.float "--max-grad-norm" $"clip the gradient's global norm (default {Defaults.MaxGradNorm}; 0 disables)." |> Flag.sets "MaxGradNorm"
let saveEvery = Flag.int "--save-every" "write a checkpoint every N steps (default: at the end and on Ctrl-C)." |> Flag.sets "SaveEvery"
let evalEvery = Flag.int "--eval-every" "log the held-out loss every N steps." |> Flag.sets "EvalEvery"
let pack = Flag.switch "--pack" "pack examples into rows of --max-len tokens instead of padding."
let resume = Flag.switch "--resume" "continue the run in --output from its checkpoint (same settings required)." |> Flag.sets "Resume"
let skipEmpty = Flag.switch "--skip-empty" "drop records whose answer is empty (Code-Alpaca has two) instead of stopping at them." |> Flag.sets "skipEmpty"

// ---- forgetting watched while training ------------------------------------------------------------------------------

let private watchable () = MoFO.Training.ForgettingWatch.Described

let watchForgetting =
    Flag<string list>("--watch-forgetting", $"measure forgetting while training, comma-separated: {watchable ()} (in metrics.jsonl and TensorBoard).", None, fun s ->
        let names = s.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
        match names |> List.tryFind (MoFO.Training.ForgettingWatch.IsMeasure >> not) with
        | Some bad -> raise (FlagException("--watch-forgetting", $"--watch-forgetting: '{bad}' is not one of {watchable ()}"))
        | None when names.IsEmpty -> raise (FlagException("--watch-forgetting", $"--watch-forgetting: no measure given (expected some of {watchable ()})"))
        | None -> names)
    |> Flag.sets "WatchForgetting"

let watchEvery = Flag.int "--watch-every" $"watch forgetting every N steps and at the end (default {Defaults.WatchEvery})." |> Flag.atLeast 1 |> Flag.sets "WatchEvery"

let forgettingBudget =
    Flag<(string * float) list>("--forgetting-budget", "stop when a watched measure moves from the base by more than this, keeping the last model within the budget: MEASURE=X[,MEASURE=X] (a rise for pretrain-proxy=0.3, kl-to-base=0.5, distance; a drop in points for arc-easy:100=-2).", None, fun s ->
        [ for part in s.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) do
            let bad () = FlagException("--forgetting-budget", $"--forgetting-budget: '{part}' is not MEASURE=X with MEASURE one of {watchable ()} (X ≥ 0 for a rise, X ≤ 0 for an accuracy's drop)")
            match part.Split('=') with
            | [| m; x |] ->
                let m = m.Trim()
                match Double.TryParse(x, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
                | true, v when Double.IsFinite v && MoFO.Training.ForgettingWatch.IsMeasure m
                               && (if MoFO.Training.ForgettingWatch.HigherIsBetter m then v <= 0.0 else v >= 0.0) -> m, v
                | _ -> raise (bad ())
            | _ -> raise (bad ()) ])
    |> Flag.sets "ForgettingBudget"

// ---- scale: precision, memory ----------------------------------------------------------------------------------------

let precision =
    Flag.choice "--precision" "fp32 (default on the CPU) or bf16 (default on CUDA): bfloat16 weights, gradients and activations; float32 loss and moments; stochastic rounding of the update."
        [ "fp32", Precision.Float32; "bf16", Precision.BFloat16 ]
    |> Flag.sets "Precision"

let optimizerState =
    Flag.choice "--optimizer-state" "fp32 (default) or 8bit: the optimizer's moments in 8 bits, blockwise (a byte per entry and a float32 scale per 2048; about a quarter of the memory)."
        [ "fp32", MoFO.Optim.MomentStorage.Float32; "8bit", MoFO.Optim.MomentStorage.Blockwise8Bit ]
    |> Flag.sets "OptimizerState"

let masterWeights = Flag.switch "--master-weights" "bf16: keep float32 master weights in the optimizer instead of stochastic rounding." |> Flag.sets "MasterWeights"
let roundToNearest = Flag.switch "--round-to-nearest" "bf16: round the update to nearest (updates below half a bf16 ulp are lost; for comparisons)."

let stepInBackward =
    Flag.switch "--step-in-backward" "step each layer's tensors as soon as their gradients are complete and free them (no full set of gradients in memory); needs --gradient-checkpointing, one micro-batch per step, and no clipping (--max-grad-norm defaults to 0)."
    |> Flag.sets "StepInBackward"

let gradientCheckpointing =
    Flag.switch "--gradient-checkpointing" "recompute each decoder layer's activations in the backward pass (less memory, one more forward)."
    |> Flag.sets "GradientCheckpointing"

let trackTouched =
    Flag.switch "--track-touched" "report the fraction of entries ever updated (a bit per entry; on by default below 100M parameters)." |> Flag.sets "TrackTouched"

let memoryBudget =
    Flag.size "--memory-budget" "plan against this much memory (e.g. 16GiB) instead of what the machine has free; the run is refused (exit 7) when it cannot fit."

// ---- evaluation -------------------------------------------------------------------------------------------------------

let addBos =
    Flag.choice "--add-bos" "BOS before each request's context: auto (default: the tokenizer's default, as current lm-evaluation-harness), true (always) or false (never; an empty context starts from EOS), as lm-evaluation-harness 0.4.2 does for causal models, for comparisons with numbers published with it."
        [ "auto", MoFO.Models.BosPolicy.Auto; "true", MoFO.Models.BosPolicy.Always; "false", MoFO.Models.BosPolicy.Never ]
    |> Flag.sets "BosPolicy"

/// Every flag above: Core's errors name a field, and the command line names the flag that sets it.
let all : Flag list =
    [ model; tokenizer; data; output; device; dataRoot; like; layers; shardSizeMb; limit; seed; tensorboard; cache; unsafeNoSandbox
      maxNewTokens; temperature; topP; k; repetitions; warmup; method; alpha; l1Lambda; l2Lambda; loraRank; loraAlpha; loraDropout
      loraTargets; loraOptimizer; lisaLayers; lisaInterval; badamInterval; badamOrder; spectrumFraction; lr; epochs; steps; batchSize; microBatchSize; maxLen; schedule; warmupRatio; weightDecay; maxGradNorm
      saveEvery; evalEvery; pack; resume; skipEmpty; precision; optimizerState; masterWeights; roundToNearest; stepInBackward; gradientCheckpointing
      trackTouched; memoryBudget; watchForgetting; watchEvery; forgettingBudget; addBos ]
