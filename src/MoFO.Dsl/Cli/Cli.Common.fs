/// What every command shares: the spelling of Core's option fields as flags, the one failure guard (exception → one
/// line and the exit-code table), and the method flags of `train` and `continual`.
module MoFO.Dsl.Cli.Common

open System
open MoFO
open MoFO.Training
open MoFO.Dsl

/// Core's option fields and remedies as the flags users type.
let flags =
    dict [ "LearningRate", "--lr"; "Method", "--method"; "Alpha", "--alpha"; "BatchSize", "--batch-size"
           "MicroBatchSize", "--micro-batch-size"; "Steps", "--steps"; "Epochs", "--epochs"; "MaxLength", "--max-len"
           "WarmupRatio", "--warmup-ratio"; "MaxGradNorm", "--max-grad-norm"; "WeightDecay", "--weight-decay"
           "SaveEvery", "--save-every"; "EvalEvery", "--eval-every"; "Schedule", "--schedule"; "Format", "--format"
           "Lambda", "--l1-lambda / --l2-lambda"; "Resume", "--resume"; "skipEmpty", "--skip-empty"; "tokenizerPath", "--tokenizer"
           "DataRoot", "--data-root"; "allowUnsandboxed", "--unsafe-no-sandbox"; "Device", "--device"; "Task", "--task"
           "Data", "--data"; "Output", "--output"; "t", "--t"; "Name", "mofo repro <name>"; "Like", "--like"; "layers", "--layers"; "Precision", "--precision"; "GradientCheckpointing", "--gradient-checkpointing"
           "TrackTouched", "--track-touched"; "MasterWeights", "--master-weights"; "StepInBackward", "--step-in-backward"
           "LoraRank", "--lora-rank"; "LoraAlpha", "--lora-alpha"; "LoraDropout", "--lora-dropout"; "LoraTargets", "--lora-targets"; "LoraOptimizer", "--lora-optimizer" ]

/// An error as the command line says it: an option's field becomes its flag, a remedy names the flag that applies it.
let render (e: exn) =
    let e = match e with :? AggregateException as a when a.InnerExceptions.Count = 1 -> a.InnerExceptions[0] | e -> e
    match e with
    | :? MemoryPlanException as m when m.Fit.Count > 0 ->
        let flag (f: string, v: string) =
            match f, v with
            | "Precision", v -> $"--precision {v}"
            | "GradientCheckpointing", _ -> "--gradient-checkpointing"
            | "TrackTouched", _ -> "without --track-touched"
            | "MasterWeights", _ -> "without --master-weights"
            | "MicroBatchSize", v -> $"--micro-batch-size {v}"
            | "MaxLength", v -> $"--max-len {v}"
            | "StepInBackward", _ -> "--step-in-backward --max-grad-norm 0"
            | f, v -> $"{f} = {v}"
        let cut = m.Message.IndexOf "; it would fit with "
        let head = if cut >= 0 then m.Message.Substring(0, cut) else m.Message
        let tail = m.Message.Substring(m.Message.LastIndexOf " (")
        $"""{head}; it would fit with {String.Join(" ", m.Fit |> Seq.map (fun struct (f, v) -> flag (f, v)))}{tail}"""
    | :? OptionException as o ->
        match flags.TryGetValue o.Field with
        | true, flag when o.Message.StartsWith(o.Field + " ") -> flag + o.Message.Substring o.Field.Length
        | true, flag -> $"{o.Message} ({flag})"
        | _ -> o.Message
    | e ->
        match box e with
        | :? IRemedy as r when not (isNull r.Remedy) && flags.ContainsKey r.Remedy -> $"{e.Message}; on the command line: {flags[r.Remedy]}"
        | _ -> e.Message

/// The process's standard error before a rank other than 0 is quietened: its errors still reach the launcher.
let mutable private stderr0 : IO.TextWriter = null

/// `MOFO_THREADS`: the torch threads a process asks for (None: unset or not a positive number).
let private threadsWanted () =
    match Int32.TryParse(Environment.GetEnvironmentVariable "MOFO_THREADS") with
    | true, n when n > 0 -> Some n
    | _ -> None

/// Starts this rank of a distributed job (a process that an MPI launcher started with several ranks): MPI, a share of
/// the machine's cores per rank (`MOFO_THREADS` overrides), and quiet output on ranks other than 0 (rank 0 alone
/// prints, logs and writes; errors of any rank are printed with its rank). A rank that the launcher ends with SIGTERM
/// says what it was doing.
let private startRank () =
    let world = MoFO.Distributed.Job.World
    let local = MoFO.Distributed.MpiCollective.LocalRanks |> Option.ofNullable |> Option.defaultValue 1
    let threads = threadsWanted () |> Option.defaultWith (fun () -> max 1 (Environment.ProcessorCount / max 1 local))
    TorchSharp.torch.set_num_threads threads
    stderr0 <- Console.Error
    if world.Rank <> 0 then
        Console.SetOut IO.TextWriter.Null
        Console.SetError IO.TextWriter.Null
    else
        eprintfn "mofo: %d ranks (%s), %d thread%s per rank" world.Size world.Backend threads (if threads = 1 then "" else "s")
    let activity () = match world with :? MoFO.Distributed.MpiCollective as m -> m.Activity | _ -> ""
    Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, fun _ ->
        stderr0.WriteLine $"mofo: rank {world.Rank} of {world.Size}: ended by the launcher (SIGTERM) while {activity ()}; another rank has failed or the job was cancelled. The last checkpoint in the output folder is intact; resume with --resume."
        stderr0.Flush())

