/// Model merging by task vectors (`TaskMerge`, `mofo merge`): task arithmetic, TIES and DARE against hand-worked small
/// tensors, DARE's drop rate and rescale, the errors, and merged folders of stories260K that `mofo generate` reads.
module MoFO.Tests.Merge

open System
open System.IO
open Expecto
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

let private t (xs: float list) = torch.tensor(xs |> List.map float32 |> List.toArray)
let private values (x: torch.Tensor) = x.data<float32>().ToArray() |> Array.map float

let private close (name: string) (actual: float[]) (expected: float list) =
    Expect.equal actual.Length expected.Length $"{name}: length"
    List.iteri (fun i e -> Expect.floatClose { absolute = 1e-6; relative = 1e-6 } actual[i] e $"{name}[{i}]") expected

// three task vectors of 8 entries; TIES at density 0.5 keeps 4 of each (worked out in the comments)
let private tau1 = [ 0.9; -0.1; 0.4; -0.8; 0.2; 0.05; -0.6; 0.3 ]    // keeps 0.9, 0.4, -0.8, -0.6
let private tau2 = [ -0.5; 0.7; 0.3; -0.2; -0.9; 0.1; 0.25; 0.15 ]   // keeps -0.5, 0.7, 0.3, -0.9
let private tau3 = [ 0.2; -0.3; -0.45; 0.6; 0.1; -0.7; 0.35; -0.05 ] // keeps -0.45, 0.6, -0.7, 0.35

let private perturbed = perturbedStories
let private weights = weightsOf

/// TIES in float64 from float32 task vectors: top-⌊d·n⌋ by magnitude, weighted, the sign of the sum elected (+ at 0),
/// the mean of the weighted entries of that sign.
let private tiesReference (taus: float32[][]) (w: float[]) (d: float) =
    let n = taus[0].Length
    let k = int (floor (d * float n + 1e-9))
    let trimmed =
        taus |> Array.mapi (fun i tau ->
            let keep = Array.zeroCreate n
            for j in Array.init n id |> Array.sortByDescending (fun j -> abs tau[j]) |> Array.take k do keep[j] <- true
            Array.init n (fun j -> if keep[j] then w[i] * float tau[j] else 0.0))
    Array.init n (fun j ->
        let elected = if trimmed |> Array.sumBy (fun x -> x[j]) >= 0.0 then 1.0 else -1.0
        let agree = trimmed |> Array.map (fun x -> x[j]) |> Array.filter (fun v -> v <> 0.0 && float (sign v) = elected)
        if agree.Length = 0 then 0.0 else Array.average agree)

