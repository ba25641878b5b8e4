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

type TrainArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Data of path: string
    | [<Mandatory>] Format of name: string
    | [<Mandatory>] Output of dir: string
    | Tensorboard of dir: string
    | Method of name: string
    | Alpha of a: float
    | Lora_Rank of r: int
    | Lora_Alpha of a: float
    | Lora_Dropout of p: float
    | Lora_Targets of names: string
    | Lora_Optimizer of name: string
    | Lr of lr: float
    | Epochs of n: int
    | Steps of n: int
    | Batch_Size of n: int
    | Micro_Batch_Size of n: int
    | Max_Len of n: int
    | Schedule of name: string
    | Warmup_Ratio of r: float
    | Weight_Decay of wd: float
    | Max_Grad_Norm of norm: float
    | L1_Lambda of l: float
    | L2_Lambda of l: float
    | Seed of seed: int64
    | Eval_Data of path: string
    | Sample_Fraction of f: float
    | Limit of n: int
    | Pack
    | Save_Every of n: int
    | Eval_Every of n: int
    | Tokenizer of path: string
    | Device of name: string
    | Precision of Common.PrecisionArg
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
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the base model: an HF folder or a llama2.c .bin."
            | Data _ -> "the training data (a file; a TRACE task folder)."
            | Format _ -> "tulu, alpaca, gsm8k, dpr, trace or jsonl."
            | Output _ -> "the run's folder: metrics.jsonl, checkpoint/, model/ (the fine-tuned HF folder), train_summary.json."
            | Tensorboard _ -> "write TensorBoard event files to this folder (loss, learning rate, gradient norm, updated fraction, tokens/s, distance, held-out loss; rank 0 alone)."
            | Method _ -> Common.methodUsage ()
            | Alpha _ -> $"MoFO / BCD update fraction per parameter tensor (default {Defaults.Alpha})."
            | Lora_Rank _ -> "--method lora: the adapters' rank r (default 8)."
            | Lora_Alpha _ -> "--method lora: the scaling α (the update is α/r · B·A; default 2r)."
            | Lora_Dropout _ -> "--method lora: dropout on the adapters' input (default 0)."
            | Lora_Targets _ -> "--method lora: comma-separated linear layers to adapt (default: the attention and MLP projections; Llama q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; GPT-NeoX query_key_value,dense,dense_h_to_4h,dense_4h_to_h)."
            | Lora_Optimizer _ -> "--method lora: the member that trains the adapters, adamw (default) or mofo (the filter on the adapters' moments, --alpha)."
            | Lr _ -> $"peak learning rate (default {Defaults.LearningRate}; LoRA usually wants about {Methods.LoraLrScale}× more)."
            | Epochs _ -> $"epochs over the data (default {Defaults.Epochs})."
            | Steps _ -> "optimizer steps (overrides --epochs)."
            | Batch_Size _ -> $"examples per optimizer step (default {Defaults.BatchSize})."
            | Micro_Batch_Size _ -> "examples per forward/backward pass; gradients accumulate (default: the batch size)."
            | Max_Len _ -> $"truncate examples to this many tokens (default {Defaults.MaxLength})."
            | Schedule _ -> $"constant, linear or cosine (default {Defaults.Schedule})."
            | Warmup_Ratio _ -> $"fraction of the steps for linear warmup (default {Defaults.WarmupRatio})."
            | Weight_Decay _ -> $"decoupled weight decay (default {Defaults.WeightDecay})."
            | Max_Grad_Norm _ -> $"clip the gradient's global norm (default {Defaults.MaxGradNorm}; 0 disables)."
            | L1_Lambda _ -> $"strength of the L1 term toward the pretrained weights (with --method l1 default {Defaults.L1Lambda}; with another method it adds the term)."
            | L2_Lambda _ -> $"strength of the L2 term toward the pretrained weights (with --method l2 default {Defaults.L2Lambda}; with another method it adds the term)."
            | Seed _ -> $"seed of data order, sub-sampling and random members (default {Defaults.Seed})."
            | Eval_Data _ -> "held-out data in the same format: its loss is logged (dpr: defaults to test.c.txt beside the train file)."
            | Sample_Fraction _ -> "train on a seeded fraction of the data (the paper: 0.1 of MetaMathQA)."
            | Limit _ -> "use only the first N examples."
            | Pack -> "pack examples into rows of --max-len tokens instead of padding."
            | Save_Every _ -> "write a checkpoint every N steps (default: at the end and on Ctrl-C)."
            | Eval_Every _ -> "log the held-out loss every N steps."
            | Tokenizer _ -> "the tokenizer file, if it is not beside the model."
            | Device _ -> "cpu (default) or cuda (CUDA builds)."
            | Precision _ -> "fp32 (default on the CPU) or bf16 (default on CUDA): bfloat16 weights, gradients and activations; float32 loss and moments; stochastic rounding of the update."
            | Master_Weights -> "bf16: keep float32 master weights in the optimizer instead of stochastic rounding."
            | Round_To_Nearest -> "bf16: round the update to nearest (updates below half a bf16 ulp are lost; for comparisons)."
            | Step_In_Backward -> "step each layer's tensors as soon as their gradients are complete and free them (no full set of gradients in memory); needs --gradient-checkpointing, one micro-batch per step, and no clipping (--max-grad-norm defaults to 0)."
            | Gradient_Checkpointing -> "recompute each decoder layer's activations in the backward pass (less memory, one more forward)."
            | Track_Touched -> "report the fraction of entries ever updated (a byte per entry; on by default below 100M parameters)."
            | Memory_Budget _ -> "plan against this much memory (e.g. 16GiB) instead of what the machine has free; the run is refused (exit 7) when it cannot fit."
            | Skip_Empty -> "drop records whose answer is empty (Code-Alpaca has two) instead of stopping at them."
            | Resume -> "continue the run in --output from its checkpoint (same settings required)."
            | Report -> "after training, evaluate the base and the fine-tuned model and write report.json and report.html into --output."
            | Report_Suite _ -> "the report's measures: tiny (pretrain proxy, story cloze, greedy intactness), paper (MMLU, ARC, HellaSwag, GSM8K, HumanEval) or auto (default: tiny below 100M parameters)."
            | Hellaswag _ -> "the report's HellaSwag jsonl (hellaswag_val.jsonl; not available offline): adds HellaSwag to the paper suite."
            | Cache _ -> "the report's folder of cached base-model samples (default results/cache)."
            | Unsafe_No_Sandbox -> "the report's HumanEval: run generated code without bubblewrap when it is missing (dangerous)."

