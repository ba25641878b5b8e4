/// Training at scale: the memory plan (shapes, components, refusal with the out-of-memory exit code, a measured peak), the
/// step in the backward pass, bfloat16 runs resumed exactly.
module MoFO.Tests.Scale.Training

open System
open System.IO
open Expecto
open MoFO
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

/// A bfloat16 MoFO run of 6 steps (checkpoints every 2) on DPR, killed at step 5 and resumed: `inspect` sees the run
/// folder after the crash; returns the uninterrupted and the resumed weights.
let private crashAndResume (o: TrainingOptions) (inspect: string -> unit) =
    ConsoleProgress.Enabled <- false
    let train = MoFO.Data.InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, MoFO.Data.DataFormat.Dpr) |> Seq.truncate 48 |> Seq.toArray
    let load () = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K, null, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.BFloat16)
    let weights (lm: CausalLM) = lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.``to``(TorchSharp.torch.ScalarType.Float32).data<float32>().ToArray()) |> Map.ofSeq
    use full = new TempDir()
    let reference =
        use lm = load ()
        Trainer(lm, train, null, o, full.Path).Run() |> ignore
        weights lm
    use dir = new TempDir()
    let crash () =
        use lm = load ()
        let t = Trainer(lm, train, null, o, dir.Path)
        t.OnStep <- fun m -> if m.Step = 5 then failwith "simulated crash"
        throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
    crash ()
    inspect dir.Path
    use lm = load ()
    let r = Trainer(lm, train, null, o, dir.Path).Run(resume = true)
    Expect.equal r.Steps 6 "finished"
    Expect.equal (ModelConfig.Load(Path.Combine(dir.Path, "model", "config.json"))).TorchDtype "bfloat16" "the final folder is bfloat16"
    reference, weights lm

/// The options of `crashAndResume`'s run.
let private resumeOptions (update: MoFO.Optim.BFloat16Update) (storage: MoFO.Optim.MomentStorage) =
    TrainingOptions(Method = Methods.Parse "mofo", LearningRate = 1e-3, Steps = Nullable 6, BatchSize = 8, MicroBatchSize = 4,
                    MaxLength = 96, SaveEvery = 2, ShowProgress = false, OptimizerState = storage)
        .WithScale(Precision.BFloat16, update, true, Nullable())

