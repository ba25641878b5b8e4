/// What every command shares: the one failure guard (exception → one line and the exit-code table, Core's fields named
/// as the flags that set them), and the one reader of the training flags (`trainingOptions`).
module MoFO.Dsl.Cli.Common

open System
open MoFO
open MoFO.Training
open MoFO.Dsl

/// The flags that set a Core option field: the running command's, else the shared ones; joined where there are two
/// (`--l1-lambda / --l2-lambda` both set `Lambda`).
let private flagOf (flags: Flag list) (field: string) =
    let setting (fs: Flag list) = fs |> List.filter (fun f -> f.Field = Some field) |> List.map (fun f -> f.Name) |> List.distinct
    match (match setting flags with [] -> setting Flags.all | names -> names) with
    | [] -> None
    | names -> Some (String.Join(" / ", names))

/// The memory plan's remedy (a Core field and value) as the flags that apply it.
let private remedy (field: string, value: string) =
    match field with
    | "Precision" -> $"{Flags.precision.Name} {value}"
    | "GradientCheckpointing" -> Flags.gradientCheckpointing.Name
    | "OptimizerState" -> $"{Flags.optimizerState.Name} {value}"
    | "TrackTouched" -> $"without {Flags.trackTouched.Name}"
    | "MasterWeights" -> $"without {Flags.masterWeights.Name}"
    | "MicroBatchSize" -> $"{Flags.microBatchSize.Name} {value}"
    | "MaxLength" -> $"{Flags.maxLen.Name} {value}"
    | "StepInBackward" -> $"{Flags.stepInBackward.Name} {Flags.maxGradNorm.Name} 0"
    | f -> $"{f} = {value}"

/// An error as the command line says it: an option's field becomes its flag, a remedy names the flag that applies it.
/// `flags`: the running command's (its own meaning of a field comes first).
let renderFor (flags: Flag list) (e: exn) =
    let e = match e with :? AggregateException as a when a.InnerExceptions.Count = 1 -> a.InnerExceptions[0] | e -> e
    match e with
    | :? MemoryPlanException as m when m.Fit.Count > 0 ->
        let cut = m.Message.IndexOf "; it would fit with "
        let head = if cut >= 0 then m.Message.Substring(0, cut) else m.Message
        let tail = m.Message.Substring(m.Message.LastIndexOf " (")
        $"""{head}; it would fit with {String.Join(" ", m.Fit |> Seq.map (fun struct (f, v) -> remedy (f, v)))}{tail}"""
    | :? OptionException as o ->
        match flagOf flags o.Field with
        | Some flag when o.Message.StartsWith(o.Field + " ") -> flag + o.Message.Substring o.Field.Length
        | Some flag -> $"{o.Message} ({flag})"
        | None -> o.Message
    | :? Argu.ArguParseException as a -> (a.Message.Split('\n')[0]).Replace("ERROR: ", "")
    | e ->
        match box e with
        | :? IRemedy as r when not (isNull r.Remedy) ->
            match flagOf flags r.Remedy with
            | Some flag -> $"{e.Message}; on the command line: {flag}"
            | None -> e.Message
        | _ -> e.Message

/// An error as the command line says it (the shared flags).
let render (e: exn) = renderFor [] e

/// An error as a script says it: Core's option fields as the `Recipe` fields and method arguments a script sets
/// (`Recipe.Lr -0.001: must be …`), never as command-line flags.
let renderScript (e: exn) =
    let e = match e with :? AggregateException as a when a.InnerExceptions.Count = 1 -> a.InnerExceptions[0] | e -> e
    match e with
    | :? FlagException -> e.Message
    | :? MemoryPlanException as m -> m.Message
    | :? OptionException as o ->
        match Recipe.scriptField o.Field with
        | Some word when o.Message.StartsWith(o.Field + " ") -> word + o.Message.Substring o.Field.Length
        | Some word -> $"{o.Message} ({word})"
        | None -> o.Message
    | e -> e.Message

/// The process's standard error before a rank other than 0 is quietened: its errors still reach the launcher.
let mutable private stderr0 : IO.TextWriter = null

/// `MOFO_THREADS`: the torch threads a process asks for (None: unset; not a positive integer: an error naming it).
let private threadsWanted () =
    EnvironmentVariables.PositiveInteger EnvironmentVariables.Threads |> Option.ofNullable

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
/// `flags`: the command's, so that an error names the flag as this command spells it. A `MOFO_*` variable that does not
/// parse stops every command before it starts.
let guardRendered (render: exn -> string) (f: unit -> int) =
    let distributed = MoFO.Distributed.Job.Distributed
    let mutable signal = null
    try
        try
            EnvironmentVariables.Check()
            if distributed then signal <- startRank ()
            else threadsWanted () |> Option.iter TorchSharp.torch.set_num_threads
            let code = f ()
            if distributed then MoFO.Distributed.Job.End()
            code
        with e ->
            let code = match e with :? Argu.ArguParseException -> ExitCode.Usage | e -> ExitCode.classify e
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

