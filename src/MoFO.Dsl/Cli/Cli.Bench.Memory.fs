/// `mofo bench memory`: a few fine-tuning steps of a model, with the peak resident memory of each phase (load, forward,
/// backward, step, checkpoint, final folder) measured beside the memory plan's prediction.
module MoFO.Dsl.Cli.Bench.Memory

open System
open System.IO
open Argu
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training
open MoFO.Dsl.Cli

type BenchMemoryArgs =
    | Model of path: string
    | Method of name: string
    | Precision of Common.PrecisionArg
    | Master_Weights
    | Gradient_Checkpointing
    | Steps of n: int
    | Batch_Size of n: int
    | Max_Len of n: int
    | Output of dir: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the model: an HF folder (e.g. one written by mofo init --like tinyllama-1.1b) or a llama2.c .bin."
            | Method _ -> Common.methodUsage ()
            | Precision _ -> "fp32 (default) or bf16."
            | Master_Weights -> "bf16: float32 master weights."
            | Gradient_Checkpointing -> "recompute each decoder layer's activations in the backward pass."
            | Steps _ -> "training steps (default 3)."
            | Batch_Size _ -> "examples per step (default 1)."
            | Max_Len _ -> "tokens per example: every example is filled to this length (default 512)."
            | Output _ -> "the run folder (default: a temporary folder, deleted afterwards)."

/// Examples of exactly `tokens` tokens: real text (the DPR training sentences, repeated) as the completion.
let private examples (tokenizer: MoFO.Tokenization.ITextTokenizer) (tokens: int) (n: int) =
    let text =
        let dpr = DataRoot.Assets.DprTrain
        let words =
            if dpr.Present then File.ReadAllText dpr.FullPath
            else String.replicate 200 "Once upon a time there was a little girl who liked to read books in the park. "
        let mutable t = words
        while tokenizer.Encode(t, false).Count < tokens + 8 do t <- t + " " + words
        t
    [ for i in 0 .. n - 1 -> TrainingExample.PromptCompletion("", text.Substring(i * 7 % 100), "bench") ]

let run (a: ParseResults<BenchMemoryArgs>) =
    let path = a.TryGetResult Model |> Option.defaultWith (fun () -> raise (ArgumentException "mofo bench memory: pass --model PATH (e.g. a folder from mofo init --like tinyllama-1.1b)"))
    let steps, batch, maxLen = a.GetResult(Steps, 3), a.GetResult(Batch_Size, 1), a.GetResult(Max_Len, 512)
    let o =
        TrainingOptions(Method = Common.methodSpec (a.TryGetResult Method) None None None, LearningRate = 1e-5, Steps = Nullable steps,
                        BatchSize = batch, MicroBatchSize = batch, MaxLength = maxLen, ShowProgress = false, Schedule = Schedule.Constant)
    let o = Common.withScale o TorchSharp.torch.CPU (a.TryGetResult Precision) (a.Contains Master_Weights) false (a.Contains Gradient_Checkpointing) false
    o.Validate()
    let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(path, o))
    let peaks = Collections.Generic.Dictionary<string, int64>()
    let mutable phase = "load"
    let close () =
        let p = MemoryPlanner.PeakResident()
        peaks[phase] <- max p (match peaks.TryGetValue phase with | true, v -> v | _ -> 0L)
    let enter (next: string) =
        close ()
        MemoryPlanner.ResetPeak() |> ignore
        phase <- next
    MemoryPlanner.ResetPeak() |> ignore
    let before = MemoryPlanner.PeakResident()
    let clock = Diagnostics.Stopwatch.StartNew()
    use model = ModelLoader.Load(path, null, TorchSharp.torch.CPU, Common.dtype o.Precision)
    let loadSeconds = clock.Elapsed.TotalSeconds
    let dir = a.TryGetResult Output |> Option.defaultWith (fun () -> Path.Combine(Path.GetTempPath(), $"mofo-bench-memory-{Guid.NewGuid():N}"))
    try
        let trainer = Trainer(model, examples model.Tokenizer maxLen (batch * steps), null, o, dir)
        trainer.OnPhase <- Action<string>(enter)
        enter "forward"
        let stepClock = Diagnostics.Stopwatch.StartNew()
        let r = trainer.Run()
        close ()
        let tokensPerSecond = float (steps * batch * maxLen) / stepClock.Elapsed.TotalSeconds
        printfn "memory benchmark: %s (%s parameters), %O, %s, %d steps of %d × %d tokens%s" path (plan.Parameters.ToString("N0")) o.Precision
            (string o.Method) steps batch maxLen (if o.GradientCheckpointing then ", gradient checkpointing" else "")
        printfn "  %-12s %14s %14s" "phase" "measured peak" "planned peak"
        let planned (ph: string) =
            match ph with
            | "load" -> MemoryPlan.Gb plan.LoadPeak
            | "checkpoint" | "final" -> MemoryPlan.Gb plan.CheckpointPeak
            | _ -> MemoryPlan.Gb plan.StepPeak
        for ph in [ "load"; "forward"; "backward"; "step"; "checkpoint"; "final" ] do
            match peaks.TryGetValue ph with
            | true, v -> printfn "  %-12s %14s %14s" ph (MemoryPlan.Gb v) (planned ph)
            | _ -> ()
        let measured = peaks.Values |> Seq.max
        printfn "  %-12s %14s %14s  (plan / measured = %.2f)" "overall" (MemoryPlan.Gb measured) (MemoryPlan.Gb plan.Peak) (float plan.Peak / float measured)
        printfn "load %.1f s; %.1f training tokens/s (%.1f s per step, including the checkpoint and the final folder); process start %s"
            loadSeconds tokensPerSecond (stepClock.Elapsed.TotalSeconds / float steps) (MemoryPlan.Gb before)
        ignore r
        0
    finally
        if a.TryGetResult Output |> Option.isNone then try Directory.Delete(dir, true) with _ -> ()
