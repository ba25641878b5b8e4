/// DoRA and PiSSA, LoRA's variants: the forward, merge and magnitude gradient of DoRA against float64 hand computations;
/// PiSSA's SVD start and its conversion to a rank-2r LoRA on the original base; PEFT's file conventions; end-to-end runs
/// from the CLI, their adapter folders loaded back, and exact resume.
module MoFO.Tests.LoraVariants

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open MoFO
open MoFO.Data
open MoFO.Dsl
open MoFO.Models
open MoFO.Training
open MoFO.Checkpoints
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))
let private stories () = requireAsset DataRoot.Assets.Stories260K
let private dprTrain () = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr)
let private f64 (t: torch.Tensor) = t.detach().``to``(torch.ScalarType.Float64)
let private maxDiff (a: torch.Tensor) (b: torch.Tensor) = (f64 a - f64 b).abs().max().item<float>()

/// Logits of a fixed batch of token ids.
let private logitsOf (lm: CausalLM) =
    use _ = torch.no_grad()
    let ids = torch.tensor([| 1L; 400L; 300L; 25L; 77L; 9L; 130L; 2L; 1L; 44L; 200L; 301L; 5L; 6L; 90L; 12L |]).view(2L, 8L)
    lm.Logits(ids).detach()

let private spec variant rank = LoraSpec(Rank = rank, Variant = variant)

/// The config of a PEFT folder, as JSON.
let private configOf folder =
    use d = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "adapter_config.json")))
    d.RootElement.Clone()

/// Moves every adapter away from its start (as training would), seeded.
let private perturb (set: LoraAdapters) =
    use _ = torch.no_grad()
    torch.manual_seed 7L |> ignore
    for a in set.Adapters do
        a.A.add_(torch.randn_like(a.A) * torch.tensor 0.02) |> ignore
        a.B.add_(torch.randn_like(a.B) * torch.tensor 0.05) |> ignore
        match a with
        | :? DoraLinear as d -> d.Magnitude.mul_(torch.rand_like(d.Magnitude) * torch.tensor 0.4 + torch.tensor 0.8) |> ignore
        | _ -> ()

/// DoRA's merged weight by hand, in float64: m ⊙ (W + s·B·A) / ‖W + s·B·A‖ (the norm of each output row).
let private doraByHand (w: torch.Tensor) (a: torch.Tensor) (b: torch.Tensor) (m: torch.Tensor) (s: float) =
    let v = f64 w + (f64 b).matmul(f64 a) * torch.tensor(s, dtype = torch.ScalarType.Float64)
    let norm = (v * v).sum(1L).sqrt()
    v * (f64 m / norm).unsqueeze(1L), v, norm

let private variantOptions (variant: LoraVariant) steps saveEvery =
    TrainingOptions(Method = Methods.Parse(variant.ToString().ToLowerInvariant(), lora = LoraSpec(Rank = 4)), LearningRate = 5e-3,
                    Steps = Nullable steps, BatchSize = 8, MicroBatchSize = 4, MaxLength = 96, ShowProgress = false,
                    Schedule = Schedule.Constant, SaveEvery = saveEvery)

