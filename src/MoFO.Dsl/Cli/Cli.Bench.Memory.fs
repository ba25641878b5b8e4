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
    | Like of model: string
    | Layers of n: int
    | Method of name: string
    | Precision of Common.PrecisionArg
    | Master_Weights
    | Gradient_Checkpointing
    | Step_In_Backward
    | Steps of n: int
    | Batch_Size of n: int
    | Max_Len of n: int
    | Output of dir: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the model: an HF folder (e.g. one written by mofo init --like tinyllama-1.1b) or a llama2.c .bin."
            | Like _ -> "instead of --model: write a seeded random checkpoint of this shape (as mofo init --like, in the --precision's dtype) to a temporary folder first."
            | Layers _ -> "with --like: another number of layers (e.g. 6)."
            | Method _ -> Common.methodUsage ()
            | Precision _ -> "fp32 (default) or bf16."
            | Master_Weights -> "bf16: float32 master weights."
            | Gradient_Checkpointing -> "recompute each decoder layer's activations in the backward pass."
            | Step_In_Backward -> "step and free each layer's gradients in the backward pass (with --gradient-checkpointing; no clipping)."
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
    let initialized =
        match a.TryGetResult Model, a.TryGetResult Like with
        | Some p, None -> None, p
        | None, Some name ->
            let c = MoFO.Models.ModelPresets.Get(name, "Like")
            let c = match a.TryGetResult Layers with Some n -> MoFO.Models.ModelPresets.WithLayers(c, n) | None -> c
            let dir = Path.Combine(Path.GetTempPath(), $"mofo-bench-model-{Guid.NewGuid():N}")
            let dtype = if a.TryGetResult Precision = Some Common.PrecisionArg.Bf16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32
            let tok = if c :? LlamaConfig then DataRoot.Require DataRoot.Assets.Llama2Tokenizer else null
            eprintfn "bench memory: writing a random %s checkpoint (%O) to %s ..." name dtype dir
            RandomCheckpoint.Write(dir, c, dtype, 0L, tok) |> ignore
            Some dir, dir
        | _ -> raise (ArgumentException "mofo bench memory: pass --model PATH or --like NAME")
    let path = snd initialized
    try
        let steps, batch, maxLen = a.GetResult(Steps, 3), a.GetResult(Batch_Size, 1), a.GetResult(Max_Len, 512)
        let o =
            TrainingOptions(Method = Common.methodSpec (a.TryGetResult Method) None None None, LearningRate = 1e-5, Steps = Nullable steps,
                            MaxGradNorm = (if a.Contains Step_In_Backward then 0.0 else Defaults.MaxGradNorm),
                            BatchSize = batch, MicroBatchSize = batch, MaxLength = maxLen, ShowProgress = false, Schedule = Schedule.Constant)
        let o = Common.withScale o TorchSharp.torch.CPU (a.TryGetResult Precision) (a.Contains Master_Weights) false (a.Contains Gradient_Checkpointing) false (a.Contains Step_In_Backward)
        o.Validate()
        let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(path, o))
        let peaks = Collections.Generic.Dictionary<string, int64>()
        let seconds = Collections.Generic.Dictionary<string, float>()
        let phaseClock = Diagnostics.Stopwatch.StartNew()
        let mutable phase = "load"
        let close () =
            let p = MemoryPlanner.PeakResident()
            peaks[phase] <- max p (match peaks.TryGetValue phase with | true, v -> v | _ -> 0L)
            seconds[phase] <- phaseClock.Elapsed.TotalSeconds + (match seconds.TryGetValue phase with | true, v -> v | _ -> 0.0)
            phaseClock.Restart()
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
            let trainSeconds = [ "forward"; "backward"; "step" ] |> List.sumBy (fun ph -> match seconds.TryGetValue ph with | true, v -> v | _ -> 0.0)
            let tokensPerSecond = float (steps * batch * maxLen) / trainSeconds
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
            let sec (ph: string) = match seconds.TryGetValue ph with | true, v -> v | _ -> 0.0
            printfn "time: load %.1f s; per step %.1f s (forward %.1f, backward %.1f, optimizer step and logging %.1f): %.1f training tokens/s; checkpoint %.1f s, final folder %.1f s; process start %s"
                loadSeconds (trainSeconds / float steps) (sec "forward" / float steps) (sec "backward" / float steps) (sec "step" / float steps)
                tokensPerSecond (sec "checkpoint") (sec "final") (MemoryPlan.Gb before)
            ignore r
            0
        finally
            if a.TryGetResult Output |> Option.isNone then try Directory.Delete(dir, true) with _ -> ()
    finally
        match fst initialized with
        | Some dir -> try Directory.Delete(dir, true) with _ -> ()
        | None -> ()
