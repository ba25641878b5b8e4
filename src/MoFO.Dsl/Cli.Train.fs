/// `mofo train`: fine-tune a model on instruction data with any member of the optimizer family.
module MoFO.Dsl.Cli.Train

open System
open System.IO
open Argu
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training

type TrainArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Data of path: string
    | [<Mandatory>] Format of name: string
    | [<Mandatory>] Output of dir: string
    | Method of name: string
    | Alpha of a: float
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
    | Skip_Empty
    | Resume
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the base model: an HF folder or a llama2.c .bin."
            | Data _ -> "the training data (a file; a TRACE task folder)."
            | Format _ -> "tulu, alpaca, gsm8k, dpr, trace or jsonl."
            | Output _ -> "the run's folder: metrics.jsonl, checkpoint/, model/ (the fine-tuned HF folder), train_summary.json."
            | Method _ -> "mofo (default), adamw, lion, hft, l1, l2, grad-bcd or random-bcd."
            | Alpha _ -> "MoFO / BCD update fraction per parameter tensor (default 0.15)."
            | Lr _ -> "peak learning rate (default 2e-5)."
            | Epochs _ -> "epochs over the data (default 1)."
            | Steps _ -> "optimizer steps (overrides --epochs)."
            | Batch_Size _ -> "examples per optimizer step (default 16)."
            | Micro_Batch_Size _ -> "examples per forward/backward pass; gradients accumulate (default: the batch size)."
            | Max_Len _ -> "truncate examples to this many tokens (default 512)."
            | Schedule _ -> "constant, linear or cosine (default cosine)."
            | Warmup_Ratio _ -> "fraction of the steps for linear warmup (default 0)."
            | Weight_Decay _ -> "decoupled weight decay (default 0)."
            | Max_Grad_Norm _ -> "clip the gradient's global norm (default 1; 0 disables)."
            | L1_Lambda _ -> "strength of the L1 term toward the pretrained weights (default 1e-6)."
            | L2_Lambda _ -> "strength of the L2 term toward the pretrained weights (default 1e-3)."
            | Seed _ -> "seed of data order, sub-sampling and random members (default 42)."
            | Eval_Data _ -> "held-out data in the same format: its loss is logged (dpr: defaults to test.c.txt beside the train file)."
            | Sample_Fraction _ -> "train on a seeded fraction of the data (the paper: 0.1 of MetaMathQA)."
            | Limit _ -> "use only the first N examples."
            | Pack -> "pack examples into rows of --max-len tokens instead of padding."
            | Save_Every _ -> "write a checkpoint every N steps (default: at the end and on Ctrl-C)."
            | Eval_Every _ -> "log the held-out loss every N steps."
            | Tokenizer _ -> "the tokenizer file, if it is not beside the model."
            | Device _ -> "cpu (default) or cuda: weights and optimizer state in float32 on that device (no bfloat16 autocast yet)."
            | Skip_Empty -> "drop records whose answer is empty (Code-Alpaca has two) instead of stopping at them."
            | Resume -> "continue the run in --output from its checkpoint (same settings required)."

/// The options of a run from the command line.
let options (a: ParseResults<TrainArgs>) =
    let batch = a.GetResult(Batch_Size, 16)
    let steps: Nullable<int> = a.TryGetResult Steps |> Option.toNullable
    let schedule = a.TryGetResult Schedule |> Option.map TrainingOptions.ParseSchedule |> Option.defaultValue Schedule.Cosine
    let method = a.TryGetResult Method |> Option.map TrainingOptions.ParseMethod |> Option.defaultValue Method.MoFO
    TrainingOptions(
        Method = method,
        Alpha = a.GetResult(Alpha, 0.15),
        LearningRate = a.GetResult(Lr, 2e-5),
        Epochs = a.GetResult(Epochs, 1),
        Steps = steps,
        BatchSize = batch,
        MicroBatchSize = a.GetResult(Micro_Batch_Size, batch),
        MaxLength = a.GetResult(Max_Len, 512),
        Schedule = schedule,
        WarmupRatio = a.GetResult(Warmup_Ratio, 0.0),
        WeightDecay = a.GetResult(Weight_Decay, 0.0),
        MaxGradNorm = a.GetResult(Max_Grad_Norm, 1.0),
        L1Lambda = a.GetResult(L1_Lambda, 1e-6),
        L2Lambda = a.GetResult(L2_Lambda, 1e-3),
        Seed = a.GetResult(Seed, 42L),
        Pack = a.Contains Pack,
        SaveEvery = a.GetResult(Save_Every, 0),
        EvalEvery = a.GetResult(Eval_Every, 0))

/// Reads the training (and held-out) examples the command line names.
let data (a: ParseResults<TrainArgs>) (o: TrainingOptions) =
    let format = InstructionData.ParseFormat(a.GetResult Format)
    let path = a.GetResult Data
    let train = InstructionData.Read(path, format, skipEmpty = a.Contains Skip_Empty)
    let train = match a.TryGetResult Sample_Fraction with Some f -> DataOrder.Subsample(train, f, o.Seed) | None -> train
    let train = match a.TryGetResult Limit with Some n -> train |> Seq.truncate n |> Seq.toList |> Collections.Generic.List | None -> train
    let evalPath =
        match a.TryGetResult Eval_Data, format with
        | Some p, _ -> Some p
        | None, DataFormat.Dpr ->
            let p = Path.Combine(Path.GetDirectoryName(Path.GetFullPath path), "test.c.txt")
            if File.Exists p && Path.GetFullPath p <> Path.GetFullPath path then Some p else None
        | None, DataFormat.Trace when Directory.Exists path && File.Exists(Path.Combine(path, "eval.json")) -> Some path
        | _ -> None
    let eval =
        evalPath |> Option.map (fun p -> InstructionData.Read(p, format, "eval", (if format = DataFormat.Dpr then 0 else -1)))
    train, eval

let run (a: ParseResults<TrainArgs>) =
    let o: TrainingOptions = options a
    o.Validate()
    let train, eval = data a o
    use model = ModelLoader.Load(a.GetResult Model, Option.toObj (a.TryGetResult Tokenizer), MoFO.Runtime.device (a.TryGetResult Device), TorchSharp.torch.ScalarType.Float32)
    let trainer = Trainer(model, train, Option.toObj (eval |> Option.map (fun e -> e :> Collections.Generic.IReadOnlyList<_>)), o, a.GetResult Output)
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
        if r.Interrupted then 130 else 0
    finally
        Console.CancelKeyPress.RemoveHandler handler
