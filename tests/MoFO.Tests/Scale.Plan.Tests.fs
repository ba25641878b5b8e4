/// The memory plan of LoRA runs: the adapters' count and shapes from the config alone (Llama-2-7B by hand, the tiny
/// models against attached adapters), gradients, optimizer state, master weights and touched mask for the adapters
/// only, fit suggestions, `mofo plan --method lora`, and the plan's bytes against a tiny model trained with LoRA.
module MoFO.Tests.Scale.Plan

open System
open Expecto
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

let private bytes (t: torch.Tensor) = t.numel() * t.ElementSize

let private lora rank = Methods.Parse("lora", lora = LoraSpec(Rank = rank))

[<Tests>]
let tests =
    testSequenced <| testList "Scale.plan.lora" [
        test "Scale.plan.lora.7b: Llama-2-7B with LoRA r=16 trains r·(in+out) per projection, 39,976,960 entries; its plan is the frozen base and little more, far below full fine-tuning's" {
            let c = ModelPresets.Llama2_7B
            // by hand, from the config: q/o are hidden ↔ heads·head_dim, k/v hidden → kv_heads·head_dim, the MLP hidden ↔ intermediate
            let r = 16L
            let h, i = int64 c.HiddenSize, int64 c.IntermediateSize
            let q, kv = int64 c.NumAttentionHeads * int64 c.HeadDim, int64 c.NumKeyValueHeads * int64 c.HeadDim
            let perLayer = r * ((h + q) + (h + kv) + (h + kv) + (q + h) + (h + i) + (h + i) + (i + h))
            let byHand = perLayer * int64 c.NumHiddenLayers
            Expect.equal byHand 39_976_960L "16·(4·8192 + 3·15104) = 1,249,280 per layer, × 32 layers"
            let input m = PlanInput(c, m, Precision.BFloat16, 1, 512, true)
            let full = MemoryPlanner.Plan(input (Methods.Parse "adamw"))
            let lr = MemoryPlanner.Plan(input (lora 16))
            Expect.equal lr.Adapters byHand "the plan's adapter count"
            Expect.equal lr.Trained byHand "LoRA trains the adapters alone"
            Expect.equal full.Trained full.Parameters "full fine-tuning trains every parameter"
            Expect.equal full.Adapters 0L "no adapters without LoRA"
            Expect.equal lr.Parameters full.Parameters "the base is the same model"
            Expect.equal (MemoryPlanner.AdapterShapes(c, LoraSpec(Rank = 16)).Count) (2 * 7 * 32) "A and B for 7 projections × 32 layers"
            // the parts: the base's weights frozen; adapters, their gradients and two float32 moments each
            Expect.equal (lr.Part "weights") (full.Part "weights") "the frozen base is resident as before"
            Expect.equal (lr.Part "adapters") (2L * byHand) "bfloat16 adapters"
            Expect.equal (lr.Part "gradients") (2L * byHand) "gradients of the adapters only"
            Expect.equal (lr.Part "optimizer state") (8L * byHand) "AdamW's two float32 moments of the adapters only"
            Expect.equal (full.Part "adapters") 0L "no adapters part without LoRA"
            Expect.equal (lr.Part "activations" - full.Part "activations") (int64 (512.0 * 7.0 * 16.0 * 2.0)) "activations: the one recomputed layer's 7 [T, r] intermediates more"
            let withMaster = MemoryPlanner.Plan(PlanInput(c, lora 16, Precision.BFloat16, 1, 512, true, MasterWeights = true, TrackTouched = true))
            // the touched mask: a bit per adapter entry, ⌈n/8⌉ bytes per tensor (r = 16: every adapter a multiple of 8 entries)
            let packed = MemoryPlanner.AdapterShapes(c, LoraSpec(Rank = 16)) |> Seq.sumBy (fun struct (_, s) -> (Array.fold (*) 1L s + 7L) / 8L)
            Expect.equal packed (byHand / 8L) "an eighth of a byte per adapter entry"
            Expect.equal (withMaster.Part "optimizer state") (8L * byHand + 4L * byHand + packed) "float32 masters and touched bits of the adapters only"
            let mofoLora = MemoryPlanner.Plan(input (Methods.Parse("lora", lora = LoraSpec(Rank = 16), loraMember = "mofo")))
            Expect.isGreaterThanOrEqual (mofoLora.Part "optimizer state") (8L * byHand) "MoFO on the adapters: their moments"
            Expect.isLessThan (mofoLora.Part "optimizer state") (9L * byHand) "and the filter's buffers for the largest adapter, not the largest weight"
            // the totals (bf16, checkpointing, 1 × 512 tokens): full fine-tuning 84.37 GB, LoRA 15.39 GB (the frozen bfloat16
            // base is 13.48 GB of it): 5.48× less; gradients, state and trained weights 67.39 GB vs 0.48 GB, 140× less
            let ratio = float full.Peak / float lr.Peak
            Expect.isGreaterThan ratio 5.0 $"full fine-tuning {MemoryPlan.Gb full.Peak} vs LoRA {MemoryPlan.Gb lr.Peak}: {ratio:F2}×"
            Expect.isLessThan lr.Peak (full.Part "weights" * 6L / 5L) "LoRA's peak: the frozen weights and at most a fifth more"
            let trainedState (p: MemoryPlan) = p.Part "adapters" + p.Part "gradients" + p.Part "optimizer state"
            Expect.isGreaterThan (float (trainedState full) / float (trainedState lr)) 100.0
                $"gradients and optimizer state: {MemoryPlan.Gb (trainedState full)} vs {MemoryPlan.Gb (trainedState lr)}"
            // the same in float32 without checkpointing and a micro-batch of 16 (the CLI's defaults): activations dominate both
            let full32 = MemoryPlanner.Plan(PlanInput(c, Methods.Parse "adamw", Precision.Float32, 16, 512, false))
            let lora32 = MemoryPlanner.Plan(PlanInput(c, lora 16, Precision.Float32, 16, 512, false))
            Expect.isLessThan (full32.Peak - lora32.Peak) (full32.Part "gradients" + full32.Part "optimizer state" + (5L <<< 30))
                "LoRA saves the base's gradients and state (and the head's backward), no more"
            Expect.isGreaterThan (full32.Peak - lora32.Peak) (full32.Part "gradients" + full32.Part "optimizer state" - (1L <<< 30))
                "and all of them"
        }

        test "Scale.plan.lora.shapes: the planned adapters are the ones LoRA attaches (names, shapes), for Llama and GPT-NeoX, default and chosen targets" {
            let cases : (ModelConfig * string list) list =
                [ tinyLlama true, []; tinyLlama false, [ "q_proj"; "v_proj"; "lm_head" ]
                  LlamaConfig(VocabSize = 64, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4,
                              NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, AttentionBias = true, MlpBias = true), [ "down_proj" ]
                  tinyNeoX true, []; tinyNeoX false, [ "dense"; "embed_out" ] ]
            for c, targets in cases do
                let spec = LoraSpec(Rank = 3, Targets = targets)
                use m = ModelLoader.Create c
                use set = LoraAdapters.Attach(m, spec, 0L)
                let actual = set.Parameters |> Seq.map (fun struct (n, p) -> n, p.shape) |> Seq.toList
                let planned = MemoryPlanner.AdapterShapes(c, spec) |> Seq.map (fun struct (n, s) -> n, s) |> Seq.toList
                Expect.equal (planned |> List.map fst |> List.sort) (actual |> List.map fst |> List.sort) $"{c.ModelType} {targets}: the same tensors"
                let actualMap = Map.ofList actual
                for n, s in planned do Expect.equal s actualMap[n] $"{n}: shape"
                let plan = MemoryPlanner.Plan(PlanInput(c, Methods.Parse("lora", lora = spec), Precision.Float32, 1, 16, false))
                Expect.equal plan.Adapters (set.Parameters |> Seq.sumBy (fun struct (_, p) -> p.numel())) "the plan's count"
            let e = throwsWith<OptionException> (fun () -> MemoryPlanner.AdapterShapes(tinyLlama true, LoraSpec(Targets = [ "query_key_value" ])) |> ignore)
            Expect.equal e.Field "LoraTargets" "a target the model lacks: the field of training's error"
            Expect.stringContains e.Message "q_proj" "names the model's linear layers"
        }

        test "Scale.plan.lora.fit: the fit suggestions of a LoRA run change precision, checkpointing or batch, never the step in the backward; when the frozen base alone is too large, more ranks are not suggested" {
            let c = ModelPresets.Llama2_7B
            let x = PlanInput(c, lora 16, Precision.Float32, 16, 512, false, TrackTouched = true)
            let e = throwsWith<MemoryPlanException> (fun () -> MemoryPlanner.Check(x, 24L <<< 30) |> ignore)
            let fields = e.Fit |> Seq.map (fun struct (f, _) -> f) |> Set.ofSeq
            Expect.isNonEmpty fields $"a setting fits: {e.Message}"
            Expect.isFalse (fields.Contains "StepInBackward") "the step in the backward frees nothing of a LoRA run"
            Expect.contains fields "Precision" "the float32 base alone (27 GB) needs bf16"
            Expect.stringContains e.Message "adapters" "the need names the adapters"
            let e2 = throwsWith<MemoryPlanException> (fun () -> MemoryPlanner.Check(x, 12L <<< 30) |> ignore)
            Expect.isEmpty e2.Fit "below the bfloat16 base (13.5 GB) nothing fits"
            Expect.stringContains e2.Message "frozen base weights" "says why more ranks do not help"
            Expect.isFalse (e2.Message.Contains "mpirun") "and does not suggest them"
        }

        test "Scale.plan.lora.cli: mofo plan --like llama-2-7b --method lora --lora-rank 16 prints the adapters and their state; LoRA flags are checked as in train" {
            let code, out, err =
                mofo [ "plan"; "--like"; "llama-2-7b"; "--method"; "lora"; "--lora-rank"; "16"; "--precision"; "bf16"; "--gradient-checkpointing"
                       "--batch-size"; "1"; "--memory"; "80GB" ]
            Expect.equal code 0 $"fits; {err}"
            Expect.stringContains out "39,976,960" "the adapter count"
            Expect.stringContains out "lora(r=16, α=32)" "the method"
            Expect.stringContains out "adapters" "the adapters' part"
            Expect.stringContains out "per adapter entry" "gradients and state of the adapters"
            let code2, out2, _ =
                mofo [ "plan"; "--like"; "llama-2-7b"; "--method"; "lora"; "--lora-rank"; "8"; "--lora-targets"; "q_proj,v_proj"; "--lora-optimizer"; "mofo"; "--memory"; "1000GB" ]
            Expect.equal code2 0 "chosen targets and member"
            Expect.stringContains out2 (String.Format("{0:N0}", 8L * (4096L + 4096L) * 2L * 32L)) "q and v only: 8·8192·2·32 entries"
            Expect.stringContains out2 "(mofo)" "the adapters' member"
            let code3, _, err3 = mofo [ "plan"; "--like"; "llama-2-7b"; "--method"; "lora"; "--lora-targets"; "nope"; "--memory"; "80GB" ]
            Expect.equal code3 2 "an unknown target is a usage error"
            Expect.stringContains err3 "--lora-targets" "named by its flag"
            let code4, _, err4 = mofo [ "plan"; "--like"; "llama-2-7b"; "--method"; "adamw"; "--lora-rank"; "8"; "--memory"; "80GB" ]
            Expect.equal code4 2 $"LoRA flags need --method lora; {err4}"
        }

        test "Scale.plan.lora.measured: stories260K trained two steps with LoRA holds exactly the plan's weights, adapters, gradients and optimizer state (fp32 with touched bits; bf16 with master weights)" {
            ConsoleProgress.Enabled <- false
            let path = requireAsset DataRoot.Assets.Stories260K
            let cases =
                [ Precision.Float32, MoFO.Optim.BFloat16Update.StochasticRounding, Nullable()          // touched: auto (adapters < 100M: on)
                  Precision.BFloat16, MoFO.Optim.BFloat16Update.MasterWeights, Nullable false ]
            for precision, update, track in cases do
                let dtype = if precision = Precision.BFloat16 then torch.ScalarType.BFloat16 else torch.ScalarType.Float32
                use lm = ModelLoader.Load(path, null, torch.CPU, dtype)
                let o = TrainingOptions(Method = lora 4, LearningRate = 1e-3, Steps = Nullable 2, BatchSize = 2, MaxLength = 32,
                                        ShowProgress = false, Schedule = Schedule.Constant).WithScale(precision, update, false, track)
                let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(path, o))
                use trained = TrainedSet.Attach(lm, o.Method, o.Seed)
                let struct (opt, _) = Methods.Create(trained, o)
                use opt = opt
                let set = LoraAdapters.Of lm.Module
                lm.Module.train()
                let ids = torch.tensor([| 1L; 400L; 300L; 25L; 77L; 9L; 130L; 2L; 1L; 44L; 200L; 301L; 5L; 6L; 90L; 12L |]).view(2L, 8L)
                let losses =
                    [ for _ in 1 .. 2 do
                        opt.zero_grad()
                        use scope = torch.NewDisposeScope()
                        let logits = lm.Logits ids
                        let v, t = logits.shape[2], logits.shape[1]
                        let predicted = logits.narrow(1, 0L, t - 1L).reshape(-1L, v).``to``(torch.ScalarType.Float32)
                        let loss = torch.nn.functional.cross_entropy(predicted, ids.narrow(1, 1L, t - 1L).reshape(-1L))
                        loss.backward()
                        opt.step()
                        yield loss.item<float32>() ]
                Expect.isTrue (losses |> List.forall Single.IsFinite) $"{precision}: finite losses {losses}"
                let name = $"{precision}"
                // weights: the base, frozen, without gradients
                let baseParams = lm.Module.ModelParameters() |> Seq.map (fun struct (_, p) -> p) |> Seq.toList
                Expect.equal (baseParams |> List.sumBy bytes) (plan.Part "weights") $"{name}: the base weights"
                Expect.isTrue (baseParams |> List.forall (fun p -> not p.requires_grad && isNull p.grad)) $"{name}: the base takes no gradient"
                // adapters and their gradients
                let adapters = set.Parameters |> Seq.map (fun struct (_, p) -> p) |> Seq.toList
                Expect.equal (adapters |> List.sumBy (fun p -> p.numel())) plan.Adapters $"{name}: the adapter count"
                Expect.equal (adapters |> List.sumBy bytes) (plan.Part "adapters") $"{name}: the adapters' bytes"
                Expect.equal (adapters |> List.sumBy (fun p -> bytes p.grad)) (plan.Part "gradients") $"{name}: the adapters' gradients"
                // the optimizer's state: its blocks are the adapters; moments, masters and touched bits
                Expect.equal opt.Blocks.Count adapters.Length $"{name}: one block per adapter tensor"
                Expect.isTrue (opt.Blocks |> Seq.forall (fun b -> b.Step = 2L)) $"{name}: every adapter stepped twice"
                let moments = opt.Blocks |> Seq.sumBy (fun b -> b.Moments |> Seq.sumBy bytes)
                let masters = opt.Blocks |> Seq.sumBy (fun b -> if isNull b.Master then 0L else bytes b.Master)
                let touched = opt.Blocks |> Seq.sumBy (fun b -> if isNull b.Touched then 0L else bytes b.Touched)
                Expect.equal moments (8L * plan.Adapters) $"{name}: two float32 moments per adapter entry"
                Expect.equal (moments + masters + touched) (plan.Part "optimizer state") $"{name}: moments {moments}, masters {masters}, touched {touched}"
                if precision = Precision.BFloat16 then Expect.equal masters (4L * plan.Adapters) "float32 masters of the adapters"
                else Expect.equal touched (adapters |> List.sumBy (fun p -> (p.numel() + 7L) / 8L)) "a touched bit per adapter entry, ⌈n/8⌉ bytes per tensor (auto: the adapters are a small model)"
        }
    ]