/// The failure guard of a command: its errors in its flags' words.
let guardWith (flags: Flag list) (f: unit -> int) = guardRendered (renderFor flags) f

/// Runs a command under `guardWith` with the shared flags.
let guard (f: unit -> int) = guardWith [] f

/// Runs a command: its flags checked first (a bad value or a missing mandatory flag is one line, exit 2), its errors
/// in its own flags' words.
let command (a: Argu.ParseResults<'A>) (run: Argu.ParseResults<'A> -> int) =
    guardWith (Flag.ofCommand typeof<'A>) (fun () -> run (Flag.check a))

/// LoRA's settings from `--lora-rank`, `--lora-alpha`, `--lora-dropout`, `--lora-targets` (comma-separated layer
/// names); None when none is given.
let loraSpec (rank: int option) (alpha: float option) (dropout: float option) (targets: string option) =
    if [ rank.IsSome; alpha.IsSome; dropout.IsSome; targets.IsSome ] |> List.exists id then
        let targets = targets |> Option.map (fun t -> t.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries) :> seq<string>)
        Some(MoFO.Models.LoraSpec.Of(Option.toNullable rank, Option.toNullable alpha, Option.toNullable dropout, Option.toObj targets))
    else None

/// The method of `--method`, `--alpha`, `--l1-lambda`, `--l2-lambda` (a λ with a member adds its loss term) and the
/// LoRA settings and `--lora-optimizer` (with `--method lora`), and the subset members' options (`subsetSpec`).
let methodSpecWith (name: string option) (alpha: float option) (l1: float option) (l2: float option) (lora: MoFO.Models.LoraSpec option)
                   (loraMember: string option) (subset: SubsetSpec option) =
    Methods.Parse(defaultArg name Defaults.Method, defaultArg alpha Defaults.Alpha, Option.toNullable l1, Option.toNullable l2, Option.toObj lora,
                  Option.toObj loraMember, Option.toObj subset)

/// The options of LISA, BAdam and Spectrum from `--lisa-layers`, `--lisa-interval`, `--badam-interval`, `--badam-order`,
/// `--spectrum-fraction` (each flag of another member than `--method`'s is refused, naming it); None when none is given.
let subsetSpec (methodName: string option) (lisaLayers: int option) (lisaInterval: int option) (badamInterval: int option)
               (badamOrder: MoFO.Optim.BlockOrder option) (fraction: float option) =
    let given = [ "lisa", Flags.lisaLayers.Name, lisaLayers.IsSome; "lisa", Flags.lisaInterval.Name, lisaInterval.IsSome
                  "badam", Flags.badamInterval.Name, badamInterval.IsSome; "badam", Flags.badamOrder.Name, badamOrder.IsSome
                  "spectrum", Flags.spectrumFraction.Name, fraction.IsSome ] |> List.filter (fun (_, _, g) -> g)
    if given.IsEmpty then None
    else
        let m = (defaultArg methodName Defaults.Method).ToLowerInvariant()
        match given |> List.tryFind (fun (owner, _, _) -> owner <> m) with
        | Some (owner, flag, _) -> raise (ArgumentException $"{flag} applies to {Flags.method.Name} {owner} (not {m})")
        | None ->
            let d = SubsetSpec()
            Some(SubsetSpec(LisaLayers = defaultArg lisaLayers d.LisaLayers, LisaInterval = defaultArg lisaInterval d.LisaInterval,
                            BAdamInterval = defaultArg badamInterval d.BAdamInterval, BAdamOrder = defaultArg badamOrder d.BAdamOrder,
                            SpectrumFraction = defaultArg fraction d.SpectrumFraction))

/// The method of `--method`, `--alpha`, `--l1-lambda`, `--l2-lambda` (a λ with a member adds its loss term).
let methodSpec (name: string option) (alpha: float option) (l1: float option) (l2: float option) =
    methodSpecWith name alpha l1 l2 None None None

/// The dtype of a precision.
let dtype (p: Precision) = if p = Precision.BFloat16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32

