/// 8-bit optimizer states (MomentStorage.Blockwise8Bit): the dynamic code, blockwise quantization (the CPU kernel
/// against the ops path and against a nearest-value search done here), the step (the float32 step from the dequantized
/// moments, quantized back), state files (resume, conversion between storages, errors) and the memory plan.
module MoFO.Tests.OptimQuantized

open System
open Expecto
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Optim
open MoFO.Training
open MoFO.Tests.Fixtures
open MoFO.Tests.OptimHelpers

let private codesOf (q: QuantizedMoment) = q.Codes.cpu().contiguous().data<byte>().ToArray()

/// Values with a wide dynamic range (seven decades), some exact zeros, an all-zero block when there is room.
let private sample (seed: int64) (n: int64) (signed: bool) =
    use g = gen seed
    use three = (3.0).ToScalar()
    let x : Tensor = torch.randn([| n |], generator = g).mul(torch.randn([| n |], generator = g).mul(three).exp())
    let x = if signed then x else x.abs()
    if n >= 3L * 2048L then x.narrow(0, 2048L, 2048L).zero_() |> ignore
    if n >= 10L then x.narrow(0, 3L, 2L).zero_() |> ignore
    x

let private both = [ true; false ]

[<Tests>]
let tests =
    testList "Optim.q8" [
        test "Optim.q8.code: each code holds 256 distinct ascending values; the signed one spans [−1, 1] with 0, the unsigned one [0, 1]" {
            for signed in both do
                let v = (if signed then DynamicCode.Signed else DynamicCode.Unsigned) |> Seq.toArray
                Expect.equal v.Length 256 "256 values"
                Expect.isTrue (Array.pairwise v |> Array.forall (fun (a, b) -> a < b)) "strictly ascending"
                Expect.equal v.[255] 1.0f "1 is a value (a block's largest entry is kept exactly)"
                Expect.contains v 0.0f "0 is a value"
                if signed then Expect.equal v.[0] -1.0f "−1 is a value" else Expect.equal v.[0] 0.0f "unsigned: from 0"
                // seven decades: the smallest positive value is about 10^-6 · 0.55
                let smallest = v |> Array.filter (fun x -> x > 0.0f) |> Array.min
                Expect.isLessThan (float smallest) 1e-6 "the smallest positive value is below 1e-6"
                // the code is finest near 1: the gap below 1 is under 1.5 % (signed) / 0.75 % (unsigned)
                Expect.isLessThan (float (v.[255] - v.[254])) (if signed then 0.015 else 0.0075) "fine near 1"
        }

        test "Optim.q8.quantize: the CPU kernel and the ops path give the same codes and scales; each entry takes the nearest code value of x / its block's largest |x|" {
            for signed in both do
                for n in [ 1L; 7L; 2047L; 2048L; 2049L; 7000L; 1_100_003L ] do
                    let what = $"""{(if signed then "signed" else "unsigned")} n = {n}"""
                    use x = sample n n signed
                    use q1 = QuantizedMoment.Zeros(n, signed, torch.CPU)
                    use q2 = QuantizedMoment.Zeros(n, signed, torch.CPU)
                    q1.Quantize x
                    q2.QuantizeWithOps x
                    Expect.sequenceEqual (codesOf q1) (codesOf q2) $"{what}: codes, kernel = ops"
                    Expect.isTrue (bitEqual q1.Scales q2.Scales) $"{what}: scales, kernel = ops"
                    let xs = toArray x
                    let scales = toArray q1.Scales
                    let codes = codesOf q1
                    let values = (if signed then DynamicCode.Signed else DynamicCode.Unsigned) |> Seq.toArray
                    for b in 0 .. scales.Length - 1 do
                        let block = xs.[b * 2048 .. min (xs.Length - 1) (b * 2048 + 2047)]
                        Expect.equal scales.[b] (block |> Array.map abs |> Array.max) $"{what}: block {b}'s scale is its largest |x|"
                    let step = max 1 (xs.Length / 20000)
                    for i in 0 .. step .. xs.Length - 1 do
                        let s = scales.[i / 2048]
                        let q = if s = 0.0f then 0.0f else xs.[i] / s
                        let chosen = abs (float values.[int codes.[i]] - float q)
                        let best = values |> Array.map (fun v -> abs (float v - float q)) |> Array.min
                        if chosen > best then failtestf "%s: entry %d (x %g, q %g) took code %d (%g), not the nearest (distance %g > %g)" what i xs.[i] q codes.[i] values.[int codes.[i]] chosen best
                    use d1 = q1.Dequantize(x.shape)
                    use d2 = q1.DequantizeWithOps()
                    Expect.isTrue (bitEqual d1 d2) $"{what}: dequantized, kernel = ops"
                    let ds = toArray d1
                    for i in 0 .. step .. xs.Length - 1 do
                        Expect.equal ds.[i] (values.[int codes.[i]] * scales.[i / 2048]) $"{what}: entry {i} dequantizes to value × scale"
                    // the largest entry of each block comes back exactly; an all-zero block stays zero
                    let imax = xs |> Array.mapi (fun i v -> i, abs v) |> Array.maxBy snd |> fst
                    Expect.equal (abs ds.[imax]) (abs xs.[imax]) $"{what}: the largest entry is exact"
                    if n >= 3L * 2048L then Expect.isTrue (ds.[2048 .. 4095] |> Array.forall ((=) 0.0f)) $"{what}: a zero block stays zero"
        }

        test "Optim.q8.step: an 8-bit step is the float32 step from the dequantized moments, quantized back (MoFO fused and ops paths, AdamW, gradient BCD, Lion; weight decay on)" {
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ "MoFO", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.01) :> BlockOptimizer)
                  "MoFO ops", (fun ps -> let o = new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.01) in o.UseFastPath <- false; o :> BlockOptimizer)
                  "AdamW", (fun ps -> new AdamW(asSeq ps, lr = 1e-3, weight_decay = 0.01) :> BlockOptimizer)
                  "GradientFilteredBCD", (fun ps -> new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15) :> BlockOptimizer)
                  "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-4, weight_decay = 0.1) :> BlockOptimizer) ]
            let shapes = [ [| 300L; 500L |]; [| 129L; 1031L |]; [| 7L |] ]
            for name, make in makers do
                let ps8 = makeParams 11L shapes
                let ps32 = cloneParams ps8
                use o8 = make ps8
                o8.MomentStorage <- MomentStorage.Blockwise8Bit
                use o32 = make ps32
                use g = gen 12L
                for t in 1 .. 4 do
                    // the float32 optimizer starts each step from the 8-bit state, dequantized
                    for b8, b32 in Seq.zip o8.Blocks o32.Blocks do
                        for q, m in Seq.zip b8.Quantized b32.Moments do
                            use d = q.Dequantize(m.shape)
                            m.copy_(d) |> ignore
                    use k = (if t = 3 then 100.0 else 1.0).ToScalar()
                    let grads = [ for s in shapes -> torch.randn(s, generator = g).mul(k) ]
                    stepWithGrads o8 ps8 grads
                    stepWithGrads o32 ps32 grads
                    for i in 0 .. ps8.Length - 1 do
                        Expect.isTrue (bitEqual ps8.[i] ps32.[i]) $"{name}: p of block {i} after step {t}"
                        for q, m in Seq.zip o8.Blocks.[i].Quantized o32.Blocks.[i].Moments do
                            use r = QuantizedMoment.Zeros(q.Numel, q.Signed, torch.CPU)
                            r.Quantize m
                            Expect.sequenceEqual (codesOf q) (codesOf r) $"{name}: the state of block {i} after step {t} is the float32 moment quantized"
                            Expect.isTrue (bitEqual q.Scales r.Scales) $"{name}: scales of block {i} after step {t}"
                    Expect.isEmpty (o8.Blocks |> Seq.collect (fun b -> b.Moments)) $"{name}: no float32 moments kept between steps"
                    for b in o8.Blocks do Expect.equal b.Quantized.Count o8.MomentsPerBlock $"{name}: every moment of block {b.Index} is kept in 8 bits"
                // the same steps with float32 moments throughout end elsewhere: the 8-bit state is what the steps read
                let ps = makeParams 11L shapes
                use o = make ps
                use g = gen 12L
                for t in 1 .. 4 do
                    use k = (if t = 3 then 100.0 else 1.0).ToScalar()
                    stepWithGrads o ps [ for s in shapes -> torch.randn(s, generator = g).mul(k) ]
                Expect.isFalse (bitEqual ps.[0] ps8.[0]) $"{name}: float32 moments give other weights than 8-bit ones"
        }

        test "Optim.q8.resume: an 8-bit state saved and loaded continues bit-identically (file and dictionary); a float32 state loads into 8 bits and back; a wrong size is refused naming the entry" {
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ "MoFO", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> BlockOptimizer)
                  "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-3, weight_decay = 0.1) :> BlockOptimizer) ]
            let eight (o: BlockOptimizer) = o.MomentStorage <- MomentStorage.Blockwise8Bit; o
            let shapes = [ [| 120L; 700L |]; [| 20L; 30L |]; [| 30L |] ]
            for name, make in makers do
                for viaFile in both do
                    let straight, o1, copies, o3 = straightAndResumed (make >> eight) shapes viaFile
                    use o1 = o1
                    use o3 = o3
                    for a, b in List.zip straight copies do Expect.isTrue (bitEqual a b) $"{name} (file {viaFile}): parameters bit-identical after resume"
                    for b1, b3 in Seq.zip o1.Blocks o3.Blocks do
                        for q1, q3 in Seq.zip b1.Quantized b3.Quantized do
                            Expect.sequenceEqual (codesOf q1) (codesOf q3) $"{name}: codes bit-identical after resume"
                // float32 → 8 bits: quantized on load; 8 bits → float32: dequantized on load
                let ps = makeParams 5L shapes
                let ws = makeWeights 5L ps
                use o32 = make ps
                for _ in 1 .. 3 do stepSin o32.zero_grad o32.step ps ws
                use into8 = eight (make (cloneParams ps))
                into8.load_state_dict(o32.state_dict())
                for b32, b8 in Seq.zip o32.Blocks into8.Blocks do
                    for m, q in Seq.zip b32.Moments b8.Quantized do
                        use r = QuantizedMoment.Zeros(q.Numel, q.Signed, torch.CPU)
                        r.Quantize m
                        Expect.sequenceEqual (codesOf q) (codesOf r) $"{name}: a float32 state loads into 8 bits quantized"
                use back = make (cloneParams ps)
                back.load_state_dict(into8.state_dict())
                for b8, bb in Seq.zip into8.Blocks back.Blocks do
                    for q, m in Seq.zip b8.Quantized bb.Moments do
                        use d = q.Dequantize(m.shape)
                        Expect.isTrue (bitEqual d m) $"{name}: an 8-bit state loads into float32 dequantized"
                let state = into8.state_dict()
                state["block.1.moment0.codes"] <- torch.zeros([| 5L |], dtype = torch.ScalarType.Byte)
                use bad = eight (make (cloneParams ps))
                let e = throwsWith<ArgumentException> (fun () -> bad.load_state_dict state)
                Expect.stringContains e.Message "block.1.moment0" $"{name}: the error names the entry"
                Expect.stringContains e.Message "codes" $"{name}: and the part"
        }

        test "Optim.q8.plan: the plan's 8-bit optimizer state is what every member keeps (codes and scales), plus float32 working copies of the largest tensor's moments" {
            let path = requireAsset DataRoot.Assets.Stories260K
            use lm = ModelLoader.Load path
            for m in Methods.Members do
                let o = TrainingOptions(Method = Methods.Parse m.Name, LearningRate = 1e-3, TrackTouched = Nullable false, BatchSize = 1, MaxLength = 16,
                                        OptimizerState = MomentStorage.Blockwise8Bit)
                use trained = TrainedSet.Attach(lm, o.Method, o.Seed)
                let struct (opt, terms) = Methods.Create(trained, o)
                use opt = opt
                Expect.equal opt.MomentStorage MomentStorage.Blockwise8Bit $"{m.Name}: the options' storage"
                // frozen blocks (HFT's, and the subset members' LISA, BAdam, Spectrum) hold no state
                let live = opt.Blocks |> Seq.filter (fun b -> b.Kind <> BlockKind.Frozen) |> Seq.toList
                let kept =
                    live |> Seq.sumBy (fun b ->
                        Expect.isEmpty b.Moments $"{m.Name}: no float32 moments"
                        b.Quantized |> Seq.sumBy (fun q -> q.Codes.numel() + 4L * q.Scales.numel()))
                for b in opt.Blocks do if b.Kind = BlockKind.Frozen then Expect.isNull (box b.Quantized) $"{m.Name}: {b.Name} frozen, no state"
                let sizes = live |> List.map (fun b -> b.Numel)
                Expect.equal kept (int64 m.Moments * (sizes |> List.sumBy QuantizedMoment.Bytes)) $"{m.Name}: a byte per entry and 4 per block of 2048, per moment"
                let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(path, o))
                let largest = trained.Parameters |> Seq.map (fun struct (_, p) -> p.numel()) |> Seq.max
                let planned = plan.Part "optimizer state" - m.SelectionBuffers(largest, o.Method.Alpha)
                if live.Length = opt.Blocks.Count then
                    Expect.equal planned (kept + 4L * int64 m.Moments * largest) $"{m.Name}: the plan counts what the optimizer keeps and the working copies"
                else Expect.isGreaterThanOrEqual planned (kept + 4L * int64 m.Moments * List.max sizes) $"{m.Name}: the plan bounds what the optimizer keeps at once"
                for t in terms do (box t :?> IDisposable).Dispose()
        }
    ]
