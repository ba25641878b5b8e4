/// `mofo plan`: the memory a fine-tuning run will need, by component, against the memory the device has.
module MoFO.Dsl.Cli.Plan

open System
open Argu
open MoFO
open MoFO.Training

/// `mofo plan`'s own flags (the shared ones are in `Flags`).
module private Own =
    let model = Flags.model.Describe "the model (an HF folder's config.json or a llama2.c .bin header; no weights are read)."
    let memory = Flag.size "--memory" "the memory to plan against, e.g. 80GB, 141GB, 24GiB (default: what this machine has available)."
    let ranks = Flag.int "--ranks" "data-parallel ranks (mpirun -n N): the optimizer state is sharded over them; the plan is per rank." |> Flag.atLeast 1
    let ranksPerDevice =
        Flag.int "--ranks-per-device" "ranks that share the planned memory (default: 1 per GPU with --memory; all ranks on this machine's memory otherwise)."
        |> Flag.atLeast 1
    let device = Flags.device.Describe "the device the run will step on: cpu (default: the fused kernels' buffers) or cuda (the ops path's temporaries)."

type PlanArgs =
    | Model of path: string
    | Like of model: string
    | Layers of n: string
    | Method of name: string
    | Alpha of a: string
    | Lora_Rank of r: string
    | Lora_Alpha of a: string
    | Lora_Dropout of p: string
    | Lora_Targets of names: string
    | Lora_Optimizer of name: string
    | Lisa_Layers of n: string
    | Lisa_Interval of n: string
    | Badam_Interval of n: string
    | Badam_Order of name: string
    | Spectrum_Fraction of f: string
    | Precision of name: string
    | Optimizer_State of storage: string
    | Device of device: string
    | Master_Weights
    | Batch_Size of n: string
    | Micro_Batch_Size of n: string
    | Max_Len of n: string
    | Gradient_Checkpointing
    | Step_In_Backward
    | Track_Touched
    | Memory of size: string
    | Ranks of n: string
    | Ranks_Per_Device of n: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Own.model | Like _ -> Flags.like | Layers _ -> Flags.layers | Method _ -> Flags.method | Alpha _ -> Flags.alpha
            | Lora_Rank _ -> Flags.loraRank | Lora_Alpha _ -> Flags.loraAlpha | Lora_Dropout _ -> Flags.loraDropout
            | Lora_Targets _ -> Flags.loraTargets | Lora_Optimizer _ -> Flags.loraOptimizer
            | Lisa_Layers _ -> Flags.lisaLayers | Lisa_Interval _ -> Flags.lisaInterval | Badam_Interval _ -> Flags.badamInterval
            | Badam_Order _ -> Flags.badamOrder | Spectrum_Fraction _ -> Flags.spectrumFraction | Precision _ -> Flags.precision | Optimizer_State _ -> Flags.optimizerState | Device _ -> Own.device
            | Master_Weights -> Flags.masterWeights | Batch_Size _ -> Flags.batchSize | Micro_Batch_Size _ -> Flags.microBatchSize
            | Max_Len _ -> Flags.maxLen | Gradient_Checkpointing -> Flags.gradientCheckpointing | Step_In_Backward -> Flags.stepInBackward
            | Track_Touched -> Flags.trackTouched | Memory _ -> Own.memory | Ranks _ -> Own.ranks | Ranks_Per_Device _ -> Own.ranksPerDevice
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The model's config: --model PATH, or --like NAME (with --layers).
let private config (a: ParseResults<PlanArgs>) =
    match Flag.tryGet Own.model a, Flag.tryGet Flags.like a with
    | Some p, None -> p, MemoryPlanner.ConfigOf p
    | None, Some name ->
        let c = MoFO.Models.ModelPresets.Get(name, "Like")
        name, (match Flag.tryGet Flags.layers a with Some n -> MoFO.Models.ModelPresets.WithLayers(c, n) | None -> c)
    | _ -> raise (ArgumentException $"mofo plan: pass {Own.model.Name} PATH or {Flags.like.Name} NAME")

/// The plan's input: the run's options as `mofo train` reads them from the same flags (Core's defaults), on this
/// machine's CPU (fp32 unless --precision bf16), with the ranks.
let input (a: ParseResults<PlanArgs>) =
    let path, config = config a
    let o = Common.trainingOptions TorchSharp.torch.CPU a
    o.Validate()
    let ranks = Flag.getOr Own.ranks 1 a
    let x =
        PlanInput(config, o.Method, o.Precision, o.MicroBatch, o.MaxLength, o.GradientCheckpointing,
                  MasterWeights = o.MasterWeights, OptimizerState = o.OptimizerState,
                  OpsPath = (Flag.tryGet Own.device a |> Option.exists (fun d -> d.StartsWith "cuda")), TrackTouched = (o.TrackTouched = Nullable true), StepInBackward = o.StepInBackward,
                  Ranks = ranks, ReduceInBackward = MemoryPlanner.ReducesInBackward(o.GradientCheckpointing, o.BatchSize, o.MicroBatch, ranks),
                  RanksPerDevice = Flag.getOr Own.ranksPerDevice (if (Flag.tryGet Own.memory a).IsSome then 1 else ranks) a)
    if x.RanksPerDevice > x.Ranks then
        raise (ArgumentException $"{Own.ranks.Name} {x.Ranks} {Own.ranksPerDevice.Name} {x.RanksPerDevice}: expected 1 ≤ ranks per device ≤ ranks")
    path, config, x

let run (a: ParseResults<PlanArgs>) =
    let path, config, input = input a
    let memory = Flag.tryGet Own.memory a
    let available = MemoryPlanner.Available(Option.toNullable memory)
    let plan = MemoryPlanner.Plan input
    let trained = if isNull input.Method.Lora then "" else $"; {plan.Adapters:N0} trained adapter entries"
    printfn "memory plan: %s (%s, %s parameters%s), %s, %O, micro-batch %d × %d tokens%s"
        path config.ModelType (plan.Parameters.ToString("N0")) trained (string input.Method) input.Precision input.MicroBatch input.SequenceLength
        ((if input.GradientCheckpointing then ", gradient checkpointing" else "") + (if input.Ranks > 1 then $", {input.Ranks} ranks (per rank below)" else ""))
    printfn "%s" (plan.Describe())
    printfn "  %-18s %10s  %s" "available" (MemoryPlan.Gb available) (if memory.IsSome then $"({Own.memory.Name})" else "(this machine, now)")
    MemoryPlanner.Check(input, available) |> ignore
    printfn "fits: %.0f %% of the available memory" (100.0 * float plan.DeviceNeed / float available)
    0
