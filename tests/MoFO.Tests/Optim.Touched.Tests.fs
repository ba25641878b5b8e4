/// The touched mask as a bit per entry (TouchedBits: ⌈numel/8⌉ bytes, bit j of byte i for entry 8i + j): on every
/// path it holds exactly the entries that ever moved (an independent record kept here from the weights before and after
/// each step, weight decay 0), with the bits past numel clear; the speculative kernel's undo restores the old bits; a
/// saved state (packed, or the byte-per-entry form of earlier versions) resumes; the memory plan counts ⌈n/8⌉ bytes.
module MoFO.Tests.OptimTouched

open System
open System.IO
open Expecto
open TorchSharp
open MoFO.Optim
open MoFO.Training
open MoFO.Tests.OptimHelpers

let private pathName fast = if fast then "fast path" else "torch-ops path"

let private packedBytes (t: Tensor) : byte[] = t.cpu().contiguous().data<byte>().ToArray()

/// The touched bits of a block unpacked to a bool per entry, read straight from the bytes (not through TouchedBits).
let private bitsOf (b: Block) : bool[] =
    let bytes = packedBytes b.Touched
    Array.init (int b.Numel) (fun i -> (bytes.[i / 8] >>> (i % 8)) &&& 1uy = 1uy)

/// The packed mask's size and its bits past numel (which must stay clear).
let private expectTail (b: Block) (what: string) =
    let bytes = packedBytes b.Touched
    Expect.equal b.Touched.dtype torch.ScalarType.Byte $"{what}: uint8"
    Expect.equal b.Touched.shape [| (b.Numel + 7L) / 8L |] $"{what}: ⌈{b.Numel}/8⌉ bytes, flat"
    let r = int (b.Numel % 8L)
    if r <> 0 then
        Expect.equal (bytes.[bytes.Length - 1] &&& byte (0xFF <<< r)) 0uy $"{what}: the bits past numel stay clear"

/// The touched bits of every block = the entries ever moved (kept by the caller), and the counts agree.
let private expectEver (o: BlockOptimizer) (ever: bool[] list) (what: string) =
    for b, e in Seq.zip o.Blocks ever do
        let at = $"{what}, {b.Name} ({b.Numel} entries)"
        expectTail b at
        let bits = bitsOf b
        match Array.tryFindIndex id (Array.map2 (<>) bits e) with
        | Some i -> failtestf "%s: entry %d touched %b but moved %b" at i bits.[i] e.[i]
        | None -> ()
        use u = TouchedBits.Unpack(b.Touched, b.Numel)
        Expect.sequenceEqual (u.data<bool>().ToArray()) e $"{at}: TouchedBits.Unpack"
    let moved = ever |> List.sumBy (fun e -> e |> Array.filter id |> Array.length |> int64)
    let total = o.Blocks |> Seq.sumBy (fun b -> b.Numel)
    Expect.equal (o.TouchedCount()) struct (moved, total) $"{what}: TouchedCount = the entries ever moved"
    Expect.floatClose Accuracy.veryHigh (o.TouchedFraction()) (float moved / float total) $"{what}: TouchedFraction"
    for d, e in Seq.zip (o.Diagnostics()) ever do
        let m = e |> Array.filter id |> Array.length
        Expect.floatClose Accuracy.veryHigh d.TouchedFraction.Value (float m / float e.Length) $"{what}, {d.Name}: Diagnostics"

/// Steps optimizers (each with its own copy of the parameters) with the same seeded gradients, scaled per step, keeping
/// for each the union of the entries that moved. Each step starts from zero weights (the gradient of Σ p·c is c, so the
/// selection does not depend on them; with weight decay 0 an entry moves iff it takes a non-zero update, however small
/// next to a weight it would otherwise be added to).
let private runAndTrack (runs: (BlockOptimizer * Tensor list) list) (seed: int64) (scales: float list) (check: int -> bool[] list list -> unit) =
    let ps0 = snd runs.Head
    let evers = runs |> List.map (fun (_, ps) -> ps |> List.map (fun p -> Array.zeroCreate<bool> (int (p.numel()))))
    use g = gen seed
    for t, sc in List.indexed scales do
        let grads = [ for p in ps0 -> (use k = sc.ToScalar() in torch.randn(p.shape, generator = g).mul(k)) ]
        for (o, ps), ever in List.zip runs evers do
            (use _ = torch.no_grad() in for p in ps do p.zero_() |> ignore)
            stepWithGrads o ps grads
            for p, e in List.zip ps ever do
                toArray p |> Array.iteri (fun i x -> if x <> 0.0f then e.[i] <- true)
        check (t + 1) evers

