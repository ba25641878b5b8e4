/// `mofo train`: fine-tune a model on instruction data with any member of the optimizer family.
module MoFO.Dsl.Cli.Train

open System
open System.IO
open Argu
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training
open MoFO.Dsl

/// (the union case `Report` of TrainArgs hides the module's name)
module ForgettingReport = MoFO.Dsl.Report

/// `mofo train`'s own flags (the shared ones are in `Flags`).
module private Own =
    let data = Flags.data.Describe "the training data (a file; a TRACE task folder)."
    let format =
        Flag.choice "--format" "tulu, alpaca, gsm8k, dpr, trace or jsonl."
            [ "tulu", DataFormat.Tulu; "alpaca", DataFormat.Alpaca; "gsm8k", DataFormat.Gsm8k; "dpr", DataFormat.Dpr; "trace", DataFormat.Trace; "jsonl", DataFormat.Jsonl ]
        |> Flag.sets "Format"
    let output = Flags.output.Describe "the run's folder: metrics.jsonl, checkpoint/, model/ (the fine-tuned HF folder), train_summary.json."
    let evalData = Flag.text "--eval-data" "held-out data in the same format: its loss is logged (dpr: defaults to test.c.txt beside the train file)."
    let sampleFraction = Flag.float "--sample-fraction" "train on a seeded fraction of the data (the paper: 0.1 of MetaMathQA)."
    let limit = Flags.limit.Describe "use only the first N examples."
    let report = Flag.switch "--report" "after training, evaluate the base and the fine-tuned model and write report.json and report.html into --output."
    let reportSuite =
        Flag.choice "--report-suite" "the report's measures: tiny (pretrain proxy, story cloze, greedy intactness), paper (MMLU, ARC, HellaSwag, GSM8K, HumanEval) or auto (default: tiny below 100M parameters)."
            [ "tiny", ForgettingReport.Suite.Tiny; "paper", ForgettingReport.Suite.Paper; "auto", ForgettingReport.Suite.Auto ]
    let hellaswag = Flag.text "--hellaswag" "the report's HellaSwag jsonl (hellaswag_val.jsonl; not available offline): adds HellaSwag to the paper suite."
    let cache = Flags.cache.Describe "the report's folder of cached base-model samples (default results/cache)."
    let unsafeNoSandbox = Flags.unsafeNoSandbox.Describe "the report's HumanEval: run generated code without bubblewrap when it is missing (dangerous)."

type TrainArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Data of path: string
    | [<Mandatory>] Format of name: string
    | [<Mandatory>] Output of dir: string
    | Tensorboard of dir: string
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
    | Lr of lr: string
    | Epochs of n: string
    | Steps of n: string
    | Batch_Size of n: string
    | Micro_Batch_Size of n: string
    | Max_Len of n: string
    | Schedule of name: string
    | Warmup_Ratio of r: string
    | Weight_Decay of wd: string
    | Max_Grad_Norm of norm: string
    | L1_Lambda of l: string
    | L2_Lambda of l: string
    | Seed of seed: string
    | Eval_Data of path: string
    | Sample_Fraction of f: string
    | Limit of n: string
    | Pack
    | Save_Every of n: string
    | Eval_Every of n: string
    | Tokenizer of path: string
    | Device of name: string
    | Precision of name: string
    | Optimizer_State of storage: string
    | Watch_Forgetting of measures: string
    | Watch_Every of n: string
    | Forgetting_Budget of budget: string
    | Master_Weights
    | Round_To_Nearest
    | Step_In_Backward
    | Gradient_Checkpointing
    | Track_Touched
    | Memory_Budget of size: string
    | Skip_Empty
    | Resume
    | Report
    | Report_Suite of name: string
    | Hellaswag of path: string
    | Cache of dir: string
    | Unsafe_No_Sandbox
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Flags.model | Data _ -> Own.data | Format _ -> Own.format | Output _ -> Own.output
            | Tensorboard _ -> Flags.tensorboard | Method _ -> Flags.method | Alpha _ -> Flags.alpha
            | Lora_Rank _ -> Flags.loraRank | Lora_Alpha _ -> Flags.loraAlpha | Lora_Dropout _ -> Flags.loraDropout
            | Lora_Targets _ -> Flags.loraTargets | Lora_Optimizer _ -> Flags.loraOptimizer
            | Lisa_Layers _ -> Flags.lisaLayers | Lisa_Interval _ -> Flags.lisaInterval | Badam_Interval _ -> Flags.badamInterval
            | Badam_Order _ -> Flags.badamOrder | Spectrum_Fraction _ -> Flags.spectrumFraction | Lr _ -> Flags.lr
            | Epochs _ -> Flags.epochs | Steps _ -> Flags.steps | Batch_Size _ -> Flags.batchSize | Micro_Batch_Size _ -> Flags.microBatchSize
            | Max_Len _ -> Flags.maxLen | Schedule _ -> Flags.schedule | Warmup_Ratio _ -> Flags.warmupRatio | Weight_Decay _ -> Flags.weightDecay
            | Max_Grad_Norm _ -> Flags.maxGradNorm | L1_Lambda _ -> Flags.l1Lambda | L2_Lambda _ -> Flags.l2Lambda | Seed _ -> Flags.seed
            | Eval_Data _ -> Own.evalData | Sample_Fraction _ -> Own.sampleFraction | Limit _ -> Own.limit | Pack -> Flags.pack
            | Save_Every _ -> Flags.saveEvery | Eval_Every _ -> Flags.evalEvery | Tokenizer _ -> Flags.tokenizer | Device _ -> Flags.device
            | Precision _ -> Flags.precision | Optimizer_State _ -> Flags.optimizerState | Watch_Forgetting _ -> Flags.watchForgetting
            | Watch_Every _ -> Flags.watchEvery | Forgetting_Budget _ -> Flags.forgettingBudget | Master_Weights -> Flags.masterWeights | Round_To_Nearest -> Flags.roundToNearest
            | Step_In_Backward -> Flags.stepInBackward | Gradient_Checkpointing -> Flags.gradientCheckpointing | Track_Touched -> Flags.trackTouched
            | Memory_Budget _ -> Flags.memoryBudget | Skip_Empty -> Flags.skipEmpty | Resume -> Flags.resume | Report -> Own.report
            | Report_Suite _ -> Own.reportSuite | Hellaswag _ -> Own.hellaswag | Cache _ -> Own.cache | Unsafe_No_Sandbox -> Own.unsafeNoSandbox
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The held-out file the command line names (--eval-data; for dpr test.c.txt beside the train file; for a TRACE
/// folder with eval.json the folder itself).
let evalPath (a: ParseResults<TrainArgs>) (format: DataFormat) =
    let path = Flag.get Own.data a
    match Flag.tryGet Own.evalData a, format with
    | Some p, _ -> Some p
    | None, DataFormat.Dpr ->
        let p = Path.Combine(Path.GetDirectoryName(Path.GetFullPath path), "test.c.txt")
        if File.Exists p && Path.GetFullPath p <> Path.GetFullPath path then Some p else None
    | None, DataFormat.Trace when Directory.Exists path && File.Exists(Path.Combine(path, "eval.json")) -> Some path
    | _ -> None

/// Reads the training (and held-out) examples the command line names.
let data (a: ParseResults<TrainArgs>) (o: TrainingOptions) =
    let format = Flag.get Own.format a
    let train = InstructionData.Read(Flag.get Own.data a, format, skipEmpty = Flag.has Flags.skipEmpty a)
    let train = match Flag.tryGet Own.sampleFraction a with Some f -> DataOrder.Subsample(train, f, o.Seed) | None -> train
    let train = match Flag.tryGet Own.limit a with Some n -> train |> Seq.truncate n |> Seq.toList |> Collections.Generic.List | None -> train
    let eval =
        evalPath a format |> Option.map (fun p -> InstructionData.Read(p, format, "eval", (if format = DataFormat.Dpr then 0 else -1)))
    train, eval

/// The report's suite (None without --report). The report's flags are checked before training, so that a bad value
/// costs no training run.
let reportSuite (a: ParseResults<TrainArgs>) =
    let suite = Flag.tryGet Own.reportSuite a
    if not (Flag.has Own.report a) then
        for flag, given in [ Own.reportSuite.Name, suite.IsSome; Own.hellaswag.Name, (Flag.tryGet Own.hellaswag a).IsSome
                             Own.cache.Name, (Flag.tryGet Own.cache a).IsSome; Own.unsafeNoSandbox.Name, Flag.has Own.unsafeNoSandbox a ] do
            if given then raise (ArgumentException $"{flag} configures the report: add {Own.report.Name}")
        None
    else
        Flag.tryGet Own.hellaswag a |> Option.iter (fun p ->
            if not (File.Exists p) then raise (FileNotFoundException($"{Own.hellaswag.Name} {p}: file not found (expected HellaSwag's public jsonl, e.g. hellaswag_val.jsonl)", p)))
        Some (defaultArg suite ForgettingReport.Suite.Auto)

/// The report's held-out task: the trainer's eval set (read the same way); DPR adds its two-choice form.
let reportTask (a: ParseResults<TrainArgs>) (o: TrainingOptions) : TaskData option =
    evalPath a (Flag.get Own.format a) |> Option.map (fun p -> ForgettingReport.heldOutTask (Flag.get Own.format a) p o.MaxLength)

/// The report's settings at a suite's scale, with the command line's pass-throughs.
let reportSettings (a: ParseResults<TrainArgs>) (suite: ForgettingReport.Suite) =
    let s = if suite = ForgettingReport.Suite.Paper then Settings.Paper else Settings.Tiny
    { s with
        Data = (match Flag.tryGet Own.hellaswag a with Some h -> s.Data |> Map.add "hellaswag" h | None -> s.Data)
        Cache = Flag.getOr Own.cache s.Cache a
        UnsafeNoSandbox = Flag.has Own.unsafeNoSandbox a }

let run (a: ParseResults<TrainArgs>) =
    let device = MoFO.Runtime.device (Flag.tryGet Flags.device a)
    let o = Common.trainingOptions device a
    o.Validate()
    let suite = reportSuite a
    let train, eval = data a o
    let task = suite |> Option.bind (fun _ -> reportTask a o)
    let modelPath, tokenizer, output = Flag.get Flags.model a, Flag.tryGet Flags.tokenizer a, Flag.get Own.output a
    Common.checkMemory modelPath o device (Flag.tryGet Flags.memoryBudget a) |> ignore
    let r, metricsFile, report =
        use model = ModelLoader.Load(modelPath, Option.toObj tokenizer, device, Common.dtype o.Precision)
        // The report's suite and data are settled before training: a missing benchmark fails now, not after the run.
        let report =
            suite |> Option.map (fun s ->
                let s = ForgettingReport.resolve s (ForgettingReport.parameterCount model)
                let settings = reportSettings a s
                if s = ForgettingReport.Suite.Tiny && (Flag.tryGet Own.hellaswag a).IsSome then
                    eprintfn "mofo train: --hellaswag is used by the paper suite only; this report runs the tiny suite (--report-suite paper to change it)"
                ForgettingReport.preflight (ForgettingReport.measures s task settings) settings
                s, settings)
        let trainer = Trainer(model, train, Option.toObj (eval |> Option.map (fun e -> e :> Collections.Generic.IReadOnlyList<_>)), o, output)
        trainer.TensorBoardDir <- Option.toObj (Flag.tryGet Flags.tensorboard a)
        eprintfn "mofo train: %s, %d examples%s, %d steps of %d (micro-batch %d), lr %g (%A), output %s"
            (string o.Method) trainer.Examples (if o.Pack then " (packed rows)" else "") trainer.TotalSteps o.BatchSize o.MicroBatch
            o.LearningRate o.Schedule (Path.GetFullPath output)
        use cts = new Threading.CancellationTokenSource()
        let handler = ConsoleCancelEventHandler(fun _ e ->
            if not cts.IsCancellationRequested then
                e.Cancel <- true
                eprintfn "\nmofo train: interrupted; saving a checkpoint after this step (Ctrl-C again to abort)."
                cts.Cancel())
        Console.CancelKeyPress.AddHandler handler
        try
            let r = trainer.Run(Flag.has Flags.resume a, cts.Token)
            printfn "steps: %d of %d%s" r.Steps r.TotalSteps (if r.Interrupted then " (interrupted; continue with --resume)" else "")
            r.FinalLoss |> Option.ofNullable |> Option.iter (printfn "final train loss: %.4f")
            r.EvalLoss |> Option.ofNullable |> Option.iter (printfn "held-out loss: %.4f")
            printfn "distance from the base weights (L2): %.4f" r.Distance
            if r.DroppedExamples > 0 then printfn "dropped examples (no trained token within --max-len): %d" r.DroppedExamples
            if not (isNull r.ModelDir) then printfn "model: %s" r.ModelDir
            printfn "metrics: %s" trainer.MetricsFile
            r, trainer.MetricsFile, report
        finally
            Console.CancelKeyPress.RemoveHandler handler
    match report with
    | Some _ when not MoFO.Distributed.Job.IsRoot -> ()   // rank 0 alone measures and writes the report
    | Some (suite, settings) when not r.Interrupted && not (isNull r.ModelDir) ->
        if task.IsNone then eprintfn "mofo train: no held-out data (--eval-data): the report has no task measures"
        let opts: ForgettingReport.Options = { Tokenizer = tokenizer; Device = Flag.tryGet Flags.device a; MetricsFile = Some metricsFile }
        ForgettingReport.forgettingWith opts modelPath r.ModelDir task settings suite output |> ignore
    | Some _ -> eprintfn "mofo train: the run was interrupted, so there is no fine-tuned model to report on (continue with --resume --report)"
    | None -> ()
    if r.Interrupted then int ExitCode.Interrupted else 0
