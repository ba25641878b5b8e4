/// LoRA as a member of the method family: adapters trained with the base frozen, the merged HF folder, PEFT's adapter
/// files, exact resume, deterministic dropout under gradient checkpointing, GPT-NeoX, and the filter on the adapters.
module MoFO.Tests.Lora

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training
open MoFO.Checkpoints
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))
let private stories () = requireAsset DataRoot.Assets.Stories260K
let private dprTrain () = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr)

let private quiet () = ConsoleProgress.Enabled <- false

let private maxDiff (a: torch.Tensor) (b: torch.Tensor) = (a - b).abs().max().item<float32>() |> float

/// Logits of a fixed batch of token ids.
let private logitsOf (lm: CausalLM) =
    use _ = torch.no_grad()
    let ids = torch.tensor([| 1L; 400L; 300L; 25L; 77L; 9L; 130L; 2L; 1L; 44L; 200L; 301L; 5L; 6L; 90L; 12L |]).view(2L, 8L)
    lm.Logits(ids).detach()

let private loraOptions steps saveEvery =
    TrainingOptions(Method = Methods.Parse("lora", lora = LoraSpec(Rank = 4)), LearningRate = 5e-3, Steps = Nullable steps, BatchSize = 8,
                    MicroBatchSize = 4, MaxLength = 96, ShowProgress = false, Schedule = Schedule.Constant, SaveEvery = saveEvery)