/// The scale settings of a run: precision (default bf16 on CUDA, fp32 on the CPU), master weights, gradient
/// checkpointing, the touched mask (default: auto by model size).
let withScale (o: TrainingOptions) (device: TorchSharp.torch.Device) (precision: Precision option) (masterWeights: bool)
              (nearest: bool) (checkpointing: bool) (trackTouched: bool) (stepInBackward: bool) =
    let p =
        match precision with
        | Some p -> p
        | None -> if device.``type`` = TorchSharp.DeviceType.CUDA then Precision.BFloat16 else Precision.Float32
    let mw, rn, bf16 = Flags.masterWeights.Name, Flags.roundToNearest.Name, $"{Flags.precision.Name} bf16"
    if (masterWeights || nearest) && p <> Precision.BFloat16 then raise (ArgumentException $"{mw} and {rn} apply to {bf16}")
    if masterWeights && nearest then raise (ArgumentException $"{mw} and {rn} exclude each other")
    let update =
        if masterWeights then MoFO.Optim.BFloat16Update.MasterWeights
        elif nearest then MoFO.Optim.BFloat16Update.Nearest
        else MoFO.Optim.BFloat16Update.StochasticRounding
    o.WithScale(p, update, checkpointing, (if trackTouched then Nullable true else o.TrackTouched), stepInBackward)

/// The options of a run from the training flags a command takes (`Flags`: the method, the loop, the scale), with
/// Core's defaults (`TrainingOptions.Default`) where a flag is absent or the command does not take it; the precision
/// defaults by device (bf16 on CUDA). One reader for train, continual and plan.
let trainingOptions (device: TorchSharp.torch.Device) (a: Argu.ParseResults<'A>) =
    let d = TrainingOptions.Default
    let given (f: Flag<'T>) = Flag.ifTaken f a
    let get (f: Flag<'T>) (byDefault: 'T) = given f |> Option.defaultValue byDefault
    let batch = get Flags.batchSize d.BatchSize
    let stepInBackward = get Flags.stepInBackward false
    let lora = loraSpec (given Flags.loraRank) (given Flags.loraAlpha) (given Flags.loraDropout) (given Flags.loraTargets)
    let o =
        TrainingOptions(
            Method = methodSpecWith (given Flags.method) (given Flags.alpha) (given Flags.l1Lambda) (given Flags.l2Lambda) lora (given Flags.loraOptimizer)
                         (subsetSpec (given Flags.method) (given Flags.lisaLayers) (given Flags.lisaInterval) (given Flags.badamInterval)
                                     (given Flags.badamOrder) (given Flags.spectrumFraction)),
            LearningRate = get Flags.lr d.LearningRate,
            Epochs = get Flags.epochs d.Epochs,
            Steps = (given Flags.steps |> Option.toNullable),
            BatchSize = batch,
            MicroBatchSize = get Flags.microBatchSize batch,
            MaxLength = get Flags.maxLen d.MaxLength,
            Schedule = get Flags.schedule d.Schedule,
            WarmupRatio = get Flags.warmupRatio d.WarmupRatio,
            WeightDecay = get Flags.weightDecay d.WeightDecay,
            MaxGradNorm = get Flags.maxGradNorm (if stepInBackward then 0.0 else d.MaxGradNorm),
            Seed = get Flags.seed d.Seed,
            Pack = get Flags.pack false,
            SaveEvery = get Flags.saveEvery d.SaveEvery,
            EvalEvery = get Flags.evalEvery d.EvalEvery)
    let o = o.WithOptimizerState(get Flags.optimizerState d.OptimizerState)
    // a budgeted measure is watched
    let budget = get Flags.forgettingBudget []
    let watched = get Flags.watchForgetting [] |> fun w -> w @ (budget |> List.map fst |> List.filter (fun m -> not (List.contains m w)))
    let o = if watched.IsEmpty then o else o.WithWatch(watched, get Flags.watchEvery d.WatchEvery, readOnlyDict budget)
    withScale o device (given Flags.precision) (get Flags.masterWeights false) (get Flags.roundToNearest false)
        (get Flags.gradientCheckpointing false) (get Flags.trackTouched false) stepInBackward

/// Refuses a run whose memory plan does not fit (before its model is loaded); prints the plan's peak otherwise.
let checkMemory (modelPath: string) (o: TrainingOptions) (device: TorchSharp.torch.Device) (budget: int64 option) =
    let plan = MemoryPlanner.CheckRun(modelPath, o, Option.toNullable budget, device.``type`` = TorchSharp.DeviceType.CUDA)
    let ranks =
        if plan.Input.Ranks > 1 then $" per rank; {plan.Input.Ranks} ranks, {plan.Input.RanksPerDevice} on this machine's memory: {MemoryPlan.Gb plan.DeviceNeed}"
        else ""
    eprintfn "memory plan: peak %s (weights %s, optimizer state %s, activations %s)%s" (MemoryPlan.Gb plan.Peak)
        (MemoryPlan.Gb (plan.Part "weights")) (MemoryPlan.Gb (plan.Part "optimizer state")) (MemoryPlan.Gb (plan.Part "activations")) ranks
    plan
