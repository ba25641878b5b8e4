/// LISA, BAdam and Spectrum: members that train a moving or static subset of the whole model, checked against hand
/// computations on tiny named models; resume bit-identical; the memory plan; `mofo train` end to end.
module MoFO.Tests.OptimSubsets

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open MoFO
open MoFO.Optim
open MoFO.Data
open MoFO.Training
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures
open MoFO.Tests.OptimHelpers

type private Parameter = TorchSharp.Modules.Parameter

/// A tiny Llama-like model's named parameters: embeddings, per layer q_proj, up_proj and a norm, the final norm, the head.
let private model (layers: int) (seed: int64) =
    use g = gen seed
    let p (shape: int64[]) = new Parameter(torch.randn(shape, generator = g), true)
    [ yield "model.embed_tokens.weight", p [| 16L; 8L |]
      for i in 0 .. layers - 1 do
          yield $"model.layers.{i}.self_attn.q_proj.weight", p [| 8L; 8L |]
          yield $"model.layers.{i}.mlp.up_proj.weight", p [| 12L; 8L |]
          yield $"model.layers.{i}.input_layernorm.weight", p [| 8L |]
      yield "model.norm.weight", p [| 8L |]
      yield "lm_head.weight", p [| 16L; 8L |] ]

/// The pairs as the optimizers take them ((string, Parameter) value tuples).
let private named (ps: (string * Parameter) list) = ps |> List.map (fun (n, p) -> struct (n, p))

let private copyOf (ps: (string * Parameter) list) = ps |> List.map (fun (n, p) -> n, new Parameter(p.detach().clone(), p.requires_grad))

let private weightsFor (ps: (string * Parameter) list) = makeWeights 9L (ps |> List.map (fun (_, p) -> p :> torch.Tensor))

/// One step on Σ sin(p)·w; returns each parameter's gradient as the step saw it (None without one).
let private step (opt: BlockOptimizer) (ps: (string * Parameter) list) (ws: torch.Tensor list) =
    opt.zero_grad()
    use scope = torch.NewDisposeScope()
    let loss = List.map2 (fun (_, p: Parameter) (w: torch.Tensor) -> p.sin().mul(w).sum()) ps ws |> List.reduce (fun a b -> a.add(b))
    loss.backward()
    let grads = ps |> List.map (fun (_, p) -> match p.grad with null -> None | g -> Some (toArray g))
    opt.step()
    grads

let private layerOf (name: string) = DecoderLayers.Of name |> Option.ofNullable

/// The layers that moved in a step, and whether every tensor outside the layers moved.
let private moved (before: float32[] list) (ps: (string * Parameter) list) =
    List.zip before ps |> List.filter (fun (b, (_, p)) -> b <> toArray p) |> List.map (fun (_, (n, _)) -> n)

let private blockOf (opt: BlockOptimizer) (name: string) = opt.Blocks |> Seq.find (fun b -> b.Name = name)

/// The draws of a seeded generator as the members' rule says: the first k of a permutation of n, ascending.
let private draws (seed: int64) (n: int) (k: int) (count: int) =
    use g = gen seed
    [ for _ in 1 .. count -> (torch.randperm(int64 n, generator = g).data<int64>().ToArray() |> Array.take k |> Array.map int |> Array.sort |> Array.toList) ]

/// Checks that the trained set of a step is exactly `active` (layers) plus `outside` (always trained): before the step,
/// the blocks' kinds, requires_grad and no moments for frozen blocks; after it, the tensors that moved.
let private expectTrained (opt: BlockOptimizer) (ps: (string * Parameter) list) (ws: torch.Tensor list) (active: int list) (outside: bool) (what: string) =
    let trains n = match layerOf n with Some l -> List.contains l active | None -> outside
    for n, p in ps do
        let b = blockOf opt n
        Expect.equal (b.Kind = BlockKind.Frozen) (not (trains n)) $"{what}: {n} frozen iff not trained"
        Expect.equal p.requires_grad (trains n) $"{what}: {n}'s requires_grad"
        if not (trains n) then Expect.equal b.Moments.Count 0 $"{what}: {n} frozen holds no moments"
    let before = ps |> List.map (fun (_, p) -> toArray p)
    let grads = step opt ps ws
    let movedNames = moved before ps
    for (n, _), g in List.zip ps grads do
        Expect.equal (List.contains n movedNames) (trains n) $"{what}: {n} moved iff trained"
        if not (trains n) then Expect.isNone g $"{what}: {n} frozen takes no gradient"
    grads