/// The options of a run from the command line (Core's defaults where a flag is absent).
let options (a: ParseResults<TrainArgs>) =
    let batch = a.GetResult(Batch_Size, Defaults.BatchSize)
    TrainingOptions(
        Method = Common.methodSpecWith (a.TryGetResult Method) (a.TryGetResult Alpha) (a.TryGetResult L1_Lambda) (a.TryGetResult L2_Lambda)
                    (Common.loraSpec (a.TryGetResult Lora_Rank) (a.TryGetResult Lora_Alpha) (a.TryGetResult Lora_Dropout) (a.TryGetResult Lora_Targets)) (a.TryGetResult Lora_Optimizer),
        LearningRate = a.GetResult(Lr, Defaults.LearningRate),
        Epochs = a.GetResult(Epochs, Defaults.Epochs),
        Steps = (a.TryGetResult Steps |> Option.toNullable),
        BatchSize = batch,
        MicroBatchSize = a.GetResult(Micro_Batch_Size, batch),
        MaxLength = a.GetResult(Max_Len, Defaults.MaxLength),
        Schedule = (a.TryGetResult Schedule |> Option.map TrainingOptions.ParseSchedule |> Option.defaultValue Defaults.Schedule),
        WarmupRatio = a.GetResult(Warmup_Ratio, Defaults.WarmupRatio),
        WeightDecay = a.GetResult(Weight_Decay, Defaults.WeightDecay),
        MaxGradNorm = a.GetResult(Max_Grad_Norm, (if a.Contains Step_In_Backward then 0.0 else Defaults.MaxGradNorm)),
        Seed = a.GetResult(Seed, Defaults.Seed),
        Pack = a.Contains Pack,
        SaveEvery = a.GetResult(Save_Every, 0),
        EvalEvery = a.GetResult(Eval_Every, 0))

/// The held-out file the command line names (--eval-data; for dpr test.c.txt beside the train file; for a TRACE
/// folder with eval.json the folder itself).
let evalPath (a: ParseResults<TrainArgs>) (format: DataFormat) =
    let path = a.GetResult Data
    match a.TryGetResult Eval_Data, format with
    | Some p, _ -> Some p
    | None, DataFormat.Dpr ->
        let p = Path.Combine(Path.GetDirectoryName(Path.GetFullPath path), "test.c.txt")
        if File.Exists p && Path.GetFullPath p <> Path.GetFullPath path then Some p else None
    | None, DataFormat.Trace when Directory.Exists path && File.Exists(Path.Combine(path, "eval.json")) -> Some path
    | _ -> None

/// Reads the training (and held-out) examples the command line names.
let data (a: ParseResults<TrainArgs>) (o: TrainingOptions) =
    let format = InstructionData.ParseFormat(a.GetResult Format)
    let path = a.GetResult Data
    let train = InstructionData.Read(path, format, skipEmpty = a.Contains Skip_Empty)
    let train = match a.TryGetResult Sample_Fraction with Some f -> DataOrder.Subsample(train, f, o.Seed) | None -> train
    let train = match a.TryGetResult Limit with Some n -> train |> Seq.truncate n |> Seq.toList |> Collections.Generic.List | None -> train
    let eval =
        evalPath a format |> Option.map (fun p -> InstructionData.Read(p, format, "eval", (if format = DataFormat.Dpr then 0 else -1)))
    train, eval