[<Tests>]
let tests =
    testSequenced <| testList "Lora" [
        test "Lora.train: mofo train --method lora on DPR lowers the held-out loss; the merged folder is base + (α/r)·B·A by hand; the adapter files reload unmerged to the same logits" {
            use dir = new TempDir()
            let out = dir.File "run"
            let code, _, err =
                mofo [ "train"; "--model"; stories (); "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"; "--output"; out
                       "--method"; "lora"; "--lora-rank"; "8"; "--lr"; "5e-3"; "--steps"; "30"; "--batch-size"; "8"; "--max-len"; "96"
                       "--schedule"; "constant" ]
            Expect.equal code 0 err
            let modelDir = Path.Combine(out, "model")
            let heldOut = InstructionData.Read(requireAsset DataRoot.Assets.DprTest, DataFormat.Dpr, dprTemplate = 0) |> Seq.truncate 48 |> Seq.toArray
            let lossOf path =
                use lm = ModelLoader.Load path
                Trainer(lm, dprTrain () |> Seq.truncate 8 |> Seq.toArray, heldOut, loraOptions 1 0, dir.File (Guid.NewGuid().ToString "N")).EvalLoss()
            let before, after = lossOf (stories ()), lossOf modelDir
            Expect.isLessThan after (before - 0.05) $"held-out loss falls: base {before:F4}, LoRA-tuned (merged) {after:F4}"
            // PEFT's files and key layout
            let config = use d = JsonDocument.Parse(File.ReadAllText(Path.Combine(modelDir, "adapter_config.json"))) in d.RootElement.Clone()
            Expect.equal (config.GetProperty("peft_type").GetString()) "LORA" "peft_type"
            Expect.equal (config.GetProperty("r").GetInt32()) 8 "r"
            Expect.equal (config.GetProperty("lora_alpha").GetDouble()) 16.0 "lora_alpha defaults to 2r"
            Expect.equal (config.GetProperty("target_modules").EnumerateArray() |> Seq.map (fun e -> e.GetString()) |> Seq.toList)
                         [ "q_proj"; "k_proj"; "v_proj"; "o_proj"; "gate_proj"; "up_proj"; "down_proj" ] "the attention and MLP projections"
            let adapter = SafeTensors.Load(Path.Combine(modelDir, "adapter_model.safetensors"))
            Expect.equal adapter.Count (5 * 7 * 2) "A and B for 7 projections in each of 5 layers"
            let qa = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
            let qb = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
            Expect.equal qa.shape [| 8L; 64L |] "lora_A is [r, in]"
            Expect.equal qb.shape [| 64L; 8L |] "lora_B is [out, r]"
            // by hand, in float64: W + (α/r)·B·A for every adapted weight of the base
            use byHand = ModelLoader.Load(stories ())
            do
                use _ = torch.no_grad()
                let own = byHand.Module.StateDict()
                for KeyValue (k, a) in adapter do
                    if k.EndsWith ".lora_A.weight" then
                        let layer = k.Substring("base_model.model.".Length, k.Length - "base_model.model.".Length - ".lora_A.weight".Length)
                        let b = adapter[layer |> sprintf "base_model.model.%s.lora_B.weight"]
                        let w = own[layer + ".weight"]
                        let merged = w.``to``(torch.ScalarType.Float64) + b.``to``(torch.ScalarType.Float64).matmul(a.``to``(torch.ScalarType.Float64)) * torch.tensor(16.0 / 8.0, dtype = torch.ScalarType.Float64)
                        w.copy_(merged.``to``(torch.ScalarType.Float32)) |> ignore
            use merged = ModelLoader.Load modelDir
            let expected = logitsOf byHand
            let d = maxDiff (logitsOf merged) expected
            Expect.isLessThan d 1e-4 $"the merged folder's logits equal base + (α/r)·B·A applied by hand (largest |difference| {d:G3})"
            do
                use plain = ModelLoader.Load(stories ())
                Expect.isGreaterThan (maxDiff expected (logitsOf plain)) 1e-3 "the adapters changed the model"
            // the adapter files on the base, unmerged
            use unmerged = ModelLoader.Load(stories ())
            use adapters = LoraAdapters.Load(unmerged.Module, modelDir)
            let d2 = maxDiff (logitsOf unmerged) expected
            Expect.isLessThan d2 1e-4 $"the adapters loaded unmerged give the same logits (largest |difference| {d2:G3})"
            Expect.isTrue (unmerged.Module.ModelParameters() |> Seq.forall (fun struct (_, p) -> not p.requires_grad)) "the base is frozen while adapters are attached"
            Expect.isTrue (adapters.Parameters |> Seq.forall (fun struct (_, p) -> p.requires_grad)) "the adapters are trainable"
            // the summary: distance = ‖(α/r)·B·A‖, updated entries = the adapted weights' share of the model
            let summary = MoFO.Training.RunFolder(out).ReadSummary()
            Expect.isGreaterThan summary.Distance 0.0 "the distance counts the adapters' update"
            Expect.isTrue (summary.TouchedFraction > 0.3 && summary.TouchedFraction < 1.0) $"touched: the adapted weights' entries ({summary.TouchedFraction:F3})"
        }

        test "Lora.resume: a LoRA run interrupted and resumed ends with the same adapters and merged weights as an uninterrupted one (CPU, exact)" {
            quiet ()
            let train = dprTrain () |> Seq.truncate 64 |> Seq.toArray
            let o = loraOptions 6 2
            let full =
                use dir = new TempDir()
                use lm = ModelLoader.Load(stories ())
                Trainer(lm, train, null, o, dir.File "full").Run() |> ignore
                let w = lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq
                let a = SafeTensors.Load(Path.Combine(dir.File "full", "model", "adapter_model.safetensors")) |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq
                w, a
            use dir = new TempDir()
            let run = dir.File "killed"
            do
                use lm = ModelLoader.Load(stories ())
                let t = Trainer(lm, train, null, o, run)
                t.OnStep <- fun m -> if m.Step = 5 then failwith "simulated crash"
                throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
            Expect.isTrue (File.Exists(Path.Combine(run, "checkpoint", "adapter_model.safetensors"))) "the checkpoint holds the adapters"
            Expect.isFalse (File.Exists(Path.Combine(run, "checkpoint", "model.safetensors"))) "and not the frozen base"
            use lm = ModelLoader.Load(stories ())
            let r = Trainer(lm, train, null, o, run).Run(resume = true)
            Expect.equal r.Steps 6 "finished"
            let fullW, fullA = full
            for KeyValue (k, v) in lm.Module.StateDict() do Expect.equal (v.data<float32>().ToArray()) fullW[k] $"{k}: bit-identical merged weight"
            for KeyValue (k, v) in SafeTensors.Load(Path.Combine(run, "model", "adapter_model.safetensors")) do
                Expect.equal (v.data<float32>().ToArray()) fullA[k] $"{k}: bit-identical adapter"
        }

        test "Lora.dropout: with dropout, gradient checkpointing recomputes the same masks (equal adapters); dropout changes the run" {
            quiet ()
            let train = dprTrain () |> Seq.truncate 32 |> Seq.toArray
            let adaptersAfter (dropout: float) (checkpointing: bool) =
                use dir = new TempDir()
                use lm = ModelLoader.Load(stories ())
                let o = TrainingOptions(Method = Methods.Parse("lora", lora = LoraSpec(Rank = 4, Dropout = dropout)), LearningRate = 5e-3, Steps = Nullable 3,
                                        BatchSize = 8, MicroBatchSize = 4, MaxLength = 96, ShowProgress = false, GradientCheckpointing = checkpointing)
                Trainer(lm, train, null, o, dir.File "run").Run() |> ignore
                SafeTensors.Load(Path.Combine(dir.File "run", "model", "adapter_model.safetensors"))
            let plain, recomputed, none = adaptersAfter 0.2 false, adaptersAfter 0.2 true, adaptersAfter 0.0 false
            let worst (x: Collections.Generic.Dictionary<string, torch.Tensor>) (y: Collections.Generic.Dictionary<string, torch.Tensor>) =
                x |> Seq.map (fun kv -> maxDiff kv.Value y[kv.Key]) |> Seq.max
            Expect.isLessThan (worst plain recomputed) 1e-6 "the same adapters with and without checkpointing"
            Expect.isGreaterThan (worst plain none) 1e-5 "dropout made a difference"
        }

        test "Lora.neox and the filter: adapters on GPT-NeoX's fused projections; --lora-optimizer mofo updates α of each adapter per step" {
            use dir = new TempDir()
            let neox = dir.File "neox"
            let c = GptNeoXConfig(VocabSize = 512, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, MaxPositionEmbeddings = 128)
            RandomCheckpoint.Write(neox, c, torch.ScalarType.Float32, 3L, requireAsset DataRoot.Assets.Tok512) |> ignore
            use lm = ModelLoader.Load neox
            let before = logitsOf lm
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 2), 0L)
            Expect.equal (set.Adapters |> Seq.map (fun a -> a.Name) |> Seq.toList)
                         [ for i in 0 .. 1 do for n in [ "attention.query_key_value"; "attention.dense"; "mlp.dense_h_to_4h"; "mlp.dense_4h_to_h" ] -> $"gpt_neox.layers.{i}.{n}" ]
                         "the attention and MLP projections of each layer"
            Expect.equal (maxDiff (logitsOf lm) before) 0.0 "B = 0: a fresh adapter leaves the model unchanged"
            do
                use _ = torch.no_grad()
                for a in set.Adapters do a.B.normal_(0.0, 0.05) |> ignore
            let adapted = logitsOf lm
            let dense = set.Adapters |> Seq.sumBy (fun a -> let d = a.Delta().``to``(torch.ScalarType.Float64) in (d * d).sum().item<float>())
            Expect.floatClose { absolute = 0.0; relative = 1e-6 } (set.DeltaL2()) (sqrt dense) "the distance from r × r products equals the dense ‖(α/r)·B·A‖"
            set.Merge()
            Expect.isLessThan (maxDiff (logitsOf lm) adapted) 1e-5 "merging keeps the adapted model's logits"
            // the filter on the adapters
            let code, _, err =
                mofo [ "train"; "--model"; stories (); "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"; "--output"; dir.File "mofo-lora"
                       "--method"; "lora"; "--lora-rank"; "4"; "--lora-optimizer"; "mofo"; "--alpha"; "0.25"; "--lr"; "5e-3"; "--steps"; "3"; "--batch-size"; "8"; "--max-len"; "96" ]
            Expect.equal code 0 err
            let fractions = RunFolder.ReadMetrics(Path.Combine(dir.File "mofo-lora", "metrics.jsonl")) |> Seq.map (fun m -> m.UpdatedFraction)
            for f in fractions do Expect.floatClose { absolute = 0.01; relative = 0.0 } f 0.25 "each step updates α of the adapters' entries"
            let summary = MoFO.Training.RunFolder(dir.File "mofo-lora").ReadSummary()
            Expect.stringContains summary.Method "lora(r=4" "the method names LoRA"
            Expect.stringContains summary.Method "mofo(α=0.25)" "and the filter"
        }

        test "Lora.errors: an unknown target, LoRA flags without --method lora, L2 with LoRA and a bad adapter file are usage / checkpoint errors" {
            use dir = new TempDir()
            let run extra = mofo ([ "train"; "--model"; stories (); "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"; "--output"; dir.File (Guid.NewGuid().ToString "N"); "--steps"; "1"; "--batch-size"; "4" ] @ extra)
            let code, _, err = run [ "--method"; "lora"; "--lora-targets"; "q_proj,wq" ]
            Expect.equal code 2 err
            Expect.stringContains err "--lora-targets" "the flag is named"
            Expect.stringContains err "'wq'" "and the name that matches nothing"
            let code, _, err = run [ "--method"; "mofo"; "--lora-rank"; "4" ]
            Expect.equal code 2 err
            Expect.stringContains err "--method" "LoRA options need --method lora"
            let code, _, err = run [ "--method"; "lora"; "--l2-lambda"; "0.001" ]
            Expect.equal code 2 err
            let code, _, err = run [ "--method"; "lora"; "--lora-rank"; "0" ]
            Expect.equal code 2 err
            Expect.stringContains err "--lora-rank" "the flag is named"
            // an adapter whose shapes do not fit the model
            let bad = dir.File "bad"
            do
                use lm = ModelLoader.Load(stories ())
                use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 4), 0L)
                set.Save(bad)
            let cfg = Path.Combine(bad, "adapter_config.json")
            File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"r\": 4", "\"r\": 2"))
            use lm = ModelLoader.Load(stories ())
            let e = throwsWith<CheckpointException> (fun () -> LoraAdapters.Load(lm.Module, bad) |> ignore)
            Expect.stringContains e.Message "adapter_model.safetensors" "the file is named"
            Expect.stringContains e.Message "lora_A.weight" "and the tensor"
            Expect.isNull (LoraAdapters.Of lm.Module) "nothing stays attached after a failed load"
            Expect.isTrue (lm.Module.parameters() |> Seq.forall (fun p -> p.requires_grad)) "and the base is trainable again"
        }

        test "Lora.tree: adapters are modules in the model's tree (PEFT's base_layer / lora_A / lora_B), seen by named_modules and parameters, moved by dtype casts; the state dict keeps the HF keys; merging puts the plain layers back in place" {
            use lm = ModelLoader.Load(stories ())
            let keysBefore = lm.Module.StateDict().Keys |> Seq.toList
            let orderBefore = lm.Module.named_parameters() |> Seq.map (fun struct (n, _) -> n) |> Seq.toList
            let spec = LoraSpec(Rank = 2, Targets = [ "q_proj"; "down_proj" ])
            use set = LoraAdapters.Attach(lm.Module, spec, 0L)
            let modules = lm.Module.named_modules() |> Seq.map (fun struct (n, m) -> n, m) |> Map.ofSeq
            Expect.equal (modules["model.layers.0.self_attn.q_proj"].GetType().Name) "LoraLinear" "the target's place holds the adapter"
            Expect.equal (modules["model.layers.0.self_attn.q_proj.base_layer"].GetType().Name) "Linear" "which holds the layer"
            Expect.isTrue (modules.ContainsKey "model.layers.4.mlp.down_proj.lora_B") "and the adapter's matrices"
            Expect.isFalse (modules["model.layers.0.self_attn.k_proj"].GetType().Name = "LoraLinear") "layers that are not targets stay plain"
            let names = lm.Module.named_parameters() |> Seq.map (fun struct (n, _) -> n) |> Set.ofSeq
            Expect.isTrue (names.Contains "model.layers.0.self_attn.q_proj.lora_A.weight") "parameters() sees the adapters"
            for struct (n, _) in set.Parameters do
                Expect.isTrue (names.Contains(n.Substring "base_model.model.".Length)) $"{n}: PEFT's key is base_model.model. + the tree's name"
            Expect.equal (lm.Module.StateDict().Keys |> Seq.toList) keysBefore "the model's state dict: the HF keys, in order, adapters left out"
            // a dtype cast of the model converts the adapters with the layers (they are its submodules)
            lm.Module.``to``(torch.ScalarType.Float64) |> ignore
            Expect.isTrue (set.Parameters |> Seq.forall (fun struct (_, p) -> p.dtype = torch.ScalarType.Float64)) "the adapters were cast"
            Expect.equal (logitsOf lm).dtype torch.ScalarType.Float64 "and the forward runs in float64"
            lm.Module.``to``(torch.ScalarType.Float32) |> ignore
            set.Merge()
            let after = lm.Module.named_modules() |> Seq.map (fun struct (n, m) -> n, m) |> Map.ofSeq
            Expect.equal (after["model.layers.0.self_attn.q_proj"].GetType().Name) "Linear" "merged: the plain layer is back"
            Expect.equal (lm.Module.named_parameters() |> Seq.map (fun struct (n, _) -> n) |> Seq.toList) orderBefore "in its place: the parameters' order is the model's"
            Expect.isNull (LoraAdapters.Of lm.Module) "no adapter in the tree"
        }
    ]
