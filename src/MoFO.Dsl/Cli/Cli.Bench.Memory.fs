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

/// `mofo bench memory`'s own flags (the shared ones are in `Flags`; the benchmark's defaults are its own).
module private Own =
    let model = Flags.model.Describe "the model: an HF folder (e.g. one written by mofo init --like tinyllama-1.1b) or a llama2.c .bin."
    let like = Flags.like.Describe "instead of --model: write a seeded random checkpoint of this shape (as mofo init --like, in the --precision's dtype) to a temporary folder first."
    let precision = Flags.precision.Describe "fp32 (default) or bf16."
    let steps = Flags.steps.Describe "training steps (default 3)."
    let batchSize = Flags.batchSize.Describe "examples per step (default 1)."
    let maxLen = Flags.maxLen.Describe "tokens per example: every example is filled to this length (default 512)."
    let output = Flags.output.Describe "the run folder (default: a temporary folder, deleted afterwards)."

type BenchMemoryArgs =
    | Model of path: string
    | Like of model: string
    | Layers of n: string
    | Method of name: string
    | Precision of name: string
    | Master_Weights
    | Gradient_Checkpointing
    | Step_In_Backward
    | Steps of n: string
    | Batch_Size of n: string
    | Max_Len of n: string
    | Output of dir: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Own.model | Like _ -> Own.like | Layers _ -> Flags.layers | Method _ -> Flags.method | Precision _ -> Own.precision
            | Master_Weights -> Flags.masterWeights | Gradient_Checkpointing -> Flags.gradientCheckpointing | Step_In_Backward -> Flags.stepInBackward
            | Steps _ -> Own.steps | Batch_Size _ -> Own.batchSize | Max_Len _ -> Own.maxLen | Output _ -> Own.output
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

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
        match Flag.tryGet Own.model a, Flag.tryGet Own.like a with
        | Some p, None -> None, p
        | None, Some name ->
            let c = MoFO.Models.ModelPresets.Get(name, "Like")
            let c = match Flag.tryGet Flags.layers a with Some n -> MoFO.Models.ModelPresets.WithLayers(c, n) | None -> c
            let dir = Path.Combine(Path.GetTempPath(), $"mofo-bench-model-{Guid.NewGuid():N}")
            let dtype = Common.dtype (Flag.getOr Own.precision Training.Precision.Float32 a)
            let tok = if c :? LlamaConfig then DataRoot.Require DataRoot.Assets.Llama2Tokenizer else null
            eprintfn "bench memory: writing a random %s checkpoint (%O) to %s ..." name dtype dir
            RandomCheckpoint.Write(dir, c, dtype, 0L, tok) |> ignore
            Some dir, dir
        | _ -> raise (ArgumentException $"mofo bench memory: pass {Own.model.Name} PATH or {Own.like.Name} NAME")
    let path = snd initialized
    try
        let steps, batch, maxLen = Flag.getOr Own.steps 3 a, Flag.getOr Own.batchSize 1 a, Flag.getOr Own.maxLen 512 a
        let stepInBackward = Flag.has Flags.stepInBackward a
        let o =
            TrainingOptions(Method = Common.methodSpec (Flag.tryGet Flags.method a) None None None, LearningRate = 1e-5, Steps = Nullable steps,
                            MaxGradNorm = (if stepInBackward then 0.0 else Defaults.MaxGradNorm),
                            BatchSize = batch, MicroBatchSize = batch, MaxLength = maxLen, ShowProgress = false, Schedule = Schedule.Constant)
        let o = Common.withScale o TorchSharp.torch.CPU (Flag.tryGet Own.precision a) (Flag.has Flags.masterWeights a) false (Flag.has Flags.gradientCheckpointing a) false stepInBackward
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
        let dir = Flag.tryGet Own.output a |> Option.defaultWith (fun () -> Path.Combine(Path.GetTempPath(), $"mofo-bench-memory-{Guid.NewGuid():N}"))
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
            if Flag.tryGet Own.output a |> Option.isNone then try Directory.Delete(dir, true) with _ -> ()
    finally
        match fst initialized with
        | Some dir -> try Directory.Delete(dir, true) with _ -> ()
        | None -> ()