/// The report's suite (None without --report). The report's flags are checked before training, so that a bad value
/// costs no training run.
let reportSuite (a: ParseResults<TrainArgs>) =
    let suite = a.TryGetResult Report_Suite |> Option.map (fun v -> ForgettingReport.Suite.Parse("--report-suite", v))
    if not (a.Contains Report) then
        for flag, given in [ "--report-suite", a.Contains Report_Suite; "--hellaswag", a.Contains Hellaswag; "--cache", a.Contains Cache
                             "--unsafe-no-sandbox", a.Contains Unsafe_No_Sandbox ] do
            if given then raise (ArgumentException $"{flag} configures the report: add --report")
        None
    else
        a.TryGetResult Hellaswag |> Option.iter (fun p ->
            if not (File.Exists p) then raise (FileNotFoundException($"--hellaswag {p}: file not found (expected HellaSwag's public jsonl, e.g. hellaswag_val.jsonl)", p)))
        Some (defaultArg suite ForgettingReport.Suite.Auto)

/// The report's held-out task: the trainer's eval set (read the same way); DPR adds its two-choice form.
let reportTask (a: ParseResults<TrainArgs>) (o: TrainingOptions) : TaskData option =
    let format = InstructionData.ParseFormat(a.GetResult Format)
    evalPath a format |> Option.map (fun p -> ForgettingReport.heldOutTask format p o.MaxLength)

/// The report's settings at a suite's scale, with the command line's pass-throughs.
let reportSettings (a: ParseResults<TrainArgs>) (suite: ForgettingReport.Suite) =
    let s = if suite = ForgettingReport.Suite.Paper then Settings.Paper else Settings.Tiny
    { s with
        Data = (match a.TryGetResult Hellaswag with Some h -> s.Data |> Map.add "hellaswag" h | None -> s.Data)
        Cache = a.GetResult(Cache, s.Cache)
        UnsafeNoSandbox = a.Contains Unsafe_No_Sandbox }

let run (a: ParseResults<TrainArgs>) =
    let device = MoFO.Runtime.device (a.TryGetResult Device)
    let o: TrainingOptions =
        Common.withScale (options a) device (a.TryGetResult Precision) (a.Contains Master_Weights) (a.Contains Round_To_Nearest) (a.Contains Gradient_Checkpointing) (a.Contains Track_Touched) (a.Contains Step_In_Backward)
    o.Validate()
    let suite = reportSuite a
    let train, eval = data a o
    let task = suite |> Option.bind (fun _ -> reportTask a o)
    Common.checkMemory (a.GetResult Model) o (a.TryGetResult Memory_Budget) (Plan.parseSize "--memory-budget") |> ignore
    let r, metricsFile, report =
        use model = ModelLoader.Load(a.GetResult Model, Option.toObj (a.TryGetResult Tokenizer), device, Common.dtype o.Precision)
        // The report's suite and data are settled before training: a missing benchmark fails now, not after the run.
        let report =
            suite |> Option.map (fun s ->
                let s = ForgettingReport.resolve s (ForgettingReport.parameterCount model)
                let settings = reportSettings a s
                if s = ForgettingReport.Suite.Tiny && a.Contains Hellaswag then
                    eprintfn "mofo train: --hellaswag is used by the paper suite only; this report runs the tiny suite (--report-suite paper to change it)"
                ForgettingReport.preflight (ForgettingReport.measures s task settings) settings
                s, settings)
        let trainer = Trainer(model, train, Option.toObj (eval |> Option.map (fun e -> e :> Collections.Generic.IReadOnlyList<_>)), o, a.GetResult Output)
        trainer.TensorBoardDir <- Option.toObj (a.TryGetResult Tensorboard)
        eprintfn "mofo train: %s, %d examples%s, %d steps of %d (micro-batch %d), lr %g (%A), output %s"
            (string o.Method) trainer.Examples (if o.Pack then " (packed rows)" else "") trainer.TotalSteps o.BatchSize o.MicroBatch
            o.LearningRate o.Schedule (Path.GetFullPath(a.GetResult Output))
        use cts = new Threading.CancellationTokenSource()
        let handler = ConsoleCancelEventHandler(fun _ e ->
            if not cts.IsCancellationRequested then
                e.Cancel <- true
                eprintfn "\nmofo train: interrupted; saving a checkpoint after this step (Ctrl-C again to abort)."
                cts.Cancel())
        Console.CancelKeyPress.AddHandler handler
        try
            let r = trainer.Run(a.Contains Resume, cts.Token)
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
        let opts: ForgettingReport.Options = { Tokenizer = a.TryGetResult Tokenizer; Device = a.TryGetResult Device; MetricsFile = Some metricsFile }
        ForgettingReport.forgettingWith opts (a.GetResult Model) r.ModelDir task settings suite (a.GetResult Output) |> ignore
    | Some _ -> eprintfn "mofo train: the run was interrupted, so there is no fine-tuned model to report on (continue with --resume --report)"
    | None -> ()
    if r.Interrupted then int ExitCode.Interrupted else 0