[<Tests>]
let rules =
    testList "Merge.rules" [
        test "Merge.rules.taskArithmetic: Σ wᵢ·τᵢ by hand" {
            use r = TaskMerge.TaskArithmetic([| t [ 1.0; -2.0; 0.5; 3.0; 0.0; -1.0 ]; t [ 0.5; 1.0; -0.5; -1.0; 2.0; -1.0 ] |], [| 1.0; 0.5 |])
            close "1·τ1 + 0.5·τ2" (values r) [ 1.25; -1.5; 0.25; 2.5; 1.0; -1.5 ]
        }

        test "Merge.rules.trim: ⌊d·n⌋ largest magnitudes kept, the rest 0" {
            Expect.equal (TaskMerge.Kept(8L, 0.5), TaskMerge.Kept(10L, 0.3), TaskMerge.Kept(64L, 0.2), TaskMerge.Kept(3L, 0.2), TaskMerge.Kept(5L, 1.0)) (4L, 3L, 12L, 0L, 5L) "⌊d·n⌋"
            use a = TaskMerge.Trim(t tau1, 0.5)
            close "τ1 at 0.5" (values a) [ 0.9; 0.0; 0.4; -0.8; 0.0; 0.0; -0.6; 0.0 ]
            use b = TaskMerge.Trim(t tau3, 0.25)
            close "τ3 at 0.25" (values b) [ 0.0; 0.0; 0.0; 0.6; 0.0; -0.7; 0.0; 0.0 ]
            use m = TaskMerge.Trim(torch.tensor([| 3.0f; -1.0f; 2.0f; -4.0f |]).reshape(2L, 2L), 0.5)
            Expect.equal m.shape [| 2L; 2L |] "the shape kept"
            close "a matrix, over all its entries" (values m) [ 3.0; 0.0; 0.0; -4.0 ]
        }

        test "Merge.rules.ties: trim, elect by the total, disjoint mean — by hand, unweighted and weighted" {
            // trimmed (d = 0.5): τ̂1 = [.9 0 .4 -.8 0 0 -.6 0], τ̂2 = [-.5 .7 .3 0 -.9 0 0 0], τ̂3 = [0 0 -.45 .6 0 -.7 .35 0]
            // entry 0: .9 - .5 = .4 ≥ 0 → +, mean of {.9}; entry 2: .4 + .3 - .45 > 0 → +, mean of {.4, .3}; entry 3: -.8 + .6 < 0
            // → -, {-.8}; entry 6: -.6 + .35 < 0 → {-.6}; entry 7: all 0 → 0
            use r = TaskMerge.Ties([| t tau1; t tau2; t tau3 |], [| 1.0; 1.0; 1.0 |], 0.5)
            close "weights 1" (values r) [ 0.9; 0.7; 0.35; -0.8; -0.9; -0.7; -0.6; 0.0 ]
            // weights 1, 2, 0.5 scale the trimmed vectors before the election: entry 0: .9 - 1.0 < 0 → -, {-1.0} (the
            // sign flips); entry 2: .4 + .6 - .225 > 0 → mean of {.4, .6}; entry 3: -.8 + .3 < 0 → {-.8}; entry 5: {-.35}
            use w = TaskMerge.Ties([| t tau1; t tau2; t tau3 |], [| 1.0; 2.0; 0.5 |], 0.5)
            close "weights 1, 2, 0.5" (values w) [ -1.0; 1.4; 0.5; -0.8; -1.8; -0.35; -0.6; 0.0 ]
            // density 1 trims nothing: entry 0 (.9, -.5, .2): total .6 → +, mean of {.9, .2}
            use full = TaskMerge.Ties([| t tau1; t tau2; t tau3 |], [| 1.0; 1.0; 1.0 |], 1.0)
            let fv = values full
            Expect.floatClose Accuracy.high fv[0] 0.55 "density 1: entry 0"
            Expect.floatClose Accuracy.high fv[1] 0.7 "density 1: entry 1 (-.1 + .7 - .3 = .3 → +, {.7})"
        }

        test "Merge.rules.dare: each entry kept when its uniform draw is below d, rescaled by 1/d, task by task from one generator" {
            let d = 0.4
            let a = [ 1.0; -2.0; 0.5; 3.0; 0.25; -1.0; 2.0; -0.5; 1.5; 4.0 ]
            let b = [ -1.0; 1.0; 1.0; -2.0; 0.5; 0.5; -3.0; 1.0; 2.5; -4.0 ]
            use g = new torch.Generator(11UL)
            use r = TaskMerge.Dare([| t a; t b |], [| 1.0; 0.5 |], d, g)
            // the same draws, by hand
            use h = new torch.Generator(11UL)
            let u1 = values (torch.rand([| 10L |], torch.ScalarType.Float32, generator = h))
            let u2 = values (torch.rand([| 10L |], torch.ScalarType.Float32, generator = h))
            let keep (u: float) = if u < d then 1.0 / d else 0.0
            let expected = List.init 10 (fun j -> a[j] * keep u1[j] + 0.5 * b[j] * keep u2[j])
            close "Σ wᵢ·τᵢ·keepᵢ/d" (values r) expected
            Expect.isTrue (Array.append u1 u2 |> Array.exists (fun u -> u < d) && Array.append u1 u2 |> Array.exists (fun u -> u >= d)) "some kept, some dropped"
            // density 1 keeps everything: task arithmetic exactly
            use g1 = new torch.Generator(0UL)
            use all = TaskMerge.Dare([| t a; t b |], [| 1.0; 0.5 |], 1.0, g1)
            use ta = TaskMerge.TaskArithmetic([| t a; t b |], [| 1.0; 0.5 |])
            Expect.equal (values all) (values ta) "d = 1 is task arithmetic"
            use g2 = new torch.Generator(0UL)
            use dt = TaskMerge.DareTies([| t tau1; t tau2; t tau3 |], [| 1.0; 1.0; 1.0 |], 1.0, g2)
            use ti = TaskMerge.Ties([| t tau1; t tau2; t tau3 |], [| 1.0; 1.0; 1.0 |], 1.0)
            Expect.equal (values dt) (values ti) "DARE-TIES at d = 1 is TIES at d = 1"
        }

        test "Merge.rules.dare: over 10⁶ entries about d are kept, each × 1/d, the mean unchanged; a seed gives the same draws" {
            let n, d = 1_000_000L, 0.3
            use ones = torch.ones([| n |])
            use g = new torch.Generator(5UL)
            use x = TaskMerge.Drop(ones, d, g)
            let v = values x
            let kept = v |> Array.filter (fun x -> x <> 0.0)
            let frac = float kept.Length / float n
            Expect.isLessThan (abs (frac - d)) (5.0 * sqrt (d * (1.0 - d) / float n)) $"kept fraction {frac} ≈ {d}"
            Expect.all kept (fun x -> abs (x - 1.0 / d) < 1e-6) "every kept entry is 1/d"
            Expect.isLessThan (abs (Array.average v - 1.0)) (5.0 * sqrt ((1.0 - d) / d / float n)) "E[τ̃] = τ"
            use g' = new torch.Generator(5UL)
            use again = TaskMerge.Drop(ones, d, g')
            Expect.isTrue (x.eq(again).all().item<bool>()) "seed 5 again: the same entries"
            use g6 = new torch.Generator(6UL)
            use other = TaskMerge.Drop(ones, d, g6)
            Expect.isFalse (x.eq(other).all().item<bool>()) "seed 6: other entries"
        }

        test "Merge.rules.errors: density outside (0, 1], weights that do not match the models, vectors of two shapes" {
            let e = throwsWith<OptionException> (fun () -> TaskMerge.Trim(t tau1, 0.0) |> ignore)
            Expect.stringStarts e.Message "Density 0: expected 0 < d ≤ 1" "density 0"
            let e = throwsWith<OptionException> (fun () -> MergeOptions(MergeMethod.Ties, Density = 1.5).Check 2)
            Expect.stringStarts e.Message "Density 1.5" "density 1.5"
            let e = throwsWith<OptionException> (fun () -> MergeOptions(MergeMethod.TaskArithmetic, [| 1.0 |]).Check 2)
            Expect.stringStarts e.Message "Weights 1: 1 weight for 2 fine-tuned models" "one weight for two models"
            MergeOptions(MergeMethod.TaskArithmetic, Density = 7.0).Check 2   // task arithmetic has no density to check
            throwsWith<ArgumentException> (fun () -> TaskMerge.TaskArithmetic([| t [ 1.0; 2.0 ]; t [ 1.0 ] |], [| 1.0; 1.0 |]) |> ignore) |> ignore
        }
    ]

[<Tests>]
let folders =
    testSequenced <| testList "Merge.folders" [
        test "Merge.folders.ties: every tensor of two perturbed stories260K merged as a float64 TIES by hand; mofo generate reads it" {
            use dir = new TempDir()
            let basePath = requireAsset DataRoot.Assets.Stories260K
            let t1, t2 = perturbed (dir.File "t1") 1UL 0.01, perturbed (dir.File "t2") 2UL 0.02
            let out = dir.File "ties"
            let code, stdout, err = mofo [ "merge"; "--method"; "ties"; "--base"; basePath; "--tuned"; t1; "--tuned"; t2; "--weights"; "1,0.5"; "--density"; "0.5"; "--output"; out ]
            Expect.equal code 0 err
            Expect.stringContains stdout "merged (TIES d=0.5)" "the summary line"
            let w0, w1, w2, w = weights basePath, weights t1, weights t2, weights out
            Expect.equal (Set.ofSeq w.Keys) (Set.ofSeq w0.Keys) "the base's tensors"
            for KeyValue (k, b) in w0 do
                // the task vectors as the merge computes them: float32 differences
                let tau (x: float32[]) = Array.map2 (fun (a: float32) (c: float32) -> a - c) x b
                let expected = tiesReference [| tau w1[k]; tau w2[k] |] [| 1.0; 0.5 |] 0.5
                let merged = w[k]
                let worst = Array.init b.Length (fun j -> abs (float merged[j] - (float b[j] + expected[j])) / max 1.0 (abs (float b[j]))) |> Array.max
                Expect.isLessThan worst 1e-6 $"{k}: θ_base + TIES(τ1, 0.5·τ2) (worst {worst:G3})"
            let code, text, err = mofo [ "generate"; "--model"; out; "--prompt"; "Once upon a time"; "--max-new-tokens"; "8" ]
            Expect.equal code 0 err
            Expect.isGreaterThan (text.Trim().Length) "Once upon a time".Length "text after the prompt"
        }

        test "Merge.folders.dare: a seed gives the same model, another seed another; about 1 − (1 − d)² of the entries move; task arithmetic is θ_base + Σ wᵢ·τᵢ" {
            use dir = new TempDir()
            let basePath = requireAsset DataRoot.Assets.Stories260K
            let t1, t2 = perturbed (dir.File "t1") 1UL 0.01, perturbed (dir.File "t2") 2UL 0.01
            let merge (args: string list) (name: string) =
                let out = dir.File name
                let code, _, err = mofo ([ "merge"; "--base"; basePath; "--tuned"; $"{t1},{t2}"; "--output"; out ] @ args)
                Expect.equal code 0 err
                weights out
            let a = merge [ "--method"; "dare"; "--density"; "0.5"; "--seed"; "3" ] "a"
            let b = merge [ "--method"; "dare"; "--density"; "0.5"; "--seed"; "3" ] "b"
            let c = merge [ "--method"; "dare"; "--density"; "0.5"; "--seed"; "4" ] "c"
            Expect.equal a b "seed 3 twice: the same weights"
            Expect.notEqual a c "seed 4: other weights"
            let w0 = weights basePath
            let e0, ea = w0["model.embed_tokens.weight"], a["model.embed_tokens.weight"]
            let moved = float (Array.fold2 (fun n (x: float32) y -> if x <> y then n + 1 else n) 0 e0 ea) / float e0.Length
            Expect.isLessThan (abs (moved - 0.75)) 0.02 $"embeddings moved where either task kept its entry: {moved:F3} ≈ 0.75"
            let ta = merge [ "--method"; "task-arithmetic"; "--weights"; "0.5, -1" ] "ta"
            let w1, w2 = weights t1, weights t2
            for KeyValue (k, v) in ta do
                let b, x1, x2 = w0[k], w1[k], w2[k]
                let worst = Array.init v.Length (fun j -> let x = float b[j] + 0.5 * (float x1[j] - float b[j]) - (float x2[j] - float b[j]) in abs (float v[j] - x) / max 1.0 (abs x)) |> Array.max
                Expect.isLessThan worst 1e-6 $"{k}: θ_base + 0.5·τ1 − τ2"
            let code, _, err = mofo [ "generate"; "--model"; dir.File "a"; "--prompt"; "Once upon a time"; "--max-new-tokens"; "4" ]
            Expect.equal code 0 err
        }

        test "Merge.folders.errors: another architecture names the tensors or the field and both files (exit 4); bad flags are one line (exit 2)" {
            use dir = new TempDir()
            let basePath = requireAsset DataRoot.Assets.Stories260K
            let t1 = perturbed (dir.File "t1") 1UL 0.01
            let config (edit: Text.Json.Nodes.JsonObject -> unit) =
                let o = Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(t1, "config.json"))).AsObject()
                edit o
                ModelConfig.Parse(o, "edited")
            let write name (c: ModelConfig) =
                RandomCheckpoint.Write(dir.File name, c, torch.ScalarType.Float32, 0L, requireAsset DataRoot.Assets.Tok512) |> ignore
                dir.File name
            let wider = write "wider" (config (fun o -> o["intermediate_size"] <- 180))
            let shallow = write "shallow" (config (fun o -> o["num_hidden_layers"] <- 1))
            let rope = write "rope" (config (fun o -> o["rope_theta"] <- 500000.0))
            for other, named in [ wider, "model.layers.0.mlp.gate_proj.weight: shape [172, 64]"; shallow, "model.layers.1"; rope, "rope_theta: 10000" ] do
                let code, _, err = mofo [ "merge"; "--method"; "ties"; "--base"; basePath; "--tuned"; t1; "--tuned"; other; "--output"; dir.File "x" ]
                Expect.equal code 4 $"a checkpoint error: {err}"
                Expect.stringContains err named "the tensor or field is named"
                Expect.stringContains err (Path.GetFileName other) "the fine-tune's file"
                Expect.stringContains err "stories260K" "the base's file"
                Expect.isFalse (Directory.Exists(dir.File "x")) "nothing written"
            let oneLine (args: string list) (expected: string) =
                let code, out, err = mofo ([ "merge"; "--base"; basePath; "--tuned"; t1 ] @ args)
                Expect.equal code 2 $"{args}: exit 2: {err}"
                Expect.equal out "" "nothing on stdout"
                Expect.equal (err.TrimEnd('\n').Split('\n').Length) 1 $"one line: {err}"
                Expect.stringStarts err expected $"{args}"
            oneLine [ "--method"; "tie"; "--output"; dir.File "y" ] "mofo: --method: 'tie' is not one of task-arithmetic, ties, dare, dare-ties"
            oneLine [ "--method"; "ties"; "--weights"; "1,2"; "--output"; dir.File "y" ] "mofo: --weights 1,2: 2 weights for 1 fine-tuned model"
            oneLine [ "--method"; "ties"; "--weights"; "1,x"; "--output"; dir.File "y" ] "mofo: --weights: 'x' is not a number"
            oneLine [ "--method"; "dare"; "--density"; "0"; "--output"; dir.File "y" ] "mofo: --density 0: expected 0 < d ≤ 1"
            oneLine [ "--method"; "task-arithmetic"; "--density"; "0.5"; "--output"; dir.File "y" ] "mofo: --density: task-arithmetic keeps every entry"
            oneLine [ "--method"; "ties"; "--seed"; "1"; "--output"; dir.File "y" ] "mofo: --seed: only dare and dare-ties draw at random"
            oneLine [ "--method"; "ties" ] "mofo: --output is required"
            Directory.CreateDirectory(dir.File "full") |> ignore
            File.WriteAllText(dir.File "full/keep.txt", "x")
            oneLine [ "--method"; "ties"; "--output"; dir.File "full" ] "mofo: --output"
        }
    ]
