/// `mofo plan`: the memory a fine-tuning run will need, by component, against the memory the device has.
module MoFO.Dsl.Cli.Plan

open System
open Argu
open MoFO
open MoFO.Training

type PrecisionArg = Common.PrecisionArg

type PlanArgs =
    | Model of path: string
    | Like of model: string
    | Layers of n: int
    | Method of name: string
    | Alpha of a: float
    | Lora_Rank of r: int
    | Lora_Alpha of a: float
    | Lora_Dropout of p: float
    | Lora_Targets of names: string
    | Lora_Optimizer of name: string
    | Precision of PrecisionArg
    | Master_Weights
    | Batch_Size of n: int
    | Micro_Batch_Size of n: int
    | Max_Len of n: int
    | Gradient_Checkpointing
    | Step_In_Backward
    | Track_Touched
    | Memory of size: string
    | Ranks of n: int
    | Ranks_Per_Device of n: int
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the model (an HF folder's config.json or a llama2.c .bin header; no weights are read)."
            | Like _ -> $"""instead of --model, a known shape: {String.Join(", ", MoFO.Models.ModelPresets.All.Keys)}."""
            | Layers _ -> "with --like: another number of layers."
            | Method _ -> Common.methodUsage ()
            | Alpha _ -> $"the update fraction of members that filter (default {Defaults.Alpha})."
            | Lora_Rank _ -> "--method lora: the adapters' rank r (default 8)."
            | Lora_Alpha _ -> "--method lora: the scaling α (the update is α/r · B·A; default 2r)."
            | Lora_Dropout _ -> "--method lora: dropout on the adapters' input (default 0)."
            | Lora_Targets _ -> "--method lora: comma-separated linear layers to adapt (default: the attention and MLP projections; Llama q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; GPT-NeoX query_key_value,dense,dense_h_to_4h,dense_4h_to_h)."
            | Lora_Optimizer _ -> "--method lora: the member that trains the adapters, adamw (default) or mofo (the filter on the adapters' moments, --alpha)."
            | Precision _ -> "fp32 (default on CPU) or bf16 (bfloat16 weights, gradients and activations; float32 moments)."
            | Master_Weights -> "bf16: float32 master weights in the optimizer instead of stochastic rounding."
            | Batch_Size _ -> $"examples per step (default {Defaults.BatchSize})."
            | Micro_Batch_Size _ -> "examples per forward/backward pass (default: the batch size)."
            | Max_Len _ -> $"tokens per example (default {Defaults.MaxLength})."
            | Gradient_Checkpointing -> "recompute each decoder layer's activations in the backward pass."
            | Step_In_Backward -> "step and free each layer's gradients in the backward pass (with --gradient-checkpointing, one micro-batch, no clipping)."
            | Track_Touched -> "keep the touched mask (a byte per entry)."
            | Memory _ -> "the memory to plan against, e.g. 80GB, 141GB, 24GiB (default: what this machine has available)."
            | Ranks _ -> "data-parallel ranks (mpirun -n N): the optimizer state is sharded over them; the plan is per rank."
            | Ranks_Per_Device _ -> "ranks that share the planned memory (default: 1 per GPU with --memory; all ranks on this machine's memory otherwise)."

/// A size such as 80GB, 141GB, 24GiB, 512MB (decimal units; GiB/MiB binary).
let parseSize (flag: string) (text: string) =
    let t = text.Trim().ToUpperInvariant()
    let units = [ "GIB", 1L <<< 30; "MIB", 1L <<< 20; "GB", 1_000_000_000L; "MB", 1_000_000L; "G", 1_000_000_000L; "B", 1L ]
    match units |> List.tryFind (fun (u, _) -> t.EndsWith u) with
    | Some (u, scale) ->
        match Double.TryParse(t.Substring(0, t.Length - u.Length), Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
        | true, x when x > 0.0 -> int64 (x * float scale)
        | _ -> raise (ArgumentException $"{flag} {text}: expected a size such as 80GB or 24GiB")
    | None -> raise (ArgumentException $"{flag} {text}: expected a size such as 80GB or 24GiB")

let run (a: ParseResults<PlanArgs>) =
    let path, config =
        match a.TryGetResult Model, a.TryGetResult Like with
        | Some p, None -> p, MemoryPlanner.ConfigOf p
        | None, Some name ->
            let c = MoFO.Models.ModelPresets.Get(name, "Like")
            name, (match a.TryGetResult Layers with Some n -> MoFO.Models.ModelPresets.WithLayers(c, n) | None -> c)
        | _ -> raise (ArgumentException "mofo plan: pass --model PATH or --like NAME")
    let batch = a.GetResult(Batch_Size, Defaults.BatchSize)
    let lora = Common.loraSpec (a.TryGetResult Lora_Rank) (a.TryGetResult Lora_Alpha) (a.TryGetResult Lora_Dropout) (a.TryGetResult Lora_Targets)
    let methodSpec = Common.methodSpecWith (a.TryGetResult Method) (a.TryGetResult Alpha) None None lora (a.TryGetResult Lora_Optimizer)
    Methods.Validate methodSpec
    let input =
        PlanInput(config, methodSpec,
                  (match a.TryGetResult Precision with Some PrecisionArg.Bf16 -> Training.Precision.BFloat16 | _ -> Training.Precision.Float32),
                  a.GetResult(Micro_Batch_Size, batch), a.GetResult(Max_Len, Defaults.MaxLength), a.Contains Gradient_Checkpointing,
                  MasterWeights = a.Contains Master_Weights, TrackTouched = a.Contains Track_Touched, StepInBackward = a.Contains Step_In_Backward,
                  Ranks = a.GetResult(Ranks, 1),
                  ReduceInBackward = MemoryPlanner.ReducesInBackward(a.Contains Gradient_Checkpointing, batch, a.GetResult(Micro_Batch_Size, batch), a.GetResult(Ranks, 1)),
                  RanksPerDevice = a.GetResult(Ranks_Per_Device, (if a.Contains Memory then 1 else a.GetResult(Ranks, 1))))
    if input.Ranks < 1 || input.RanksPerDevice < 1 || input.RanksPerDevice > input.Ranks then
        raise (ArgumentException $"--ranks {input.Ranks} --ranks-per-device {input.RanksPerDevice}: expected 1 ≤ ranks per device ≤ ranks")
    let available = MemoryPlanner.Available(a.TryGetResult Memory |> Option.map (parseSize "--memory") |> Option.toNullable)
    let plan = MemoryPlanner.Plan input
    let trained = if isNull input.Method.Lora then "" else $"; {plan.Adapters:N0} trained adapter entries"
    printfn "memory plan: %s (%s, %s parameters%s), %s, %O, micro-batch %d × %d tokens%s"
        path config.ModelType (plan.Parameters.ToString("N0")) trained (string input.Method) input.Precision input.MicroBatch input.SequenceLength
        ((if input.GradientCheckpointing then ", gradient checkpointing" else "") + (if input.Ranks > 1 then $", {input.Ranks} ranks (per rank below)" else ""))
    printfn "%s" (plan.Describe())
    printfn "  %-18s %10s  %s" "available" (MemoryPlan.Gb available) (if a.Contains Memory then "(--memory)" else "(this machine, now)")
    MemoryPlanner.Check(input, available) |> ignore
    printfn "fits: %.0f %% of the available memory" (100.0 * float plan.DeviceNeed / float available)
    0