[<Tests>]
let tests =
    testSequenced <| testList "Scale.plan" [
        test "Scale.plan.shapes: the planned parameter shapes are the modules' own, for Llama and GPT-NeoX variants" {
            let configs : ModelConfig list =
                [ tinyLlama true; tinyLlama false
                  LlamaConfig(VocabSize = 64, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4,
                              NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, AttentionBias = true, MlpBias = true)
                  tinyNeoX true; tinyNeoX false ]
            for c in configs do
                use m = ModelLoader.Create c
                let actual = m.named_parameters() |> Seq.map (fun struct (n, p) -> n, p.shape) |> Map.ofSeq
                let planned = MemoryPlanner.ParameterShapes c |> Seq.map (fun struct (n, s) -> n, s) |> Map.ofSeq
                Expect.equal (planned |> Map.toList |> List.map fst) (actual |> Map.toList |> List.map fst) $"{c.ModelType}: the same tensors"
                for KeyValue (n, s) in actual do Expect.equal planned[n] s $"{n}: shape"
        }

        test "Scale.plan.components: counts of TinyLlama-1.1B; bf16 halves weights and gradients, checkpointing shrinks activations, moments stay float32" {
            let tl =
                LlamaConfig(VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22, NumAttentionHeads = 32,
                            NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5)
            let input p ck = PlanInput(tl, Methods.Parse "mofo", p, 1, 512, ck)
            let fp32 = MemoryPlanner.Plan(input Precision.Float32 false)
            let bf16 = MemoryPlanner.Plan(input Precision.BFloat16 true)
            Expect.equal fp32.Parameters 1_100_048_384L "TinyLlama-1.1B's parameter count"
            Expect.equal (fp32.Part "weights") (4L * fp32.Parameters) "float32 weights"
            Expect.equal (bf16.Part "weights") (2L * bf16.Parameters) "bfloat16 weights"
            Expect.equal (bf16.Part "gradients") (2L * bf16.Parameters) "bfloat16 gradients"
            Expect.isGreaterThanOrEqual (bf16.Part "optimizer state") (8L * bf16.Parameters) "two float32 moments"
            Expect.isLessThan (bf16.Part "activations") (fp32.Part "activations" / 4L) "checkpointed bf16 activations"
            let lion = MemoryPlanner.Plan(PlanInput(tl, Methods.Parse "lion", Precision.Float32, 1, 512, false))
            Expect.equal (lion.Part "optimizer state") (4L * lion.Parameters) "Lion keeps one moment"
            let l2 = MemoryPlanner.Plan(PlanInput(tl, Methods.Parse "l2", Precision.Float32, 1, 512, false))
            Expect.equal (l2.Part "θ0 for loss terms") (4L * l2.Parameters) "L2 keeps a copy of θ0"
        }

        test "Scale.plan.config: a llama2.c header and an HF config.json give the model's shape without reading weights" {
            let c = MemoryPlanner.ConfigOf(requireAsset DataRoot.Assets.Stories260K)
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            let n = lm.Module.parameters() |> Seq.sumBy (fun p -> p.numel())
            let planned = MemoryPlanner.ParameterShapes c |> Seq.sumBy (fun struct (_, s) -> Array.fold (*) 1L s)
            Expect.equal planned n "stories260K's parameter count from its header"
            use dir = new TempDir()
            (tinyLlama false).Save(dir.File "config.json")
            Expect.equal (MemoryPlanner.ConfigOf dir.Path).HiddenSize 32 "config.json"
            let e = throwsWith<MissingAssetException> (fun () -> MemoryPlanner.ConfigOf(dir.File "nope.bin") |> ignore)
            Expect.stringContains e.Message "nope.bin" "a missing model names the path"
        }

        test "Scale.plan.refuse: a run whose plan exceeds the budget is refused before loading, with exit code 7, the need, the budget and settings that fit" {
            use dir = new TempDir()
            let cfg =
                LlamaConfig(VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22, NumAttentionHeads = 32,
                            NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5)
            cfg.Save(dir.File "config.json")     // a config alone: a refused run must not get as far as the (absent) weights
            let data = dir.File "d.jsonl"
            File.WriteAllText(data, "{\"prompt\":\"p\",\"completion\":\"c\"}\n")
            let out = dir.File "run"
            let code, _, err = mofo [ "train"; "--model"; dir.Path; "--data"; data; "--format"; "jsonl"; "--output"; out; "--batch-size"; "1"; "--max-len"; "512"; "--memory-budget"; "16GiB" ]
            Expect.equal code (int MoFO.Dsl.ExitCode.OutOfMemory) $"out of memory; {err}"
            Expect.stringContains err "needs" "names the need"
            Expect.stringContains err "17.18 GB is available" "names the budget"
            Expect.stringContains err "--precision bf16" "names settings that fit"
            Expect.isFalse (Directory.Exists out) "nothing written"
            let code2, out2, err2 = mofo [ "plan"; "--model"; dir.Path; "--batch-size"; "1"; "--max-len"; "512"; "--precision"; "bf16"; "--gradient-checkpointing"; "--memory"; "16GiB" ]
            Expect.equal code2 0 $"fits; {err2}"
            Expect.stringContains out2 "optimizer state" "prints the components"
            let code3, _, err3 = mofo [ "plan"; "--model"; dir.Path; "--memory"; "1GB" ]
            Expect.equal code3 7 "does not fit"
            Expect.stringContains err3 "no setting" "and nothing would"
        }
    
        test "Scale.plan.measured: the plan of a small model (hidden 512, 2 layers, 32K vocabulary, bf16, checkpointing) is within 15 % of its measured peak" {
            use dir = new TempDir()
            let c = LlamaConfig(VocabSize = 32000, HiddenSize = 512, IntermediateSize = 1408, NumHiddenLayers = 2, NumAttentionHeads = 8,
                                NumKeyValueHeads = 2, MaxPositionEmbeddings = 1024, RmsNormEps = 1e-5)
            RandomCheckpoint.Write(dir.Path, c, TorchSharp.torch.ScalarType.BFloat16, 0L, requireAsset DataRoot.Assets.Llama2Tokenizer) |> ignore
            // a process of its own, so that its peak resident memory is the run's alone
            let dll = typeof<MoFO.Dsl.Cli.Main.MofoArgs>.Assembly.Location
            let code, out, err =
                runProcess "dotnet" [ dll; "bench"; "memory"; "--model"; dir.Path; "--precision"; "bf16"; "--gradient-checkpointing"; "--steps"; "2"
                                      "--batch-size"; "1"; "--max-len"; "256" ] repoRoot (TimeSpan.FromMinutes 5.0)
            Expect.equal code 0 $"bench memory; {err}"
            let line = out.Split('\n') |> Array.find (fun l -> l.TrimStart().StartsWith "overall")
            let ratio = Text.RegularExpressions.Regex.Match(line, @"plan / measured = ([0-9.]+)").Groups[1].Value |> float
            Expect.isGreaterThanOrEqual ratio 0.85 $"the plan is not more than 15 %% low: {line.Trim()}"
            Expect.isLessThanOrEqual ratio 1.15 $"the plan is not more than 15 %% high: {line.Trim()}"
        }

        test "Scale.plan.peak: the process's peak resident memory is read, and grows with an allocation" {
            Expect.isGreaterThan (MemoryPlanner.PeakResident()) (50L <<< 20) "a .NET process with libtorch has more than 50 MB resident"
            // the peak so far may lie far above the resident size now (earlier tests); the mark is reset to the resident size
            GC.Collect()
            if not (MemoryPlanner.ResetPeak()) then skiptest "this kernel does not let /proc/self/clear_refs reset the peak"
            let floor = MemoryPlanner.Resident()
            Expect.isLessThan (MemoryPlanner.PeakResident()) (floor + (100L <<< 20)) "after the reset the peak is the resident size"
            let block = Array.zeroCreate<byte> (300 <<< 20)
            for i in 0 .. 4096 .. block.Length - 1 do block[i] <- 1uy
            Expect.isGreaterThanOrEqual (MemoryPlanner.PeakResident()) (floor + (250L <<< 20)) "the peak follows a 300 MB allocation"
            GC.KeepAlive block
            Expect.isGreaterThan (MemoryPlanner.Available()) 0L "available memory is read"
        }

        test "Scale.plan.distance: a slice read inside a dispose scope leaves the file usable (its staging buffer is not the scope's)" {
            use dir = new TempDir()
            let t = TorchSharp.torch.arange(0.0, 1000.0, 1.0).``to``(TorchSharp.torch.ScalarType.BFloat16)
            MoFO.Checkpoints.SafeTensors.Save(dir.File "t.safetensors", (readOnlyDict [ "x", t ]))
            use f = MoFO.Checkpoints.SafeTensorFile.Open(dir.File "t.safetensors")
            for i in 0 .. 2 do
                use scope = TorchSharp.torch.NewDisposeScope()
                let s = f.ReadSlice("x", int64 (i * 10), 10L, TorchSharp.torch.ScalarType.Float32)
                Expect.equal (s.sum().item<float32>()) (float32 (List.sum [ for k in i * 10 .. i * 10 + 9 -> k ])) $"slice {i}"
        }

        test "Scale.stepInBackward: stepping each layer's tensors in the backward pass gives the weights of the plain step, bit for bit, and frees the gradients" {
            ConsoleProgress.Enabled <- false
            let train = MoFO.Data.InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, MoFO.Data.DataFormat.Dpr) |> Seq.truncate 24 |> Seq.toArray
            for name in [ "mofo"; "adamw"; "lion" ] do
                let run (sib: bool) (precision: Precision) =
                    use dir = new TempDir()
                    use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K, null, TorchSharp.torch.CPU,
                                              (if precision = Precision.BFloat16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32))
                    let o = TrainingOptions(Method = Methods.Parse name, LearningRate = 1e-3, Steps = Nullable 3, BatchSize = 8, MaxLength = 96,
                                            MaxGradNorm = 0.0, ShowProgress = false, Schedule = Schedule.Constant)
                    let o = o.WithScale(precision, MoFO.Optim.BFloat16Update.StochasticRounding, true, Nullable(), sib)
                    let t = Trainer(lm, train, null, o, dir.Path)
                    let r = t.Run()
                    let grads = lm.Module.parameters() |> Seq.filter (fun p -> not (isNull p.grad)) |> Seq.length
                    r, (lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.``to``(TorchSharp.torch.ScalarType.Float32).data<float32>().ToArray()) |> Map.ofSeq), grads
                for precision in [ Precision.Float32; Precision.BFloat16 ] do
                    let r0, w0, _ = run false precision
                    let r1, w1, g1 = run true precision
                    Expect.equal r1.Steps 3 "three steps"
                    Expect.equal g1 0 $"{name} {precision}: no gradient left after the steps"
                    Expect.floatClose Accuracy.veryHigh r1.FinalLoss.Value r0.FinalLoss.Value $"{name} {precision}: the same loss"
                    for KeyValue (k, v) in w0 do Expect.equal w1[k] v $"{name} {precision}: {k} bit-identical"
            let e = throwsWith<OptionException> (fun () -> TrainingOptions(StepInBackward = true, GradientCheckpointing = true).Validate())
            Expect.stringContains e.Message "MaxGradNorm" "clipping must be off"
        }

        test "Scale.resume.bf16: a bfloat16 run (stochastic rounding, and master weights) killed mid-way and resumed from its streamed checkpoint ends bit-identical to an uninterrupted one" {
            for update in [ MoFO.Optim.BFloat16Update.StochasticRounding; MoFO.Optim.BFloat16Update.MasterWeights ] do
                let reference, resumed = crashAndResume (resumeOptions update MoFO.Optim.MomentStorage.Float32) ignore
                for KeyValue (k, v) in reference do Expect.equal resumed[k] v $"{update}: {k} bit-identical"
        }

        test "Scale.resume.8bit: a bf16 run with 8-bit optimizer states killed mid-way resumes from its checkpoint (codes and scales) bit-identical to an uninterrupted one; resuming with float32 states is refused in one line" {
            let o = resumeOptions MoFO.Optim.BFloat16Update.StochasticRounding MoFO.Optim.MomentStorage.Blockwise8Bit
            let inspect (dir: string) =
                let saved = MoFO.Checkpoints.SafeTensors.Load(Path.Combine(dir, "checkpoint", "optimizer.safetensors"))
                Expect.isTrue (saved.Keys |> Seq.exists (fun k -> k.EndsWith ".moment1.codes")) "the checkpoint holds 8-bit codes"
                Expect.isFalse (saved.Keys |> Seq.exists (fun k -> k.EndsWith ".moment0")) "and no float32 moments"
                for t in saved.Values do t.Dispose()
                let train = MoFO.Data.InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, MoFO.Data.DataFormat.Dpr) |> Seq.truncate 48 |> Seq.toArray
                use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K, null, TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.BFloat16)
                let e = throwsWith<RunFolderException> (fun () -> Trainer(lm, train, null, o.WithOptimizerState(MoFO.Optim.MomentStorage.Float32), dir).Run(resume = true) |> ignore)
                Expect.stringContains e.Message "other settings" "another storage is refused"
            let reference, resumed = crashAndResume o inspect
            for KeyValue (k, v) in reference do Expect.equal resumed[k] v $"8-bit: {k} bit-identical"
        }
]