[<Tests>]
let tests =
    testSequenced <| testList "LoraVariants" [
        test "LoraVariants.vocabulary: dora and pissa are adapter methods (the name sets the variant); the spec names them; LoRA's JSON (the fingerprint) is unchanged; the DSL cases map onto them" {
            let d = Methods.Parse "dora"
            Expect.equal d.Lora.Variant LoraVariant.Dora "dora → DoRA"
            Expect.equal (string d) "dora(r=8, α=16)" "described"
            let p = Methods.Parse("pissa", lora = LoraSpec(Rank = 4))
            Expect.equal (p.Lora.Variant, p.Lora.Rank, p.Optimizer) (LoraVariant.Pissa, 4, "adamw") "pissa with rank 4, AdamW"
            Expect.equal (string (Methods.Parse("pissa", 0.25, lora = LoraSpec(Rank = 4), loraMember = "mofo"))) "pissa(r=4, α=8) on mofo(α=0.25)" "with the filter"
            Expect.notEqual (Methods.Parse "dora") (Methods.Parse "lora") "the variant is part of the method's identity"
            for n in [ "lora"; "dora"; "pissa" ] do Expect.contains Methods.Names n $"{n} in the vocabulary"
            Expect.isFalse ((JsonSerializer.Serialize(LoraSpec(Rank = 4))).Contains "Variant") "LoRA's JSON has no variant field (old fingerprints hold)"
            Expect.stringContains (JsonSerializer.Serialize(LoraSpec(Rank = 4, Variant = LoraVariant.Dora))) "Variant" "DoRA's has"
            let e = throwsWith<OptionException> (fun () -> Methods.Parse("dora", l2Lambda = Nullable 1e-3) |> ignore)
            Expect.stringContains e.Message "dora" "L2 with DoRA is refused in its name"
            Expect.equal (Method.DoRA 8).Spec (Methods.Parse("dora", lora = LoraSpec(Rank = 8))) "Method.DoRA"
            Expect.equal (Method.PiSSA 4).Spec (Methods.Parse("pissa", lora = LoraSpec(Rank = 4))) "Method.PiSSA"
            Expect.equal ((Method.DoRA 8).Label, (Method.PiSSA 4).Label, (Method.DoRA 8).Key, (Method.PiSSA 4).Key)
                         ("DoRA (r=8)", "PiSSA (r=4)", "dora8", "pissa4") "labels and keys"
            Expect.equal (Method.DoRA 8).LrScale Methods.LoraLrScale "LoRA's learning-rate factor"
            let code, out, _ = mofo [ "methods" ]
            Expect.equal code 0 "mofo methods"
            Expect.stringContains out "DoRA (Liu et al. 2024)" "lists DoRA"
            Expect.stringContains out "PiSSA (Meng et al. 2024)" "lists PiSSA"
        }

        test "LoraVariants.dora.forward: a fresh DoRA adapter leaves the model unchanged; the forward and the merge equal m ⊙ (W + s·B·A) / ‖W + s·B·A‖ by hand in float64" {
            use lm = ModelLoader.Load(stories ())
            let before = logitsOf lm
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 2, Targets = [ "q_proj"; "down_proj" ], Variant = LoraVariant.Dora), 0L)
            Expect.isLessThan (maxDiff (logitsOf lm) before) 1e-6 "m = ‖W‖ and B = 0: the model is unchanged"
            let first = set.Adapters[0] :?> DoraLinear
            let wNorm = (f64 first.Base.weight * f64 first.Base.weight).sum(1L).sqrt()
            Expect.isLessThan (maxDiff first.Magnitude wNorm) 1e-6 "m starts at the row norms of W"
            perturb set
            torch.manual_seed 3L |> ignore
            let expectedWeights =
                [ for a in set.Adapters ->
                    let d = a :?> DoraLinear
                    let x = torch.randn(3L, d.Base.weight.shape[1])
                    let y = d.forward x
                    let merged, _, _ = doraByHand d.Base.weight d.A d.B d.Magnitude d.Scale
                    let byHand = (f64 x).matmul(merged.t())
                    Expect.isLessThan (maxDiff y byHand) 1e-5 $"{d.Name}: the forward is x·W'ᵀ (largest |difference| {maxDiff y byHand:G3})"
                    Expect.isLessThan (maxDiff (d.Delta()) (merged - f64 d.Base.weight)) 1e-6 $"{d.Name}: Delta = W' − W"
                    d.Name, merged ]
            let adapted = logitsOf lm
            let dense = set.Adapters |> Seq.sumBy (fun a -> let d = f64 (a.Delta()) in (d * d).sum().item<float>())
            Expect.floatClose { absolute = 1e-9; relative = 1e-5 } (set.DeltaL2()) (sqrt dense) "the distance is ‖W' − W‖"
            set.Merge()
            let state = lm.Module.StateDict()
            for name, merged in expectedWeights do
                Expect.isLessThan (maxDiff state[name + ".weight"] merged) 1e-6 $"{name}: the merged weight by hand"
            Expect.isLessThan (maxDiff (logitsOf lm) adapted) 1e-4 "merging keeps the adapted model's logits"
        }

        test "LoraVariants.dora.dropout: in training with dropout the forward is PEFT's, base(x) + (m/‖V‖ − 1)·W·x' + (m/‖V‖)·s·B·A·x' with x' the dropped input (recovered by solving, each entry 0 or x/(1 − p)); eval mode drops nothing" {
            use lm = ModelLoader.Load(stories ())
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 2, Dropout = 0.3, Targets = [ "q_proj" ], Variant = LoraVariant.Dora), 0L)
            let d = set.Adapters[0] :?> DoraLinear
            lm.Module.train()
            set.DropoutSeed <- 17L
            torch.manual_seed 2L |> ignore
            let x = torch.randn(4L, d.Base.weight.shape[1])
            let w = f64 d.Base.weight
            do
                use _ = torch.no_grad()
                d.Magnitude.mul_(torch.tensor 2.0) |> ignore          // B = 0, m = 2‖W‖: y = W·x + W·x'
            let y = f64 (d.forward x)
            let dropped = torch.linalg.solve(w, (y - (f64 x).matmul(w.t())).t()).t()
            let kept = (f64 x) / torch.tensor(0.7, dtype = torch.ScalarType.Float64)
            let zero, full = dropped.abs().lt(torch.tensor 1e-3), (dropped - kept).abs().lt(torch.tensor 1e-3)
            Expect.isTrue (zero.logical_or(full).all().item<bool>()) "every entry of x' is 0 or x/(1 − p)"
            let isDropped = dropped.abs().lt((dropped - kept).abs())
            let share = isDropped.``to``(torch.ScalarType.Float64).mean().item<float>()
            Expect.isTrue (share > 0.1 && share < 0.5) $"about p of them dropped ({share:F2})"
            let xd = torch.where(isDropped, torch.zeros_like(kept), kept)
            perturb set
            let y2 = d.forward x                                       // the same seed: the same mask
            let _, v, norm = doraByHand d.Base.weight d.A d.B d.Magnitude d.Scale
            let ratio = (f64 d.Magnitude / norm).unsqueeze(0L)
            let s = torch.tensor(d.Scale, dtype = torch.ScalarType.Float64)
            let byHand = (f64 x).matmul(w.t()) + (ratio - torch.tensor 1.0) * xd.matmul(w.t()) + ratio * xd.matmul((f64 d.A).t()).matmul((f64 d.B).t()) * s
            Expect.isLessThan (maxDiff y2 byHand) 1e-5 $"PEFT's dropout forward by hand (largest |difference| {maxDiff y2 byHand:G3})"
            lm.Module.eval()
            let merged, _, _ = doraByHand d.Base.weight d.A d.B d.Magnitude d.Scale
            Expect.isLessThan (maxDiff (d.forward x) ((f64 x).matmul(merged.t()))) 1e-5 "eval: no dropout, x·W'ᵀ"
        }

        test "LoraVariants.dora.gradient: with the norm detached (PEFT, DoRA §4.3), ∂L/∂m, ∂L/∂B and ∂L/∂A are those of y = (m/‖V‖) ⊙ V·x with ‖V‖ a constant, by hand in float64" {
            use lm = ModelLoader.Load(stories ())
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 3, Alpha = 4.0, Targets = [ "k_proj" ], Variant = LoraVariant.Dora), 0L)
            perturb set
            let d = set.Adapters[0] :?> DoraLinear
            torch.manual_seed 5L |> ignore
            let x = torch.randn(5L, d.Base.weight.shape[1])
            let g = torch.randn(5L, d.Base.weight.shape[0])
            let loss = (d.forward x * g).sum()
            loss.backward()
            let s = torch.tensor(d.Scale, dtype = torch.ScalarType.Float64)
            let _, v, norm = doraByHand d.Base.weight d.A d.B d.Magnitude d.Scale
            let vx = (f64 x).matmul(v.t())                                // [T, out]
            let dm = (f64 g * vx).sum(0L) / norm                          // Σ_t g_ti (V x_t)_i / ‖V_i‖
            let gs = f64 g * (f64 d.Magnitude / norm).unsqueeze(0L)       // g ⊙ m/‖V‖
            let dB = gs.t().matmul((f64 x).matmul((f64 d.A).t())) * s     // s · (g ⊙ m/‖V‖)ᵀ · (x·Aᵀ)
            let dA = (f64 d.B).t().matmul(gs.t()).matmul(f64 x) * s       // s · Bᵀ · (g ⊙ m/‖V‖)ᵀ · x
            let rel (a: torch.Tensor) (b: torch.Tensor) = maxDiff a b / (f64 b).abs().max().item<float>()
            Expect.isLessThan (rel d.Magnitude.grad dm) 1e-5 $"∂L/∂m (relative {rel d.Magnitude.grad dm:G3})"
            Expect.isLessThan (rel d.B.grad dB) 1e-5 $"∂L/∂B: no gradient through the norm (relative {rel d.B.grad dB:G3})"
            Expect.isLessThan (rel d.A.grad dA) 1e-5 $"∂L/∂A (relative {rel d.A.grad dA:G3})"
            // finite differences in m (the norm does not depend on m): L is linear in m_i
            let i = 3L
            let lossAt (delta: float) =
                use _ = torch.no_grad()
                d.Magnitude[i].add_(torch.tensor delta) |> ignore
                let l = (f64 (d.forward x) * f64 g).sum().item<float>()
                d.Magnitude[i].sub_(torch.tensor delta) |> ignore
                l
            let fd = (lossAt 1e-2 - lossAt -1e-2) / 2e-2
            Expect.floatClose { absolute = 1e-4; relative = 1e-3 } fd (dm[i].item<float>()) "a central difference in m_3"
        }

        test "LoraVariants.pissa.init: s·B₀·A₀ is W's top-r SVD (float64, in the test), the residual base restores W exactly, the model starts unchanged, and detaching unmerged puts W back" {
            use lm = ModelLoader.Load(stories ())
            let before = logitsOf lm
            let original = lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.detach().clone()) |> Map.ofSeq
            let set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 4, Variant = LoraVariant.Pissa), 0L)
            Expect.equal set.Adapters.Count (5 * 7) "7 projections × 5 layers"
            for a in set.Adapters do
                let p = a :?> PissaLinear
                let w = original[p.Name + ".weight"]
                let scale = torch.tensor(p.Scale, dtype = torch.ScalarType.Float64)
                let lowRank = (f64 p.B).matmul(f64 p.A) * scale
                let struct (u, sv, vh) = torch.linalg.svd(f64 w, fullMatrices = false)
                let top = u.narrow(1L, 0L, 4L).matmul(torch.diag(sv.narrow(0L, 0L, 4L))).matmul(vh.narrow(0L, 0L, 4L))
                let size = (f64 w).abs().max().item<float>()
                Expect.isLessThan (maxDiff lowRank top / size) 1e-4 $"{p.Name}: s·B₀·A₀ = U_r·S_r·V_rᵀ"
                Expect.isLessThan (maxDiff (f64 p.Base.weight + lowRank) w / size) 1e-6 $"{p.Name}: W_res + s·B₀·A₀ = W"
                Expect.isGreaterThan (maxDiff p.Base.weight w) 1e-3 $"{p.Name}: the base holds the residual"
                Expect.equal (maxDiff p.InitialA p.A + maxDiff p.InitialB p.B) 0.0 $"{p.Name}: A₀, B₀ kept"
                Expect.equal ((p.Delta()).abs().max().item<float32>()) 0.0f $"{p.Name}: no update yet"
            Expect.isLessThan (maxDiff (logitsOf lm) before) 1e-4 "the model starts unchanged"
            Expect.isLessThan (set.DeltaL2()) 1e-5 "distance 0 at the start"
            set.Dispose()
            for KeyValue (k, v) in lm.Module.StateDict() do
                Expect.isLessThan (maxDiff v original[k] / (1e-3 + (f64 original[k]).abs().max().item<float>())) 1e-6 $"{k}: W back after an unmerged detach"
        }

        test "LoraVariants.pissa.convert: the saved adapter is a rank-2r LoRA (A' = [A; A₀], B' = [B | −B₀], r and α doubled, init_lora_weights true) whose update on the ORIGINAL base equals the merged model" {
            use dir = new TempDir()
            use lm = ModelLoader.Load(stories ())
            let original = lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.detach().clone()) |> Map.ofSeq
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 4, Variant = LoraVariant.Pissa), 0L)
            perturb set
            let adapted = logitsOf lm
            let dense = set.Adapters |> Seq.sumBy (fun a -> let d = f64 (a.Delta()) in (d * d).sum().item<float>())
            Expect.floatClose { absolute = 1e-9; relative = 1e-5 } (set.DeltaL2()) (sqrt dense) "the distance from rank-2r products is the dense ‖s·(B·A − B₀·A₀)‖"
            let folder = dir.File "pissa"
            set.Save folder
            let config = configOf folder
            Expect.equal (config.GetProperty("peft_type").GetString()) "LORA" "peft_type"
            Expect.equal (config.GetProperty("r").GetInt32()) 8 "r = 2·4"
            Expect.equal (config.GetProperty("lora_alpha").GetDouble()) 16.0 "lora_alpha = 2·8: the scale stays 2"
            Expect.isTrue (config.GetProperty("init_lora_weights").GetBoolean()) "init_lora_weights true (PEFT's converted config)"
            Expect.isFalse (config.GetProperty("use_dora").GetBoolean()) "no DoRA"
            let adapter = SafeTensors.Load(Path.Combine(folder, "adapter_model.safetensors"))
            Expect.equal adapter.Count (2 * 5 * 7) "A and B per adapted layer, nothing else"
            let q = "base_model.model.model.layers.0.self_attn.q_proj"
            Expect.equal adapter[q + ".lora_A.weight"].shape [| 8L; 64L |] "A' [2r, in]"
            Expect.equal adapter[q + ".lora_B.weight"].shape [| 64L; 8L |] "B' [out, 2r]"
            let p0 = set.Adapters[0] :?> PissaLinear
            Expect.equal (maxDiff (adapter[q + ".lora_A.weight"].narrow(0L, 4L, 4L)) p0.InitialA) 0.0 "A' = [A; A₀]"
            Expect.equal (maxDiff (adapter[q + ".lora_B.weight"].narrow(1L, 4L, 4L)) (-p0.InitialB)) 0.0 "B' = [B | −B₀]"
            set.Merge()
            let merged = lm.Module.StateDict()
            Expect.isLessThan (maxDiff (logitsOf lm) adapted) 1e-4 "merging keeps the adapted logits"
            // by hand: the converted LoRA applied to the original weights, in float64
            for KeyValue (k, a) in adapter do
                if k.EndsWith ".lora_A.weight" then
                    let layer = k.Substring("base_model.model.".Length, k.Length - "base_model.model.".Length - ".lora_A.weight".Length)
                    let b = adapter[$"base_model.model.{layer}.lora_B.weight"]
                    let byHand = f64 original[layer + ".weight"] + (f64 b).matmul(f64 a) * torch.tensor(16.0 / 8.0, dtype = torch.ScalarType.Float64)
                    Expect.isLessThan (maxDiff merged[layer + ".weight"] byHand) 1e-5 $"{layer}: W_res + s·B·A = W + s'·B'·A'"
            // PEFT's reading of it: the folder attached, unmerged, to the original model
            use fresh = ModelLoader.Load(stories ())
            use loaded = LoraAdapters.Load(fresh.Module, folder)
            Expect.equal loaded.Spec.Variant LoraVariant.Lora "a plain LoRA"
            Expect.isLessThan (maxDiff (logitsOf fresh) adapted) 1e-4 "the original model + the converted adapter = the trained PiSSA model"
        }

        test "LoraVariants.pissa.checkpoint: a checkpoint holds A, B, A₀ and B₀; read into adapters whose SVD came out otherwise, it rebuilds the residual from its own A₀, B₀ (the same model)" {
            use dir = new TempDir()
            let spec = LoraSpec(Rank = 2, Targets = [ "v_proj"; "up_proj" ], Variant = LoraVariant.Pissa)
            use lm1 = ModelLoader.Load(stories ())
            use set1 = LoraAdapters.Attach(lm1.Module, spec, 0L)
            perturb set1
            let expected = logitsOf lm1
            let tensors = set1.CheckpointTensors()
            Expect.equal tensors.Count (4 * 2 * 5) "A, B, A₀, B₀ per adapted layer"
            Expect.isTrue (tensors.ContainsKey "base_model.model.model.layers.0.self_attn.v_proj.pissa_initial_A") "A₀ under its key"
            let file = dir.File "adapter_model.safetensors"
            SafeTensors.Save(file, tensors, Collections.Generic.Dictionary<string, string>(dict [ "format", "pt" ]))
            use lm2 = ModelLoader.Load(stories ())
            use set2 = LoraAdapters.Attach(lm2.Module, spec, 0L)
            do
                // another SVD: A₀ moved, the residual moved with it (still the same model W)
                use _ = torch.no_grad()
                torch.manual_seed 11L |> ignore
                for a in set2.Adapters do
                    let p = a :?> PissaLinear
                    let delta = torch.randn_like(p.InitialA) * torch.tensor 0.1
                    p.InitialA.add_(delta) |> ignore
                    p.A.copy_(p.InitialA) |> ignore
                    p.Base.weight.sub_(p.B.matmul(delta) * torch.tensor p.Scale) |> ignore
            set2.LoadWeights file
            let d = maxDiff (logitsOf lm2) expected
            Expect.isLessThan d 1e-5 $"the resumed adapters on the rebuilt residual are the saved model (largest |difference| {d:G3})"
            let w1, w2 = lm1.Module.StateDict(), lm2.Module.StateDict()
            for KeyValue (k, v) in w1 do Expect.isLessThan (maxDiff w2[k] v) 1e-6 $"{k}: the same residual base"
        }

        test "LoraVariants.errors: a PiSSA rank above a target's, L2 with DoRA, and an unconverted PEFT PiSSA folder are usage / checkpoint errors" {
            use dir = new TempDir()
            let run extra = mofo ([ "train"; "--model"; stories (); "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"; "--output"; dir.File (Guid.NewGuid().ToString "N"); "--steps"; "1"; "--batch-size"; "4" ] @ extra)
            let code, _, err = run [ "--method"; "pissa"; "--lora-rank"; "40" ]
            Expect.equal code 2 err
            Expect.stringContains err "--lora-rank" "the flag is named"
            let code, _, err = run [ "--method"; "dora"; "--l2-lambda"; "0.001" ]
            Expect.equal code 2 err
            let folder = dir.File "peft-pissa"
            do
                use lm = ModelLoader.Load(stories ())
                use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 2), 0L)
                set.Save folder
            let cfg = Path.Combine(folder, "adapter_config.json")
            File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"init_lora_weights\": true", "\"init_lora_weights\": \"pissa\""))
            use lm = ModelLoader.Load(stories ())
            let e = throwsWith<CheckpointException> (fun () -> LoraAdapters.Load(lm.Module, folder) |> ignore)
            Expect.stringContains e.Message "init_lora_weights" "the field is named"
            Expect.isNull (LoraAdapters.Of lm.Module) "nothing attached"
        }

        test "LoraVariants.dora.files: PEFT's DoRA folder (use_dora, keys base_model.model.<layer>.lora_A.weight / lora_B.weight / lora_magnitude_vector [out]) loads back to the same model" {
            use dir = new TempDir()
            use lm = ModelLoader.Load(stories ())
            use set = LoraAdapters.Attach(lm.Module, LoraSpec(Rank = 4, Variant = LoraVariant.Dora), 0L)
            perturb set
            let adapted = logitsOf lm
            let names = lm.Module.named_parameters() |> Seq.map (fun struct (n, _) -> n) |> Set.ofSeq
            Expect.isTrue (names.Contains "model.layers.0.self_attn.q_proj.lora_magnitude_vector") "the magnitude is a parameter in the tree"
            for struct (n, _) in set.Parameters do
                Expect.isTrue (names.Contains(n.Substring "base_model.model.".Length)) $"{n}: PEFT's key is base_model.model. + the tree's name"
            let folder = dir.File "dora"
            set.Save folder
            let config = configOf folder
            Expect.isTrue (config.GetProperty("use_dora").GetBoolean()) "use_dora"
            Expect.equal (config.GetProperty("peft_type").GetString(), config.GetProperty("r").GetInt32(), config.GetProperty("lora_alpha").GetDouble()) ("LORA", 4, 8.0) "LORA, r, α"
            let adapter = SafeTensors.Load(Path.Combine(folder, "adapter_model.safetensors"))
            Expect.equal adapter.Count (3 * 5 * 7) "A, B and the magnitude per adapted layer"
            for a in set.Adapters do
                let d = a :?> DoraLinear
                let m = adapter[$"base_model.model.{d.Name}.lora_magnitude_vector"]
                Expect.equal m.shape [| d.Base.weight.shape[0] |] $"{d.Name}: the magnitude is [out]"
                Expect.equal (maxDiff m d.Magnitude) 0.0 $"{d.Name}: its values"
            Expect.equal adapter["base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector"].shape [| 32L |] "k_proj: 4 KV heads × 8"
            use fresh = ModelLoader.Load(stories ())
            use loaded = LoraAdapters.Load(fresh.Module, folder)
            Expect.equal loaded.Spec.Variant LoraVariant.Dora "read as DoRA"
            Expect.isTrue (loaded.Adapters |> Seq.forall (fun a -> a :? DoraLinear)) "DoRA layers"
            Expect.isLessThan (maxDiff (logitsOf fresh) adapted) 1e-5 "the same logits"
        }

        test "LoraVariants.plan: the planned tensors are the ones DoRA and PiSSA attach; DoRA's magnitudes and activations are counted, PiSSA keeps A₀ and B₀" {
            use lm = ModelLoader.Load(stories ())
            let c = lm.Module.Config
            let planOf (variant: LoraVariant) =
                MemoryPlanner.Plan(PlanInput(c, Methods.Parse(variant.ToString().ToLowerInvariant(), lora = LoraSpec(Rank = 3)), Precision.Float32, 2, 64, false))
            for variant in [ LoraVariant.Dora; LoraVariant.Pissa ] do
                let s = LoraSpec(Rank = 3, Variant = variant)
                use set = LoraAdapters.Attach(lm.Module, s, 0L)
                let actual = set.Parameters |> Seq.map (fun struct (n, p) -> n, p.shape) |> Map.ofSeq
                let planned = MemoryPlanner.AdapterShapes(c, s) |> Seq.map (fun struct (n, sh) -> n, sh) |> Map.ofSeq
                Expect.equal planned actual $"{variant}: names and shapes"
                Expect.equal (planOf variant).Adapters (set.Parameters |> Seq.sumBy (fun struct (_, p) -> p.numel())) $"{variant}: the plan's count"
            let lora, dora, pissa = planOf LoraVariant.Lora, planOf LoraVariant.Dora, planOf LoraVariant.Pissa
            let outs = MemoryPlanner.AdapterShapes(c, LoraSpec(Rank = 3, Variant = LoraVariant.Dora)) |> Seq.filter (fun struct (n, _) -> n.EndsWith "lora_magnitude_vector") |> Seq.sumBy (fun struct (_, s) -> s[0])
            Expect.equal (dora.Part "adapters" - lora.Part "adapters") (4L * outs) "DoRA: m [out] per layer, float32"
            Expect.equal (pissa.Part "adapters") (2L * lora.Part "adapters") "PiSSA: A₀ and B₀ beside A and B"
            Expect.isGreaterThan (dora.Part "activations") (lora.Part "activations") "DoRA keeps the base output and B·A·x for m's gradient"
            // measured: the tensors an attached set holds and the gradients of one backward are the plan's parts
            let bytes (t: torch.Tensor) = t.numel() * int64 (t.ElementSize)
            for variant in [ LoraVariant.Dora; LoraVariant.Pissa ] do
                use lm = ModelLoader.Load(stories ())
                let o = TrainingOptions(Method = Methods.Parse(variant.ToString().ToLowerInvariant(), lora = LoraSpec(Rank = 4)), LearningRate = 1e-3,
                                        Steps = Nullable 1, BatchSize = 2, MaxLength = 32, ShowProgress = false)
                let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(stories (), o))
                use trained = TrainedSet.Attach(lm, o.Method, o.Seed)
                let set = LoraAdapters.Of lm.Module
                let kept = set.Adapters |> Seq.sumBy (fun a -> match a with :? PissaLinear as p -> bytes p.InitialA + bytes p.InitialB | _ -> 0L)
                Expect.equal (set.Parameters |> Seq.sumBy (fun struct (_, p) -> bytes p) |> (+) kept) (plan.Part "adapters") $"{variant}: the adapters' bytes"
                let ids = torch.tensor([| 1L; 400L; 300L; 25L; 77L; 9L; 130L; 2L |]).view(1L, 8L)
                (lm.Logits ids).square().mean().backward()
                Expect.equal (set.Parameters |> Seq.sumBy (fun struct (_, p) -> bytes p.grad)) (plan.Part "gradients") $"{variant}: their gradients"
        }

        test "LoraVariants.train: mofo train --method dora|pissa --steps 8 on DPR runs end to end; the merged folder equals the original base with its adapter folder attached" {
            use dir = new TempDir()
            for variant, rank in [ "dora", 4; "pissa", 4 ] do
                let out = dir.File variant
                let code, _, err =
                    mofo [ "train"; "--model"; stories (); "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"; "--output"; out
                           "--method"; variant; "--lora-rank"; string rank; "--lr"; "5e-3"; "--steps"; "8"; "--batch-size"; "8"; "--max-len"; "96" ]
                Expect.equal code 0 err
                let modelDir = Path.Combine(out, "model")
                let summary = RunFolder(out).ReadSummary()
                Expect.stringStarts summary.Method $"{variant}(r={rank}" "the summary names the method"
                Expect.isGreaterThan summary.Distance 0.0 "the adapters moved"
                let config = configOf modelDir
                Expect.equal (config.GetProperty("use_dora").GetBoolean()) (variant = "dora") "use_dora"
                Expect.equal (config.GetProperty("r").GetInt32()) (if variant = "pissa" then 2 * rank else rank) "r (PiSSA: converted, 2r)"
                use merged = ModelLoader.Load modelDir
                use plain = ModelLoader.Load(stories ())
                let base0 = logitsOf plain
                use adapters = LoraAdapters.Load(plain.Module, modelDir)
                let d = maxDiff (logitsOf plain) (logitsOf merged)
                Expect.isLessThan d 1e-4 $"{variant}: original base + adapter folder = merged folder (largest |difference| {d:G3})"
                Expect.isGreaterThan (maxDiff base0 (logitsOf merged)) 1e-3 $"{variant}: training changed the model"
        }

        test "LoraVariants.resume: DoRA and PiSSA runs interrupted and resumed end with the same adapters and merged weights as uninterrupted ones (CPU, exact)" {
            ConsoleProgress.Enabled <- false
            let train = dprTrain () |> Seq.truncate 64 |> Seq.toArray
            for variant in [ LoraVariant.Dora; LoraVariant.Pissa ] do
                let o = variantOptions variant 6 2
                let load (folder: string) = SafeTensors.Load(Path.Combine(folder, "model", "adapter_model.safetensors")) |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq
                let fullW, fullA =
                    use dir = new TempDir()
                    use lm = ModelLoader.Load(stories ())
                    Trainer(lm, train, null, o, dir.File "full").Run() |> ignore
                    lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq, load (dir.File "full")
                use dir = new TempDir()
                let run = dir.File "killed"
                do
                    use lm = ModelLoader.Load(stories ())
                    let t = Trainer(lm, train, null, o, run)
                    t.OnStep <- fun m -> if m.Step = 5 then failwith "simulated crash"
                    throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
                use lm = ModelLoader.Load(stories ())
                let r = Trainer(lm, train, null, o, run).Run(resume = true)
                Expect.equal r.Steps 6 $"{variant}: finished"
                for KeyValue (k, v) in lm.Module.StateDict() do Expect.equal (v.data<float32>().ToArray()) fullW[k] $"{variant} {k}: bit-identical merged weight"
                for KeyValue (k, v) in load run do Expect.equal v fullA[k] $"{variant} {k}: bit-identical adapter"
        }
    ]