/// Runs a command: a failure prints one line (unexpected ones with their stack trace) and returns its exit code. In a
/// distributed job a failing rank prints its error with its rank and ends every rank (MPI_Abort with the exit code).
let guard (f: unit -> int) =
    let distributed = MoFO.Distributed.Job.Distributed
    let mutable signal = null
    try
        try
            if distributed then signal <- startRank ()
            else threadsWanted () |> Option.iter TorchSharp.torch.set_num_threads
            let code = f ()
            if distributed then MoFO.Distributed.Job.End()
            code
        with e ->
            let code = ExitCode.classify e
            let text = if code = ExitCode.Failure then e.ToString() else render e
            if distributed then
                let rank = try $"rank {MoFO.Distributed.Job.World.Rank}: " with _ -> ""
                if isNull stderr0 then stderr0 <- Console.Error
                stderr0.WriteLine $"mofo: {rank}{text}"
                stderr0.Flush()
                (try MoFO.Distributed.Job.World.Abort(int code) with _ -> ())
            else eprintfn "mofo: %s" text
            int code
    finally
        if not (isNull signal) then signal.Dispose()

/// The names `--method` accepts, with what each is.
let methodUsage () =
    let members = Methods.Members |> Seq.map (fun m -> m.Name) |> String.concat ", "
    let terms = Methods.Terms |> Seq.map (fun t -> $"{t.Name} (AdamW + {t.Description})") |> String.concat ", "
    $"{members}, {Methods.LoraName} (adapters, the base frozen; see --lora-*), or {terms} (default {Defaults.Method}). Run `mofo methods` for a description of each."

/// LoRA's settings from `--lora-rank`, `--lora-alpha`, `--lora-dropout`, `--lora-targets` (comma-separated layer
/// names); None when none is given.
let loraSpec (rank: int option) (alpha: float option) (dropout: float option) (targets: string option) =
    if [ rank.IsSome; alpha.IsSome; dropout.IsSome; targets.IsSome ] |> List.exists id then
        let targets = targets |> Option.map (fun t -> t.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries) :> seq<string>)
        Some(MoFO.Models.LoraSpec.Of(Option.toNullable rank, Option.toNullable alpha, Option.toNullable dropout, Option.toObj targets))
    else None

/// The method of `--method`, `--alpha`, `--l1-lambda`, `--l2-lambda` (a λ with a member adds its loss term) and the
/// LoRA settings and `--lora-optimizer` (with `--method lora`).
let methodSpecWith (name: string option) (alpha: float option) (l1: float option) (l2: float option) (lora: MoFO.Models.LoraSpec option) (loraMember: string option) =
    Methods.Parse(defaultArg name Defaults.Method, defaultArg alpha Defaults.Alpha, Option.toNullable l1, Option.toNullable l2, Option.toObj lora, Option.toObj loraMember)

/// The method of `--method`, `--alpha`, `--l1-lambda`, `--l2-lambda` (a λ with a member adds its loss term).
let methodSpec (name: string option) (alpha: float option) (l1: float option) (l2: float option) =
    methodSpecWith name alpha l1 l2 None None

/// `--precision`: the dtype of weights, gradients and activations.
[<RequireQualifiedAccess>]
type PrecisionArg =
    | Fp32
    | Bf16

/// The dtype of a precision.
let dtype (p: Precision) = if p = Precision.BFloat16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32

/// The scale settings of a run: precision (default bf16 on CUDA, fp32 on the CPU), master weights, gradient
/// checkpointing, the touched mask (default: auto by model size).
let withScale (o: TrainingOptions) (device: TorchSharp.torch.Device) (precision: PrecisionArg option) (masterWeights: bool)
              (nearest: bool) (checkpointing: bool) (trackTouched: bool) (stepInBackward: bool) =
    let p =
        match precision with
        | Some PrecisionArg.Bf16 -> Precision.BFloat16
        | Some PrecisionArg.Fp32 -> Precision.Float32
        | None -> if device.``type`` = TorchSharp.DeviceType.CUDA then Precision.BFloat16 else Precision.Float32
    if (masterWeights || nearest) && p <> Precision.BFloat16 then raise (ArgumentException "--master-weights and --round-to-nearest apply to --precision bf16")
    if masterWeights && nearest then raise (ArgumentException "--master-weights and --round-to-nearest exclude each other")
    let update =
        if masterWeights then MoFO.Optim.BFloat16Update.MasterWeights
        elif nearest then MoFO.Optim.BFloat16Update.Nearest
        else MoFO.Optim.BFloat16Update.StochasticRounding
    o.WithScale(p, update, checkpointing, (if trackTouched then Nullable true else o.TrackTouched), stepInBackward)

/// Refuses a run whose memory plan does not fit (before its model is loaded); prints the plan's peak otherwise.
let checkMemory (modelPath: string) (o: TrainingOptions) (budget: string option) (parseSize: string -> int64) =
    let plan = MemoryPlanner.CheckRun(modelPath, o, budget |> Option.map parseSize |> Option.toNullable)
    let ranks =
        if plan.Input.Ranks > 1 then $" per rank; {plan.Input.Ranks} ranks, {plan.Input.RanksPerDevice} on this machine's memory: {MemoryPlan.Gb plan.DeviceNeed}"
        else ""
    eprintfn "memory plan: peak %s (weights %s, optimizer state %s, activations %s)%s" (MemoryPlan.Gb plan.Peak)
        (MemoryPlan.Gb (plan.Part "weights")) (MemoryPlan.Gb (plan.Part "optimizer state")) (MemoryPlan.Gb (plan.Part "activations")) ranks
    plan
