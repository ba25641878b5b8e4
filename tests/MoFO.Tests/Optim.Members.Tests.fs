module MoFO.Tests.OptimMembers

open System
open Expecto
open TorchSharp
open MoFO.Optim
open MoFO.Tests.Fixtures
open MoFO.Tests.OptimHelpers

let private close = { absolute = 1e-6; relative = 1e-5 }

/// Seeded gradient sequences as float arrays (for the independent references) and tensors (for the optimizers).
let private gradSeq (seed: int64) (shape: int64[]) steps =
    use g = gen seed
    [ for _ in 1 .. steps ->
        let t = torch.randn(shape, generator = g)
        t, toArray t |> Array.map float ]

[<Tests>]
let members =
    testList "Optim.members" [
        test "Optim.GradientFilteredBCD matches an independent reference (top-|g|, Adam moments)" {
            for fast in [ true; false ] do
                let p = (makeParams 11L [ [| 9L; 11L |] ]).Head
                let r = AdamRef(toArray p |> Array.map float, 1e-2, 0.9, 0.999, 1e-8, 0.0)
                use opt = new GradientFilteredBCD([ p ], lr = 1e-2, alpha = 0.2)
                opt.UseFastPath <- fast
                let k = kOf 0.2 99
                for t, (gt, ga) in List.indexed (gradSeq 12L [| 9L; 11L |] 6) do
                    let before = toArray p
                    stepWithGrads opt [ p ] [ gt ]
                    let sel = r.Step(ga, fun _ g -> referenceTopK g k)
                    Expect.equal (movedIndices before (toArray p) |> Set.ofArray) sel $"fast={fast}: the top-|g| set at step {t + 1}"
                    Array.iteri (fun i (x: float32) -> Expect.floatClose close (float x) r.P.[i] $"p[{i}] at step {t + 1}") (toArray p)
        }

        test "Optim.GDMoFO matches Algorithm 2 by hand (top-|g| plain gradient step; dense vectors)" {
            let w = (makeParams 13L [ [| 6L; 7L |] ]).Head
            let b = (makeParams 14L [ [| 7L |] ]).Head
            let wRef = toArray w |> Array.map float
            let bRef = toArray b |> Array.map float
            use opt = new GDMoFO([ w; b ], lr = 0.05, alpha = 0.3)
            let k = kOf 0.3 42
            let gw = gradSeq 15L [| 6L; 7L |] 4
            let gb = gradSeq 16L [| 7L |] 4
            for (gwt, gwa), (gbt, gba) in List.zip gw gb do
                stepWithGrads opt [ w; b ] [ gwt; gbt ]
                for i in referenceTopK gwa k do wRef.[i] <- wRef.[i] - 0.05 * gwa.[i]
                for i in 0 .. 6 do bRef.[i] <- bRef.[i] - 0.05 * gba.[i]
            Array.iteri (fun i (x: float32) -> Expect.floatClose close (float x) wRef.[i] $"w[{i}]") (toArray w)
            Array.iteri (fun i (x: float32) -> Expect.floatClose close (float x) bRef.[i] $"b[{i}]") (toArray b)
        }

        test "Optim.Lion matches the published update rule (sign of interpolated momentum, decoupled decay)" {
            let p = (makeParams 17L [ [| 5L; 8L |] ]).Head
            let pr = toArray p |> Array.map float
            let m = Array.zeroCreate<float> 40
            let lr, b1, b2, wd = 1e-2, 0.9, 0.99, 0.1
            use opt = new Lion([ p ], lr = lr, beta1 = b1, beta2 = b2, weight_decay = wd)
            for gt, ga in gradSeq 18L [| 5L; 8L |] 5 do
                stepWithGrads opt [ p ] [ gt ]
                for i in 0 .. 39 do
                    let c = b1 * m.[i] + (1.0 - b1) * ga.[i]
                    pr.[i] <- pr.[i] * (1.0 - lr * wd) - lr * float (sign c)
                    m.[i] <- b2 * m.[i] + (1.0 - b2) * ga.[i]
            Array.iteri (fun i (x: float32) -> Expect.floatClose close (float x) pr.[i] $"p[{i}]") (toArray p)
        }

        test "Optim.RandomizedBCD: exactly k fresh random entries per step, Adam values, reproducible by seed" {
            let run seed =
                let p = (makeParams 19L [ [| 20L; 25L |] ]).Head
                let r = AdamRef(toArray p |> Array.map float, 1e-2, 0.9, 0.999, 1e-8, 0.0)
                use opt = new RandomizedBCD([ p ], lr = 1e-2, alpha = 0.1, seed = seed)
                [ for t, (gt, ga) in List.indexed (gradSeq 20L [| 20L; 25L |] 4) do
                    let before = toArray p
                    stepWithGrads opt [ p ] [ gt ]
                    let moved = movedIndices before (toArray p) |> Set.ofArray
                    Expect.equal moved.Count 50 $"k = 50 entries at step {t + 1}"
                    r.Step(ga, fun _ _ -> moved) |> ignore
                    Array.iteri (fun i (x: float32) -> Expect.floatClose close (float x) r.P.[i] $"p[{i}] at step {t + 1}") (toArray p)
                    yield moved ]
            let a = run 1L
            Expect.notEqual a.[0] a.[1] "a fresh subset each step"
            Expect.equal (run 1L) a "the same seed draws the same subsets"
            Expect.notEqual (run 2L) a "another seed draws other subsets"
        }

        test "Optim.HFT freezes half of each layer's attention, MLP and norm blocks; the rest is AdamW" {
            let names =
                [ yield "model.embed_tokens.weight"
                  for l in 0 .. 1 do
                      for m in [ "q"; "k"; "v"; "o" ] do yield $"model.layers.{l}.self_attn.{m}_proj.weight"
                      for m in [ "gate"; "up"; "down" ] do yield $"model.layers.{l}.mlp.{m}_proj.weight"
                      yield $"model.layers.{l}.input_layernorm.weight"
                      yield $"model.layers.{l}.post_attention_layernorm.weight"
                  yield "model.norm.weight"
                  yield "lm_head.weight" ]
            let shapeOf (n: string) = if n.Contains "norm" then [| 6L |] else [| 6L; 6L |]
            let ps = makeParams 21L (names |> List.map shapeOf)
            let refPs = cloneParams ps
            use hft = new HFT([ ParamGroup(asSeq ps, names) ], lr = 1e-2, seed = 3L)
            use adam = new AdamW(asSeq refPs, lr = 1e-2)
            let frozen = set hft.Frozen
            for l in 0 .. 1 do
                let count (sub: string) = frozen |> Set.filter (fun n -> n.Contains $"layers.{l}." && n.Contains sub) |> Set.count
                Expect.equal (count "self_attn") 2 $"layer {l}: 2 of 4 attention matrices"
                Expect.isTrue (count "mlp" = 1 || count "mlp" = 2) $"layer {l}: 1 or 2 of 3 MLP matrices"
                Expect.equal (count "layernorm") 1 $"layer {l}: 1 of 2 norms"
            for n in [ "model.embed_tokens.weight"; "model.norm.weight"; "lm_head.weight" ] do
                Expect.isFalse (frozen.Contains n) $"{n} stays trainable"
            let before = ps |> List.map toArray
            let ws = makeWeights 21L ps
            for _ in 1 .. 3 do
                stepSin hft.zero_grad hft.step ps ws
                stepSin adam.zero_grad adam.step refPs ws
            for i, n in List.indexed names do
                if frozen.Contains n then Expect.equal (toArray ps.[i]) before.[i] $"{n} frozen"
                else Expect.isTrue (bitEqual ps.[i] refPs.[i]) $"{n} takes the AdamW step"
            let other = new HFT([ ParamGroup(asSeq (cloneParams ps), names) ], seed = 4L)
            Expect.notEqual (set other.Frozen) frozen "another seed freezes other blocks"
        }

        test "Optim.L1/L2 to pretrained: values and gradients match λΣ|θ−θ0| and λΣ(θ−θ0)²" {
            let p = (makeParams 22L [ [| 4L; 5L |] ]).Head
            let p0 = toArray p |> Array.map float
            use l1 = new L1ToPretrained([ p ], 1e-2)
            use l2 = new L2ToPretrained([ p ], 1e-1)
            Expect.floatClose close (l1.Loss().item<float32>() |> float) 0.0 "zero at θ0"
            using (torch.no_grad ()) (fun _ -> p.add_(torch.linspace(-1.0, 1.0, 20L).reshape(4L, 5L)) |> ignore)
            let d = Array.map2 (fun (x: float32) y -> float x - y) (toArray p) p0
            Expect.floatClose close (l1.Loss().item<float32>() |> float) (1e-2 * Array.sumBy abs d) "L1 value"
            Expect.floatClose close (l2.Loss().item<float32>() |> float) (1e-1 * Array.sumBy (fun x -> x * x) d) "L2 value"
            p.grad <- null
            l2.Loss().backward()
            Array.iteri (fun i (g: float32) -> Expect.floatClose close (float g) (2e-1 * d.[i]) $"L2 grad[{i}]") (toArray p.grad)
            Expect.floatClose close (l2.Snapshot.L2Distance()) (sqrt (Array.sumBy (fun x -> x * x) d)) "‖θ − θ0‖"
        }

        test "Optim.diagnostics: updated fraction per block, cumulative touched fraction" {
            let ps = makeParams 23L [ [| 40L; 50L |]; [| 50L |] ]
            use opt = new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.1, trackTouched = true)
            let before = ps |> List.map toArray
            // fresh random gradients each step, so that the top-|m| set drifts
            let gw = gradSeq 24L [| 40L; 50L |] 5 |> List.map fst
            let gb = gradSeq 25L [| 50L |] 5 |> List.map fst
            stepWithGrads opt ps [ gw.[0]; gb.[0] ]
            let d = opt.Diagnostics()
            Expect.equal d.[0].UpdatedFraction 0.1 "10 % of the matrix"
            Expect.equal d.[1].UpdatedFraction 1.0 "the vector is dense"
            Expect.equal d.[0].TouchedFraction (Some 0.1 |> Option.toNullable) "touched after one step"
            for t in 1 .. 4 do stepWithGrads opt ps [ gw.[t]; gb.[t] ]
            let ever = (movedIndices before.[0] (toArray ps.[0])).Length
            let touched = opt.Diagnostics().[0].TouchedFraction.Value
            Expect.floatClose close touched (float ever / 2000.0) "touched fraction = entries that ever moved"
            Expect.isGreaterThan touched 0.1 "more entries are touched over several steps"
        }

        test "Optim.toy-example (Section 4): MoFO ends at (1, 0) with pretrain loss 1, Adam near (1, 1) with pretrain loss ≈ 2" {
            let m = ToyExample.Run("MoFO", lr = 0.02, steps = 2000)
            let a = ToyExample.Run("Adam", lr = 0.02, steps = 2000)
            Expect.isLessThanOrEqual (sqrt ((m.Theta1 - 1.0) ** 2.0 + m.Theta2 ** 2.0)) 0.05 $"MoFO ends within 0.05 of (1, 0): ({m.Theta1}, {m.Theta2})"
            Expect.floatClose { absolute = 0.05; relative = 0.0 } m.PretrainLoss 1.0 "MoFO pretrain loss ≈ 1"
            Expect.isLessThanOrEqual m.FinetuneLoss 1e-6 "MoFO solves the fine-tuning task"
            Expect.isLessThanOrEqual (sqrt ((a.Theta1 - 1.0) ** 2.0 + (a.Theta2 - 1.0) ** 2.0)) 0.05 $"Adam ends within 0.05 of (1, 1): ({a.Theta1}, {a.Theta2})"
            Expect.floatClose { absolute = 0.15; relative = 0.0 } a.PretrainLoss 2.0 "Adam pretrain loss ≈ 2"
            Expect.isLessThanOrEqual a.FinetuneLoss 1e-5 "Adam solves the fine-tuning task too"
        }

        test "Optim.convergence (Theorem 1): GD-MoFO with η = 1/L keeps min ‖g‖_top-α under the O(T^-1/2) bound" {
            let pts = ConvergenceExperiment.Run(dims = 1024, blocks = 4, steps = 300, seed = 1L)
            for p in pts do
                Expect.isLessThanOrEqual p.MinGradTopAlpha p.Bound $"T = {p.T}"
                Expect.isLessThanOrEqual p.MinGradInf p.MinGradTopAlpha "‖g‖∞ ≤ ‖g‖top-α"
            Expect.isLessThan (List.last (List.ofSeq pts)).MinGradInf 1e-3 "the gradient vanishes"
        }
    ]
