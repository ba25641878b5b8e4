/// `mofo continual`: a task stream trained in sequence (TRACE folders), with OP/BWT, Replay, GEM and MTL.
module MoFO.Dsl.Cli.Continual

open System
open System.IO
open Argu
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training

/// `mofo continual`'s own flags (the shared ones are in `Flags`).
module private Own =
    let tasks = Flag.text "--tasks" "comma-separated TRACE task folders (train.json, test.json: lists of {prompt, answer}), in training order."
    let output = Flags.output.Describe "the folder for per-task runs and continual.json (R, OP, BWT)."
    /// not the shared --epochs N: one value per task
    let epochs = Flag.positiveInts "--epochs" "epochs per task, comma-separated (TRACE used 5,3,7,5,3,5,5,7; default 1 each)." |> Flag.sets "Epochs"
    let replay = Flag.int "--replay" "mix N seeded samples of every earlier task into each later task." |> Flag.atLeast 0
    let gem = Flag.int "--gem" "GEM with a memory of N examples per earlier task." |> Flag.atLeast 0
    let mtl = Flag.switch "--mtl" "instead of the stream, train once on all tasks mixed (the multi-task upper bound)."
    let metric =
        Flag.choice "--metric" "accuracy (greedy exact match; default) or likelihood (geometric-mean answer-token probability)."
            [ "accuracy", TaskMetric.Accuracy; "likelihood", TaskMetric.AnswerLikelihood ]
    let evalLimit = Flag.int "--eval-limit" "evaluate on at most N test examples per task." |> Flag.atLeast 1

type ContinualArgs =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Tasks of dirs: string
    | [<Mandatory>] Output of dir: string
    | Tensorboard of dir: string
    | Method of name: string
    | Alpha of a: string
    | Lr of lr: string
    | Epochs of list: string
    | Batch_Size of n: string
    | Micro_Batch_Size of n: string
    | L1_Lambda of l: string
    | L2_Lambda of l: string
    | Max_Len of n: string
    | Seed of seed: string
    | Replay of n: string
    | Gem of memory: string
    | Mtl
    | Metric of name: string
    | Eval_Limit of n: string
    | Tokenizer of path: string
    | Device of name: string
    | Precision of name: string
    | Optimizer_State of storage: string
    | Master_Weights
    | Gradient_Checkpointing
    | Memory_Budget of size: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Flags.model | Tasks _ -> Own.tasks | Output _ -> Own.output | Tensorboard _ -> Flags.tensorboard
            | Method _ -> Flags.method | Alpha _ -> Flags.alpha | Lr _ -> Flags.lr | Epochs _ -> Own.epochs | Batch_Size _ -> Flags.batchSize
            | Micro_Batch_Size _ -> Flags.microBatchSize | L1_Lambda _ -> Flags.l1Lambda | L2_Lambda _ -> Flags.l2Lambda | Max_Len _ -> Flags.maxLen
            | Seed _ -> Flags.seed | Replay _ -> Own.replay | Gem _ -> Own.gem | Mtl -> Own.mtl | Metric _ -> Own.metric
            | Eval_Limit _ -> Own.evalLimit | Tokenizer _ -> Flags.tokenizer | Device _ -> Flags.device | Precision _ -> Flags.precision | Optimizer_State _ -> Flags.optimizerState
            | Master_Weights -> Flags.masterWeights | Gradient_Checkpointing -> Flags.gradientCheckpointing | Memory_Budget _ -> Flags.memoryBudget
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

let run (a: ParseResults<ContinualArgs>) =
    let dirs = (Flag.get Own.tasks a).Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    if dirs.Length = 0 then raise (ArgumentException $"{Own.tasks.Name}: no task folders given")
    let epochs =
        match Flag.tryGet Own.epochs a with
        | None -> Array.create dirs.Length 1
        | Some e when e.Length <> dirs.Length -> raise (ArgumentException $"{Own.epochs.Name} lists {e.Length} values for {dirs.Length} tasks")
        | Some e -> List.toArray e
    let device = MoFO.Runtime.device (Flag.tryGet Flags.device a)
    let o = Common.trainingOptions device a
    o.Validate()
    let tasks =
        [ for i, d in Array.indexed dirs ->
            let name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath d))
            ContinualTask(name, InstructionData.Read(d, DataFormat.Trace, "train"), InstructionData.Read(d, DataFormat.Trace, "test"), epochs[i]) ]
    let metric = Flag.getOr Own.metric TaskMetric.Accuracy a
    let modelPath = Flag.get Flags.model a
    Common.checkMemory modelPath o device (Flag.tryGet Flags.memoryBudget a) |> ignore
    use model = ModelLoader.Load(modelPath, Option.toObj (Flag.tryGet Flags.tokenizer a), device, Common.dtype o.Precision)
    let runner =
        ContinualRunner(
            Model = model, Tasks = tasks, Options = o, OutputDir = Flag.get Own.output a, Metric = metric,
            ReplayPerTask = Flag.getOr Own.replay 0 a, GemMemoryPerTask = Flag.getOr Own.gem 0 a,
            TensorBoardDir = Option.toObj (Flag.tryGet Flags.tensorboard a), EvalLimit = (Flag.tryGet Own.evalLimit a |> Option.toNullable))
    let mtl = Flag.has Own.mtl a
    let r = if mtl then runner.RunMultiTask() else runner.Run()
    let names = r.Tasks |> Seq.toArray
    printfn "R[t, i] (%A; rows: after training on task t):" metric
    printfn "%-14s %s" "" (String.Join(" ", names |> Array.map (sprintf "%10s")))
    for t in 0 .. r.R.Length - 1 do
        let label = if mtl then "MTL" else names[t]
        printfn "%-14s %s" label (String.Join(" ", r.R[t] |> Array.map (fun v -> if Double.IsNaN v then sprintf "%10s" "" else sprintf "%10.4f" v)))
    printfn "OP:  %.4f" r.OP
    if not mtl then printfn "BWT: %.4f" r.BWT
    0