[<Tests>]
let subsets =
    testList "Optim.subsets" [
        test "Optim.subsets.lisa: outside tensors always trained; every K steps the seeded draw of L layers; next window's requires_grad; departed layers restart from zero" {
            let ps = model 5 3L
            let ws = weightsFor ps
            let k, windows = 3, 6
            use opt = new LISA(named ps, lr = 1e-2, layers = 2, interval = k, seed = 7L)
            let schedule = draws 7L 5 2 windows
            // the draw of window w trains steps w·K + 1 … (w + 1)·K
            let activeAt t = schedule.[(t - 1) / k]
            let returns = [ for w in 2 .. windows - 1 do for l in schedule.[w] do if not (List.contains l schedule.[w - 1]) && List.exists (List.contains l) schedule.[0 .. w - 2] then yield l ]
            Expect.isNonEmpty returns "the seed's schedule has a layer that leaves and comes back"
            let mutable age = Map.empty
            for t in 1 .. windows * k do
                Expect.equal (List.ofSeq opt.Active) (activeAt t) $"step {t}: the seeded draw"
                for n, _ in ps do
                    match layerOf n with
                    | Some l -> Expect.equal (blockOf opt n).Step (if List.contains l (activeAt t) then int64 (defaultArg (age.TryFind l) 0) else 0L) $"step {t}: {n}'s step counts from its (re)activation"
                    | None -> Expect.equal (blockOf opt n).Step (int64 (t - 1)) $"step {t}: {n} outside the layers steps every step"
                let grads = expectTrained opt ps ws (activeAt t) true $"LISA step {t}"
                for l in 0 .. 4 do
                    age <- age |> Map.add l (if List.contains l (activeAt t) then (defaultArg (age.TryFind l) 0) + 1 else 0)
                for (n, _), g in List.zip ps grads do
                    match layerOf n with
                    | Some l when age.[l] = 1 && t % k <> 0 ->
                        // a fresh block: m = (1 − β1)·g from zero moments
                        let expected = g.Value |> Array.map (fun x -> x * 0.1f)
                        let m = toArray (blockOf opt n).Moments.[0]
                        Expect.isLessThan (Array.map2 (fun (a: float32) b -> abs (float a - float b)) m expected |> Array.max) 1e-6 $"step {t}: {n} starts from zero moments"
                    | _ -> ()
        }

        test "Optim.subsets.badam: one layer at a time for K steps in each order (random: a fresh seeded permutation per pass); outside frozen; states dropped at each switch" {
            for order in [ BlockOrder.Ascending; BlockOrder.Descending; BlockOrder.Random ] do
                let ps = model 4 5L
                let ws = weightsFor ps
                let k = 2
                use opt = new BAdam(named ps, lr = 1e-2, interval = k, order = order, seed = 11L)
                let sequence =
                    match order with
                    | BlockOrder.Ascending -> [ 0; 1; 2; 3; 0; 1 ]
                    | BlockOrder.Descending -> [ 3; 2; 1; 0; 3; 2 ]
                    | _ ->
                        use g = gen 11L
                        [ for _ in 1 .. 2 do yield! torch.randperm(4L, generator = g).data<int64>().ToArray() |> Array.map int ] |> List.take 6
                for t in 1 .. 6 * k do
                    let layer = sequence.[(t - 1) / k]
                    Expect.equal opt.Active layer $"{order} step {t}: the active layer"
                    for n, _ in ps do
                        if layerOf n = Some layer then Expect.equal (blockOf opt n).Step (int64 ((t - 1) % k)) $"{order} step {t}: {n} restarted at the switch"
                    expectTrained opt ps ws [ layer ] false $"BAdam {order} step {t}" |> ignore
        }

        test "Optim.subsets.resume: LISA and BAdam resumed mid-window (state through a file and a dictionary) are bit-identical to straight runs" {
            let makers : (string * ((string * Parameter) list -> BlockOptimizer)) list =
                [ "lisa", (fun ps -> new LISA(named ps, lr = 1e-2, layers = 2, interval = 3, seed = 5L))
                  "badam", (fun ps -> new BAdam(named ps, lr = 1e-2, interval = 2, order = BlockOrder.Random, seed = 5L)) ]
            for name, make in makers do
                for viaFile in [ false; true ] do
                    let straight = model 5 21L
                    let ws = weightsFor straight
                    let resumed = copyOf straight
                    use o1 = make straight
                    for _ in 1 .. 9 do step o1 straight ws |> ignore
                    use o2 = make resumed
                    for _ in 1 .. 4 do step o2 resumed ws |> ignore
                    let copies = copyOf resumed
                    use o3 = make copies
                    copyState o2 o3 viaFile
                    for _ in 1 .. 5 do step o3 copies ws |> ignore
                    for (n, a), (_, b) in List.zip straight copies do
                        Expect.isTrue (bitEqual a b) $"{name} (file {viaFile}): {n} bit-identical after resume"
                        Expect.equal a.requires_grad b.requires_grad $"{name}: {n}'s requires_grad"
                    for b1, b3 in Seq.zip o1.Blocks o3.Blocks do
                        Expect.equal b1.Kind b3.Kind $"{name}: {b1.Name}'s kind"
                        for m1, m3 in Seq.zip b1.Moments b3.Moments do Expect.isTrue (bitEqual m1 m3) $"{name}: {b1.Name}'s moments"
        }

        test "Optim.subsets.spectrum: the SNR of each module against a float64 SVD and the hand-written Marchenko–Pastur rule; the top fraction per type trained, the rest frozen" {
            // planted rank-1 signals of different strengths over noise, so that the ranking is clear
            let layers = 4
            let ps = model layers 8L
            let strength = [| 3.0; 0.5; 4.0; 1.5 |]
            use g = gen 99L
            for n, p in ps do
                match layerOf n with
                | Some l when p.dim() = 2L ->
                    let u, v = torch.randn([| p.shape.[0]; 1L |], generator = g), torch.randn([| 1L; p.shape.[1] |], generator = g)
                    use _ = torch.no_grad()
                    p.mul_(torch.tensor 0.1f).add_(u.matmul(v).mul(torch.tensor (float32 strength.[(l + (if n.Contains "mlp" then 1 else 0)) % layers]))) |> ignore
                | _ -> ()
            let reference (w: torch.Tensor) =
                let w2 = if w.dim() < 2L then w.reshape(1L, -1L) else w
                let s = torch.linalg.svdvals(w2.detach().to_type(torch.ScalarType.Float64)).data<float>().ToArray() |> Array.sortDescending
                let asc = Array.sort s
                let q (x: float) =
                    let pos = x * float (asc.Length - 1)
                    let lo = int (floor pos)
                    let hi = min (lo + 1) (asc.Length - 1)
                    asc.[lo] + (pos - float lo) * (asc.[hi] - asc.[lo])
                let sigma = (q 0.75 - q 0.25) / 1.349
                let m, n = float w2.shape.[0], float w2.shape.[1]
                let beta = (min m n) / (max m n)
                let edge = sigma * (1.0 + sqrt beta)
                let signal = s |> Array.filter (fun x -> x > edge) |> Array.sum
                let below = s |> Array.filter (fun x -> x <= edge)
                let noise = if below.Length = 0 then 1.0 else Array.sum below
                signal / noise / s.[0]
            use opt = new Spectrum(named ps, lr = 1e-2, fraction = 0.5)
            let scores = opt.Scores |> Seq.map (fun s -> s.Module, s) |> Map.ofSeq
            for n, p in ps do
                let s = scores.[Spectrum.ModuleOf n]
                let r = reference p
                Expect.floatClose { absolute = 1e-6; relative = 1e-4 } s.Snr r $"{n}: SNR as the float64 reference"
            // per type the top ⌊0.5·4⌋ = 2 by the reference SNR (ties: the earlier layer); 2-D tensors outside always
            let byType = ps |> List.filter (fun (n, _) -> (layerOf n).IsSome) |> List.groupBy (fun (n, _) -> DecoderLayers.After(Spectrum.ModuleOf n))
            let chosen =
                byType |> List.collect (fun (_, members) ->
                    members |> List.mapi (fun i (n, p) -> n, reference p, i) |> List.sortBy (fun (_, r, i) -> -r, i) |> List.take 2 |> List.map (fun (n, _, _) -> n))
            let expected = set chosen + set [ "model.embed_tokens.weight"; "lm_head.weight" ]
            Expect.isTrue (chosen |> List.exists (fun n -> n.Contains "q_proj" && n.Contains ".2.")) "the strongest planted q_proj (layer 2) is chosen"
            Expect.isTrue (chosen |> List.contains "model.layers.0.input_layernorm.weight" && chosen |> List.contains "model.layers.1.input_layernorm.weight") "norms tie (SNR 1): the first layers'"
            Expect.isFalse (expected.Contains "model.norm.weight") "the final norm: a type of one module, frozen"
            for _ in 1 .. 2 do
                let before = ps |> List.map (fun (_, p) -> toArray p)
                let grads = step opt ps (weightsFor ps)
                let movedNames = moved before ps
                for (n, p), g in List.zip ps grads do
                    let trained = expected.Contains n
                    Expect.equal (List.contains n movedNames) trained $"{n} moved iff chosen"
                    Expect.equal p.requires_grad trained $"{n}: requires_grad iff chosen"
                    Expect.equal g.IsSome trained $"{n}: a gradient iff chosen"
                    if not trained then Expect.equal (blockOf opt n).Moments.Count 0 $"{n}: no moments"
            let struct (name: string, text: string) = opt.RunFiles() |> Seq.exactlyOne
            Expect.equal name "spectrum.json" "the run file"
            use doc = JsonDocument.Parse text
            let listed = doc.RootElement.GetProperty("trained").EnumerateArray() |> Seq.map (fun e -> e.GetString() + ".weight") |> set
            Expect.equal listed expected "spectrum.json lists the trained modules"
        }

        test "Optim.subsets.plan: BAdam's plan counts moments and gradients of the largest layer only; LISA's of L layers and the outside (Llama-2-7B, by hand)" {
            let c = MoFO.Models.ModelPresets.Llama2_7B
            let h, i = int64 c.HiddenSize, int64 c.IntermediateSize
            let q, kv = int64 c.NumAttentionHeads * int64 c.HeadDim, int64 c.NumKeyValueHeads * int64 c.HeadDim
            let perLayer = h * q + 2L * h * kv + q * h + 3L * h * i + 2L * h
            let outside = 2L * int64 c.VocabSize * h + h
            let input name = PlanInput(c, Methods.Parse name, Precision.Float32, 1, 512, true)
            let adamw = MemoryPlanner.Plan(input "adamw")
            let badam = MemoryPlanner.Plan(input "badam")
            let lisa = MemoryPlanner.Plan(input "lisa")
            Expect.equal (adamw.Part "optimizer state") (8L * adamw.Parameters) "AdamW: two float32 moments for every parameter"
            Expect.equal (badam.Part "optimizer state") (8L * perLayer) "BAdam: two float32 moments for one layer"
            Expect.equal (lisa.Part "optimizer state") (8L * (2L * perLayer + outside)) "LISA: two layers and the embeddings, head, final norm"
            Expect.equal (badam.Part "gradients") (4L * perLayer) "BAdam: one layer's gradients"
        }

        test "Optim.subsets.spec: the options are part of MethodSpec (equality, text, validation naming the field)" {
            let a = Methods.Parse("lisa", subset = SubsetSpec(LisaLayers = 3))
            Expect.equal a (Methods.Parse("lisa", subset = SubsetSpec(LisaLayers = 3))) "equal specs"
            Expect.notEqual a (Methods.Parse "lisa") "the options count in equality"
            Expect.equal (string a) "lisa(layers=3, every 20 steps)" "the text"
            Expect.equal (string (Methods.Parse("badam", subset = SubsetSpec(BAdamOrder = BlockOrder.Ascending)))) "badam(every 50 steps, ascending)" "BAdam's text"
            Expect.equal (string (Methods.Parse "spectrum")) "spectrum(fraction=0.25)" "Spectrum's text"
            Expect.isNull (box (Methods.Parse "mofo").Subset) "other members carry no subset options"
            let e = throwsWith<OptionException> (fun () -> Methods.Validate(Methods.Parse("spectrum", subset = SubsetSpec(SpectrumFraction = 0.0))))
            Expect.equal e.Field "SpectrumFraction" "names the field"
            let e2 = throwsWith<OptionException> (fun () -> Methods.Parse("mofo", subset = SubsetSpec()) |> ignore)
            Expect.equal e2.Field "Method" "options of another member are refused"
            Expect.equal (MoFO.Dsl.Method.LISA(2, 20)).Spec (Methods.Parse "lisa") "the DSL's LISA (2, 20) is the default"
            Expect.equal (MoFO.Dsl.Method.Spectrum 0.5).Key "spectrum0.5" "a key"
        }

        test "Optim.subsets.trainerResume: a LISA or BAdam run killed mid-way and resumed from its checkpoint ends with the weights of an uninterrupted run" {
            ConsoleProgress.Enabled <- false
            let train = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr) |> Seq.truncate 32 |> Seq.toArray
            let weights (lm: MoFO.Models.CausalLM) = lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq
            use dir = new TempDir()
            for name, subset in [ "lisa", SubsetSpec(LisaLayers = 2, LisaInterval = 3); "badam", SubsetSpec(BAdamInterval = 2) ] do
                let options = TrainingOptions(Method = Methods.Parse(name, subset = subset), LearningRate = 1e-3, Steps = Nullable 6, BatchSize = 4,
                                              MicroBatchSize = 4, MaxLength = 96, SaveEvery = 2, ShowProgress = false)
                let full =
                    use lm = MoFO.Models.ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
                    Trainer(lm, train, null, options, dir.File $"{name}-full").Run() |> ignore
                    weights lm
                let killed = dir.File $"{name}-killed"
                do
                    use lm = MoFO.Models.ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
                    let t = Trainer(lm, train, null, options, killed)
                    t.OnStep <- fun m -> if m.Step = 5 then failwith "simulated crash"
                    throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
                use lm = MoFO.Models.ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
                let r = Trainer(lm, train, null, options, killed).Run(resume = true)
                Expect.equal r.Steps 6 $"{name}: finished"
                let resumed = weights lm
                for KeyValue (n, w) in full do Expect.equal resumed[n] w $"{name}: {n} bit-identical"
        }

        test "Optim.subsets.train: mofo train with lisa, badam and spectrum for 8 steps on stories260K + DPR (spectrum.json in the run folder)" {
            let model, data = requireAsset DataRoot.Assets.Stories260K, requireAsset DataRoot.Assets.DprTrain
            use dir = new TempDir()
            for m, extra in [ "lisa", [ "--lisa-layers"; "1"; "--lisa-interval"; "3" ]; "badam", [ "--badam-interval"; "2"; "--badam-order"; "ascending" ]; "spectrum", [] ] do
                let out = dir.File m
                let code, _, err =
                    captureConsole (fun () ->
                        MoFO.Dsl.Cli.Main.run (Array.ofList ([ "train"; "--model"; model; "--data"; data; "--format"; "dpr"; "--steps"; "8"; "--batch-size"; "2"
                                                               "--max-len"; "128"; "--limit"; "16"; "--lr"; "1e-3"; "--method"; m; "--output"; out ] @ extra)))
                Expect.equal code 0 $"{m}: {err}"
                let summary = RunFolder(out).ReadSummary()
                Expect.equal summary.Steps 8 $"{m}: 8 steps"
                Expect.stringStarts summary.Method m $"{m}: the summary names the method"
                Expect.equal (File.Exists(Path.Combine(out, "spectrum.json"))) (m = "spectrum") $"{m}: spectrum.json only for spectrum"
        }
    ]
