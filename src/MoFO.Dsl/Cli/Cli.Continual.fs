/// `mofo continual`: a task stream trained in sequence (TRACE folders), with OP/BWT, Replay, GEM and MTL.
module MoFO.Dsl.Cli.Continual

open System
open System.IO
open Argu
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training

type ContinualArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Tasks of dirs: string
    | [<Mandatory>] Output of dir: string
    | Tensorboard of dir: string
    | Method of name: string
    | Alpha of a: float
    | Lr of lr: float
    | Epochs of list: string
    | Batch_Size of n: int
    | Micro_Batch_Size of n: int
    | L1_Lambda of l: float
    | L2_Lambda of l: float
    | Max_Len of n: int
    | Seed of seed: int64
    | Replay of n: int
    | Gem of memory: int
    | Mtl
    | Metric of name: string
    | Eval_Limit of n: int
    | Tokenizer of path: string
    | Device of name: string
    | Precision of Common.PrecisionArg
    | Master_Weights
    | Gradient_Checkpointing
    | Memory_Budget of size: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the base model: an HF folder or a llama2.c .bin."
            | Tasks _ -> "comma-separated TRACE task folders (train.json, test.json: lists of {prompt, answer}), in training order."
            | Output _ -> "the folder for per-task runs and continual.json (R, OP, BWT)."
            | Tensorboard _ -> "write TensorBoard event files to this folder (loss, learning rate, gradient norm, updated fraction, tokens/s, distance, held-out loss; rank 0 alone)."
            | Method _ -> Common.methodUsage ()
            | Alpha _ -> $"MoFO / BCD update fraction (default {Defaults.Alpha})."
            | Lr _ -> $"learning rate (default {Defaults.LearningRate})."
            | L1_Lambda _ -> $"strength of the L1 term toward the pretrained weights (--method l1: default {Defaults.L1Lambda}; with another method it adds the term)."
            | L2_Lambda _ -> $"strength of the L2 term toward the pretrained weights (--method l2: default {Defaults.L2Lambda}; with another method it adds the term)."
            | Epochs _ -> "epochs per task, comma-separated (TRACE used 5,3,7,5,3,5,5,7; default 1 each)."
            | Batch_Size _ -> $"examples per step (default {Defaults.BatchSize})."
            | Micro_Batch_Size _ -> "examples per forward/backward pass (default: the batch size)."
            | Max_Len _ -> $"truncate examples to this many tokens (default {Defaults.MaxLength})."
            | Seed _ -> $"seed (default {Defaults.Seed})."
            | Replay _ -> "mix N seeded samples of every earlier task into each later task."
            | Gem _ -> "GEM with a memory of N examples per earlier task."
            | Mtl -> "instead of the stream, train once on all tasks mixed (the multi-task upper bound)."
            | Metric _ -> "accuracy (greedy exact match; default) or likelihood (geometric-mean answer-token probability)."
            | Eval_Limit _ -> "evaluate on at most N test examples per task."
            | Tokenizer _ -> "the tokenizer file, if it is not beside the model."
            | Device _ -> "cpu (default) or cuda (CUDA builds)."
            | Precision _ -> "fp32 (default on the CPU) or bf16 (default on CUDA)."
            | Master_Weights -> "bf16: float32 master weights instead of stochastic rounding."
            | Gradient_Checkpointing -> "recompute each decoder layer's activations in the backward pass."
            | Memory_Budget _ -> "plan against this much memory (e.g. 16GiB); the run is refused (exit 7) when it cannot fit."

let run (a: ParseResults<ContinualArgs>) =
    let dirs = a.GetResult(Tasks).Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    if dirs.Length = 0 then raise (ArgumentException "--tasks: no task folders given")
    let epochs =
        match a.TryGetResult Epochs with
        | None -> Array.create dirs.Length 1
        | Some s ->
            let e = s.Split(',') |> Array.map (fun x -> match Int32.TryParse(x.Trim()) with | true, v when v >= 1 -> v | _ -> raise (ArgumentException $"--epochs: '{x}' is not a positive integer"))
            if e.Length <> dirs.Length then raise (ArgumentException $"--epochs lists {e.Length} values for {dirs.Length} tasks")
            e
    let batch = a.GetResult(Batch_Size, Defaults.BatchSize)
    let o =
        TrainingOptions(
            Method = Common.methodSpec (a.TryGetResult Method) (a.TryGetResult Alpha) (a.TryGetResult L1_Lambda) (a.TryGetResult L2_Lambda),
            LearningRate = a.GetResult(Lr, Defaults.LearningRate),
            BatchSize = batch,
            MicroBatchSize = a.GetResult(Micro_Batch_Size, batch),
            MaxLength = a.GetResult(Max_Len, Defaults.MaxLength),
            Seed = a.GetResult(Seed, Defaults.Seed))
    let device = MoFO.Runtime.device (a.TryGetResult Device)
    let o = Common.withScale o device (a.TryGetResult Precision) (a.Contains Master_Weights) false (a.Contains Gradient_Checkpointing) false false
    o.Validate()
    let tasks =
        [ for i, d in Array.indexed dirs ->
            let name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath d))
            ContinualTask(name, InstructionData.Read(d, DataFormat.Trace, "train"), InstructionData.Read(d, DataFormat.Trace, "test"), epochs[i]) ]
    let metric =
        match a.GetResult(Metric, "accuracy").ToLowerInvariant() with
        | "accuracy" -> TaskMetric.Accuracy
        | "likelihood" -> TaskMetric.AnswerLikelihood
        | m -> raise (ArgumentException $"--metric {m}: expected accuracy or likelihood")
    Common.checkMemory (a.GetResult Model) o (a.TryGetResult Memory_Budget) (Plan.parseSize "--memory-budget") |> ignore
    use model = ModelLoader.Load(a.GetResult Model, Option.toObj (a.TryGetResult Tokenizer), device, Common.dtype o.Precision)
    let runner =
        ContinualRunner(
            Model = model, Tasks = tasks, Options = o, OutputDir = a.GetResult Output, Metric = metric,
            ReplayPerTask = a.GetResult(Replay, 0), GemMemoryPerTask = a.GetResult(Gem, 0), TensorBoardDir = Option.toObj (a.TryGetResult Tensorboard),
            EvalLimit = (a.TryGetResult Eval_Limit |> Option.toNullable))
    let r = if a.Contains Mtl then runner.RunMultiTask() else runner.Run()
    let names = r.Tasks |> Seq.toArray
    printfn "R[t, i] (%A; rows: after training on task t):" metric
    printfn "%-14s %s" "" (String.Join(" ", names |> Array.map (sprintf "%10s")))
    for t in 0 .. r.R.Length - 1 do
        let label = if a.Contains Mtl then "MTL" else names[t]
        printfn "%-14s %s" label (String.Join(" ", r.R[t] |> Array.map (fun v -> if Double.IsNaN v then sprintf "%10s" "" else sprintf "%10.4f" v)))
    printfn "OP:  %.4f" r.OP
    if not (a.Contains Mtl) then printfn "BWT: %.4f" r.BWT
    0