// sizes not multiples of 8 (1, 7, 9, 1000, 4099, and two of several parallel chunks of 2^16), filtered (2-D) and one
// dense (1-D: the rule makes it Dense, so its mask is set whole, with a partial last byte)
let private shapes = [ [| 1L; 1L |]; [| 1L; 7L |]; [| 3L; 3L |]; [| 8L; 125L |]; [| 1L; 4099L |]; [| 129L; 1031L |]; [| 300L; 501L |]; [| 13L |] ]

[<Tests>]
let tests =
    testList "Optim.touched" [
        test "Optim.touched.bits: every member's touched bits = the entries that ever moved (sizes 1 … 150,300, not multiples of 8; both paths)" {
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ for fast in [ true; false ] do
                    let masked (o: MaskedAdam) = o.UseFastPath <- fast; o :> BlockOptimizer
                    yield $"MoFO ({pathName fast})", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) |> masked)
                    yield $"GradientFilteredBCD ({pathName fast})", (fun ps -> new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) |> masked)
                    yield $"AdamW ({pathName fast})", (fun ps -> new AdamW(asSeq ps, lr = 1e-3, trackTouched = true) |> masked)
                  yield "RandomizedBCD", (fun ps -> new RandomizedBCD(asSeq ps, lr = 1e-3, alpha = 0.15, seed = 5L, trackTouched = true) :> BlockOptimizer)
                  yield "GDMoFO", (fun ps -> new GDMoFO(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> BlockOptimizer)
                  yield "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-3, trackTouched = true) :> BlockOptimizer) ]
            for name, make in makers do
                let ps = makeParams 11L shapes
                use o = make ps
                runAndTrack [ o, ps ] 12L [ 1.0; 1.0; 3.0; 1.0; 0.5; 1.0 ] (fun t evers -> expectEver o evers.Head $"{name}, step {t}")
                if name.StartsWith "MoFO" then
                    let touched = o.TouchedFraction()
                    Expect.isTrue (touched > 0.15 && touched < 1.0) $"{name}: a filtered run touches more than α and less than all ({touched})"
        }

        test "Optim.touched.speculative: the guess route's undo restores the old bits (threshold jumps up and down; MoFO and gradient BCD) = the histogram route's bytes" {
            // 132,999 and 150,300 entries: several chunks (the guess route needs ≥ 2^14); a jump up makes most entries
            // exceed last step's window, so pass 1 updates and marks them, and the miss must clear the bits it set
            let shapes = [ [| 129L; 1031L |]; [| 300L; 501L |] ]
            let scales = [ 1.0; 1.0; 100.0; 100.0; 1.0; 0.01; 0.001; 1.0; 1.0; 1.02; 1.0; 50.0 ]
            for byGrad in [ false; true ] do
                let name = if byGrad then "gradient BCD" else "MoFO"
                let make ps hist =
                    let o =
                        if byGrad then new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> MaskedAdam
                        else new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> MaskedAdam
                    o.HistogramSelection <- hist
                    o
                let ps1 = makeParams 21L shapes
                let ps2 = cloneParams ps1
                use o1 = make ps1 false
                use o2 = make ps2 true
                runAndTrack [ o1 :> BlockOptimizer, ps1; o2 :> BlockOptimizer, ps2 ] 22L scales (fun t evers ->
                    expectEver o1 evers.[0] $"{name} (guess route), step {t}"
                    expectEver o2 evers.[1] $"{name} (histogram route), step {t}"
                    for i in 0 .. shapes.Length - 1 do
                        Expect.isTrue (bitEqual ps1.[i] ps2.[i]) $"{name}: weights of block {i} bit-identical after step {t}"
                        Expect.sequenceEqual (packedBytes o1.Blocks.[i].Touched) (packedBytes o2.Blocks.[i].Touched) $"{name}: packed bytes of block {i} after step {t}")
        }

        test "Optim.touched.state: packed bits resume identically (dictionary and file); a byte-per-entry mask loads packed with the same count; a wrong size names key, block and sizes" {
            let make ps = new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true)
            let ps1 = makeParams 31L shapes
            let ws = makeWeights 31L ps1
            use o1 = make ps1
            for _ in 1 .. 3 do stepSin o1.zero_grad o1.step ps1 ws
            let state = o1.state_dict()
            let savedCount = o1.TouchedCount()
            for b in o1.Blocks do
                Expect.equal state.[$"block.{b.Index}.touched"].shape [| (b.Numel + 7L) / 8L |] $"{b.Name}: saved packed under block.{b.Index}.touched"
            // resume from the dictionary and from a file; all three continue alike
            let ps2 = cloneParams ps1
            use o2 = make ps2
            o2.load_state_dict state
            let ps3 = cloneParams ps1
            use o3 = make ps3
            let dir = Directory.CreateTempSubdirectory("hbits-touched-")
            try
                let file = Path.Combine(dir.FullName, "opt.bin")
                o1.Save file
                o3.Load file
            finally dir.Delete(true)
            for o in [ o2; o3 ] do
                Expect.equal (o.TouchedCount()) (o1.TouchedCount()) "the count after loading"
            for _ in 1 .. 3 do
                for o, ps in [ o1, ps1; o2, ps2; o3, ps3 ] do stepSin o.zero_grad o.step ps ws
            for i in 0 .. shapes.Length - 1 do
                for o, ps, how in [ o2, ps2, "dictionary"; o3, ps3, "file" ] do
                    Expect.isTrue (bitEqual ps.[i] ps1.[i]) $"{how}: weights of block {i} as the uninterrupted run's"
                    Expect.sequenceEqual (packedBytes o.Blocks.[i].Touched) (packedBytes o1.Blocks.[i].Touched) $"{how}: touched bits of block {i}"
            // the byte-per-entry form of earlier versions (the parameter's shape, 1 per touched entry) loads packed
            let legacy = Collections.Generic.Dictionary<string, Tensor>(state)
            for b in o1.Blocks do
                use u = TouchedBits.Unpack(state.[$"block.{b.Index}.touched"], b.Numel)
                legacy.[$"block.{b.Index}.touched"] <- u.to_type(torch.ScalarType.Byte).view(b.Parameter.shape)
            Expect.equal legacy.["block.6.touched"].shape [| 300L; 501L |] "legacy: a byte per entry, shaped as the parameter"
            let ps4 = makeParams 31L shapes
            use o4 = make ps4
            o4.load_state_dict legacy
            Expect.equal (o4.TouchedCount()) savedCount "legacy: the same count"
            for b4, b1 in Seq.zip o4.Blocks o1.Blocks do
                let original = state.[$"block.{b1.Index}.touched"]
                Expect.sequenceEqual (packedBytes b4.Touched) (packedBytes original) $"legacy: {b4.Name} packed as saved"
                expectTail b4 $"legacy: {b4.Name}"
            // any other size: an ArgumentException naming the key, the block, the size found and the sizes expected
            let wrong = Collections.Generic.Dictionary<string, Tensor>(state)
            wrong.["block.4.touched"] <- torch.zeros(100L, dtype = torch.ScalarType.Byte)
            use o5 = make (makeParams 31L shapes)
            try
                o5.load_state_dict wrong
                failtest "a touched mask of 100 bytes for 4099 entries loaded"
            with :? ArgumentException as e ->
                for part in [ "block.4.touched"; "param.4"; "100"; "513"; "4099" ] do
                    Expect.stringContains e.Message part $"the message names {part}: {e.Message}"
        }

        test "Optim.touched.plan: the touched mask is ⌈n/8⌉ bytes per trained tensor (one process and the largest rank's share), 'a touched bit per' entry" {
            // odd sizes: hidden 20, vocab 61, intermediate 37 (most tensors not a multiple of 8 entries)
            let c = MoFO.Models.LlamaConfig(VocabSize = 61, HiddenSize = 20, IntermediateSize = 37, NumHiddenLayers = 2, NumAttentionHeads = 4,
                                            NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5, TieWordEmbeddings = false)
            for methodName in [ "mofo"; "adamw" ] do
                let meth = Methods.Parse methodName
                let shapes = MemoryPlanner.TrainedShapes(c, meth) |> Seq.map (fun struct (_, s) -> Array.fold (*) 1L s) |> Seq.toList
                Expect.isTrue (shapes |> List.exists (fun n -> n % 8L <> 0L)) "some tensors are not a multiple of 8 entries"
                for ranks in [ 1; 2; 3 ] do
                    let input tt = PlanInput(c, meth, Precision.Float32, 1, 16, false, TrackTouched = tt, Ranks = ranks)
                    let on, off = MemoryPlanner.Plan(input true), MemoryPlanner.Plan(input false)
                    let expected =
                        if ranks = 1 then shapes |> List.sumBy (fun n -> (n + 7L) / 8L)
                        else
                            let plan = MoFO.Distributed.ShardPlan(shapes, ranks)
                            let largest = [ 0 .. ranks - 1 ] |> List.maxBy (fun r -> plan.Load.[r])
                            shapes |> List.indexed |> List.filter (fun (i, _) -> plan.Owner.[i] = largest) |> List.sumBy (fun (_, n) -> (n + 7L) / 8L)
                    Expect.equal (on.Part "optimizer state" - off.Part "optimizer state") expected $"{methodName}, {ranks} rank(s): ⌈n/8⌉ bytes per owned tensor"
                    let detail = on.Parts |> Seq.find (fun p -> p.Name = "optimizer state") |> fun p -> p.Detail
                    Expect.stringContains detail "a touched bit per" $"{methodName}, {ranks} rank(s): the detail"
        }
    ]
