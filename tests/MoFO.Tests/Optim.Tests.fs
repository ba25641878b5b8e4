module MoFO.Tests.Optim

open System
open System.IO
open Expecto
open TorchSharp
open MoFO.Optim
open MoFO.Tests.Fixtures
open MoFO.Tests.OptimHelpers

let private both = [ true; false ]
let private pathName fast = if fast then "fast path" else "torch-ops path"

let private mofo (ps: Tensor list) (alpha: float) (lr: float) (fast: bool) =
    let o = new MoFOOptimizer(asSeq ps, lr = lr, alpha = alpha, weight_decay = 0.0)
    o.UseFastPath <- fast
    o

[<Tests>]
let engine =
    testList "Optim" [
        test "Optim.MoFO.alpha1-equals-TorchSharp-AdamW over 20 steps (both paths)" {
            for fast in both do
                let shapes = [ [| 16L; 8L |]; [| 8L |]; [| 3L; 5L |]; [| 300L; 400L |] ]
                let ps = makeParams 1L shapes
                let ref = cloneParams ps
                let ws = makeWeights 1L ps
                use ours = new MoFOOptimizer(asSeq ps, lr = 1e-2, alpha = 1.0, weight_decay = 0.05)
                ours.UseFastPath <- fast
                let refParams = ref |> List.map (fun t -> new TorchSharp.Modules.Parameter(t))
                use theirs = torch.optim.AdamW(refParams, lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.05)
                for _ in 1 .. 20 do
                    stepSin ours.zero_grad ours.step ps ws
                    stepSin theirs.zero_grad (fun () -> theirs.step() |> ignore) (refParams |> List.map (fun p -> p :> Tensor)) ws
                for p, q in List.zip ps refParams do
                    let d = maxAbsDiff p q
                    Expect.isLessThanOrEqual d 1e-6 $"{pathName fast}: max |MoFO(α=1) − TorchSharp AdamW| = {d}"
        }

        test "Optim.MoFO.hand-worked 3 steps on a 2×2 block (α = 50 %, k = 2)" {
            // p0 = [0.5, -0.25, 1, 2]; gradients g1 = [1, -3, 2, 0.5], g2 = [4, 0, 0, 0], g3 = [0, 0, 0, 3].
            // m1 = 0.1·g1 = [.1, -.3, .2, .05]                 → top-2 |m|: {1, 2}
            // m2 = 0.9·m1 + 0.1·g2 = [.49, -.27, .18, .045]    → {0, 1}
            // m3 = 0.9·m2 + 0.1·g3 = [.441, -.243, .162, .3405] → {0, 3}
            // Step 1 is sign-like: m̂ = g, v̂ = g², so p1 = p0 − 0.1·sign(g) on {1, 2}: [0.5, -0.15, 0.9, 2].
            let grads = [ [| 1.0; -3.0; 2.0; 0.5 |]; [| 4.0; 0.0; 0.0; 0.0 |]; [| 0.0; 0.0; 0.0; 3.0 |] ]
            let expectedSets = [ set [ 1; 2 ]; set [ 0; 1 ]; set [ 0; 3 ] ]
            for fast in both do
                let p = torch.tensor([| 0.5f; -0.25f; 1.0f; 2.0f |]).reshape(2L, 2L).requires_grad_(true)
                use opt = mofo [ p ] 0.5 0.1 fast
                let r = AdamRef([| 0.5; -0.25; 1.0; 2.0 |], 0.1, 0.9, 0.999, 1e-8, 0.0)
                for t, (g, expected) in List.indexed (List.zip grads expectedSets) do
                    let before = toArray p
                    stepWithGrads opt [ p ] [ torch.tensor(g |> Array.map float32).reshape(2L, 2L) ]
                    let after = toArray p
                    let refSel = r.Step(g, fun m _ -> referenceTopK m 2)
                    Expect.equal refSel expected $"the reference picks the hand-derived set at step {t + 1}"
                    Expect.equal (movedIndices before after |> Set.ofArray) expected $"{pathName fast}: entries moved at step {t + 1}"
                    for i in 0 .. 3 do
                        Expect.floatClose { absolute = 1e-6; relative = 1e-6 } (float after.[i]) r.P.[i] $"{pathName fast}: p[{i}] after step {t + 1}"
                    if t = 0 then
                        let hand = [| 0.5; -0.15; 0.9; 2.0 |]
                        for i in 0 .. 3 do
                            Expect.floatClose { absolute = 1e-6; relative = 1e-6 } (float after.[i]) hand.[i] $"{pathName fast}: hand-computed p1[{i}]"
        }

        test "Optim.MoFO.exact-k: exactly ⌊α·numel⌋ entries move per filtered block in every step; k = 0 and dense blocks" {
            for fast, histogram in [ true, false; true, true; false, false ] do
                let shapes = [ [| 37L; 53L |]; [| 300L; 500L |]; [| 2L; 3L |]; [| 64L |] ]
                let ps = makeParams 2L shapes
                let ws = makeWeights 2L ps
                use opt = mofo ps 0.15 1e-3 fast
                opt.HistogramSelection <- histogram
                let kinds = opt.Blocks |> Seq.map (fun b -> b.Kind) |> List.ofSeq
                Expect.equal kinds [ BlockKind.Filtered; BlockKind.Filtered; BlockKind.Filtered; BlockKind.Dense ] "matrices filtered, vectors dense"
                let expected = [ kOf 0.15 1961; kOf 0.15 150000; 0; 64 ]
                Expect.equal expected [ 294; 22500; 0; 64 ] "k by hand"
                for step in 1 .. 5 do
                    let before = ps |> List.map toArray
                    stepSin opt.zero_grad opt.step ps ws
                    for i, p in List.indexed ps do
                        let moved = movedIndices before.[i] (toArray p)
                        Expect.equal moved.Length expected.[i] $"{pathName fast}: block {i} at step {step}"
                        Expect.equal opt.Blocks.[i].LastUpdated (int64 expected.[i]) $"{pathName fast}: LastUpdated of block {i}"
                // the k = 0 block still advanced its moments
                let m = opt.Blocks.[2].Moments.[0]
                Expect.isGreaterThan (maxAbsDiff m (torch.zeros_like m)) 0.0 "the k = 0 block's momentum advances"
        }

        test "Optim.MoFO.ties: equal |m| → the lower flat indices win (both paths), and the paths agree on massive ties" {
            for fast in both do
                let p = torch.zeros(4L, 8L).requires_grad_(true)
                use opt = mofo [ p ] 0.25 0.1 fast
                let g = torch.tensor(Array.init 32 (fun i -> if i % 2 = 0 then 1.0f else -1.0f)).reshape(4L, 8L)
                let before = toArray p
                stepWithGrads opt [ p ] [ g ]
                Expect.equal (movedIndices before (toArray p)) [| 0 .. 7 |] $"{pathName fast}: with all |m| equal the first k = 8 indices move"
            // 200 000 entries whose gradients take 7 values: the threshold falls inside a huge tie
            let run fast histogram =
                let p = torch.zeros(400L, 500L).requires_grad_(true)
                use opt = mofo [ p ] 0.15 0.1 fast
                opt.HistogramSelection <- histogram
                use g = gen 5L
                use s = (1.5).ToScalar()
                use lo = (-3.0).ToScalar()
                use hi = (3.0).ToScalar()
                let grads = [ for _ in 1 .. 3 -> torch.randn([| 400L; 500L |], generator = g).mul(s).round().clamp(lo, hi) ]
                [ for gr in grads do
                    let before = toArray p
                    stepWithGrads opt [ p ] [ gr ]
                    yield movedIndices before (toArray p) ]
            let a = run true false
            let b = run false false
            let c = run true true
            for t in 0 .. 2 do
                Expect.equal a.[t].Length (kOf 0.15 200000) $"exactly k moved at step {t + 1}"
                Expect.sequenceEqual a.[t] b.[t] $"fast path and torch-ops path move the same entries at step {t + 1}"
                Expect.sequenceEqual c.[t] b.[t] $"the histogram selection agrees too at step {t + 1}"
        }

        test "Optim.fast-path equals torch-ops path (MoFO, gradient BCD, AdamW; weight decay on)" {
            let makers : (string * (Tensor list -> bool -> MaskedAdam)) list =
                [ "MoFO", (fun ps fast -> let o = new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.1) in o.UseFastPath <- fast; o :> MaskedAdam)
                  "GradientFilteredBCD", (fun ps fast -> let o = new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.1) in o.UseFastPath <- fast; o :> MaskedAdam)
                  "AdamW", (fun ps fast -> let o = new AdamW(asSeq ps, lr = 1e-3, weight_decay = 0.1) in o.UseFastPath <- fast; o :> MaskedAdam)
                  "MoFO (histogram selection)", (fun ps fast -> let o = new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.1) in o.UseFastPath <- fast; o.HistogramSelection <- true; o :> MaskedAdam) ]
            for name, make in makers do
                let shapes = [ [| 300L; 500L |]; [| 37L; 53L |]; [| 64L |] ]
                let ps1 = makeParams 3L shapes
                let ps2 = cloneParams ps1
                let ws = makeWeights 3L ps1
                use o1 = make ps1 true
                use o2 = make ps2 false
                for _ in 1 .. 8 do
                    stepSin o1.zero_grad o1.step ps1 ws
                    stepSin o2.zero_grad o2.step ps2 ws
                for a, b in List.zip ps1 ps2 do
                    let d = maxAbsDiff a b
                    Expect.isLessThanOrEqual d 1e-6 $"{name}: max |fast − torch| = {d}"
        }

        test "Optim.guess route: window hits and misses (threshold jumps, ties; wd on/off; touched) give the histogram route's bits" {
            // the guess route updates the entries above last step's window speculatively in the moment pass and undoes
            // them when the window misses; the histogram route is the plain exact one: both must agree bit for bit
            let byteArray (t: Tensor) : byte[] = t.cpu().contiguous().data<byte>().ToArray()
            for wd in [ 0.0; 0.1 ] do
                for byGrad in both do
                    let name = $"""{(if byGrad then "gradient BCD" else "MoFO")}, wd {wd}"""
                    // 3 chunks, and 2 chunks with a scalar tail (132 999 = 8·16 624 + 7)
                    let shapes = [ [| 300L; 500L |]; [| 129L; 1031L |] ]
                    let make ps hist =
                        let o =
                            if byGrad then new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = wd, trackTouched = true) :> MaskedAdam
                            else new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = wd, trackTouched = true) :> MaskedAdam
                        o.HistogramSelection <- hist
                        o
                    let ps1 = makeParams 7L shapes
                    let ps2 = cloneParams ps1
                    use o1 = make ps1 false
                    use o2 = make ps2 true
                    use g = gen 8L
                    // scale 0: integer-valued gradients (massive ties); jumps up and down make the window miss
                    let scales = [ 1.0; 1.0; 1.0; 1.0; 100.0; 100.0; 1.0; 0.01; 0.001; 1.0; 1.0; 0.0; 0.0; 0.0; 1.0; 1.0; 1.02; 1.0 ]
                    for t, sc in List.indexed scales do
                        let grads =
                            [ for s in shapes ->
                                let r = torch.randn(s, generator = g)
                                if sc = 0.0 then (use k = (1.5).ToScalar() in r.mul(k).round())
                                else (use k = sc.ToScalar() in r.mul(k)) ]
                        stepWithGrads o1 ps1 grads
                        stepWithGrads o2 ps2 grads
                        for i in 0 .. ps1.Length - 1 do
                            Expect.isTrue (bitEqual ps1.[i] ps2.[i]) $"{name}: p of block {i} bit-identical after step {t + 1}"
                            Expect.sequenceEqual (byteArray o1.Blocks.[i].Touched) (byteArray o2.Blocks.[i].Touched) $"{name}: touched of block {i} after step {t + 1}"
                            for m1, m2 in Seq.zip o1.Blocks.[i].Moments o2.Blocks.[i].Moments do
                                Expect.isTrue (bitEqual m1 m2) $"{name}: moments of block {i} after step {t + 1}"
        }

        test "Optim.state.resume: save → load → continue is bit-identical (file and dictionary; MoFO, random BCD, Lion)" {
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ "MoFO", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> BlockOptimizer)
                  "RandomizedBCD", (fun ps -> new RandomizedBCD(asSeq ps, lr = 1e-3, alpha = 0.15, seed = 7L) :> BlockOptimizer)
                  "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-3, weight_decay = 0.1) :> BlockOptimizer) ]
            for name, make in makers do
                for viaFile in both do
                    let shapes = [ [| 120L; 700L |]; [| 20L; 30L |]; [| 30L |] ]
                    // a new optimizer (and parameters copied bit for bit) continues from the saved state
                    let straight, o1, copies, o3 = straightAndResumed make shapes viaFile
                    use o1 = o1
                    use o3 = o3
                    Expect.equal o3.StepCount 6L $"{name}: step counter restored"
                    let how = if viaFile then "file" else "dictionary"
                    for a, b in List.zip straight copies do
                        Expect.isTrue (bitEqual a b) $"{name} ({how}): parameters bit-identical after resume"
                    for b1, b3 in Seq.zip o1.Blocks o3.Blocks do
                        for m1, m3 in Seq.zip b1.Moments b3.Moments do
                            Expect.isTrue (bitEqual m1 m3) $"{name}: moments bit-identical after resume"
        }

        test "Optim.state.errors: a state of another optimizer or parameter list is refused with a clear message" {
            let ps = makeParams 4L [ [| 4L; 4L |] ]
            use a = new MoFOOptimizer(asSeq ps)
            use b = new Lion(asSeq ps)
            let file = Path.Combine(Path.GetTempPath(), $"mofo-optim-{Guid.NewGuid():N}.state")
            try
                a.Save file
                let e = throwsWith<ArgumentException> (fun () -> b.Load file)
                Expect.stringContains e.Message "MoFOOptimizer" "names the saved optimizer"
            finally File.Delete file
            let other = makeParams 4L [ [| 4L; 5L |] ]
            use c = new MoFOOptimizer(asSeq other)
            let e = throwsWith<ArgumentException> (fun () -> c.load_state_dict(a.state_dict()))
            Expect.stringContains e.Message "[4,4]" "names the mismatched shape"
        }

        test "Optim.validation: bad arguments throw ArgumentException naming the value" {
            let ps () = asSeq (makeParams 9L [ [| 3L; 3L |] ])
            let expectBad (what: string) (needle: string) (f: unit -> unit) =
                let e = throwsWith<ArgumentException> f
                Expect.stringContains e.Message needle $"{what}: message names the value ({e.Message})"
            expectBad "lr < 0" "lr = -0.1" (fun () -> new MoFOOptimizer(ps (), lr = -0.1) |> ignore)
            expectBad "lr NaN" "lr = NaN" (fun () -> new AdamW(ps (), lr = nan) |> ignore)
            expectBad "beta1 = 1" "beta1 = 1" (fun () -> new MoFOOptimizer(ps (), beta1 = 1.0) |> ignore)
            expectBad "beta2 < 0" "beta2 = -0.5" (fun () -> new AdamW(ps (), beta2 = -0.5) |> ignore)
            expectBad "eps = 0" "eps = 0" (fun () -> new MoFOOptimizer(ps (), eps = 0.0) |> ignore)
            expectBad "alpha = 0" "alpha = 0" (fun () -> new MoFOOptimizer(ps (), alpha = 0.0) |> ignore)
            expectBad "alpha > 1" "alpha = 1.5" (fun () -> new GradientFilteredBCD(ps (), alpha = 1.5) |> ignore)
            expectBad "alpha NaN" "alpha = NaN" (fun () -> new RandomizedBCD(ps (), alpha = nan) |> ignore)
            expectBad "weight decay < 0" "weight_decay = -1" (fun () -> new MoFOOptimizer(ps (), weight_decay = -1.0) |> ignore)
            expectBad "Lion beta2 = 1" "beta2 = 1" (fun () -> new Lion(ps (), beta2 = 1.0) |> ignore)
            expectBad "group alpha" "alpha (group 0) = 2" (fun () -> new MoFOOptimizer([ ParamGroup(ps (), alpha = 2.0) ]) |> ignore)
            expectBad "L2 lambda" "lambda = -1" (fun () -> new L2ToPretrained(ps (), -1.0) |> ignore)
            expectBad "empty" "empty parameter list" (fun () -> new MoFOOptimizer(Seq.empty<Tensor>) |> ignore)
            expectBad "scheduler lr" "lr = -1" (fun () -> (new AdamW(ps ())).ParamGroups.[0].LearningRate <- -1.0)
        }

        test "Optim.k: ⌊α·numel⌋ without binary-rounding loss; k = 0 for blocks smaller than 1/α" {
            Expect.equal (BlockOptimizer.SelectedCount(100L, 0.29)) 29L "0.29·100 = 29 (a naive floor gives 28)"
            Expect.equal (BlockOptimizer.SelectedCount(100L, 0.15)) 15L "0.15·100"
            Expect.equal (BlockOptimizer.SelectedCount(6L, 0.15)) 0L "0.9 → 0"
            Expect.equal (BlockOptimizer.SelectedCount(7L, 0.15)) 1L "1.05 → 1"
            Expect.equal (BlockOptimizer.SelectedCount(2L, 0.5)) 1L "the toy block"
            Expect.equal (BlockOptimizer.SelectedCount(1961L, 0.15)) 294L "294.15 → 294"
        }
    ]
