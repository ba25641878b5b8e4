/// bfloat16 parameters with float32 moments: the roundings (stochastic, nearest, master weights), the fused kernels
/// against the ops route, the selection's independence of precision, resume, and every member.
module MoFO.Tests.ScalePrecision

open System
open System.IO
open System.Runtime.InteropServices
open Expecto
open TorchSharp
open MoFO.Optim
open MoFO.Tests.OptimHelpers

let private bf16 = torch.ScalarType.BFloat16
let private f32 = torch.ScalarType.Float32
let private modes = [ BFloat16Update.StochasticRounding; BFloat16Update.MasterWeights; BFloat16Update.Nearest ]
let private pathName fast = if fast then "fused kernel" else "ops route"

/// The raw 16-bit patterns of a bfloat16 tensor.
let private bits16 (t: Tensor) : uint16[] =
    let c = t.detach().cpu().contiguous()
    MemoryMarshal.Cast<byte, uint16>(c.bytes).ToArray()

/// The values of any floating tensor as float32.
let private values (t: Tensor) = toArray (t.detach().to_type(f32))

let private same16 (a: Tensor) (b: Tensor) = bits16 a = bits16 b

/// Seeded bfloat16 leaf tensors (values drawn in float32, rounded to nearest).
let private makeBf16 (seed: int64) (shapes: int64[] list) =
    use g = gen seed
    shapes |> List.map (fun s -> torch.randn(s, generator = g).to_type(bf16).requires_grad_(true))

/// float32 copies of bfloat16 parameters (the same values).
let private widened (ps: Tensor list) = ps |> List.map (fun p -> p.detach().to_type(f32).requires_grad_(true))

/// Seeded gradients, bfloat16-representable (so a float32 run can get exactly the same values); `scale` per step.
let private gradSeqs (seed: int64) (shapes: int64[] list) (scales: float list) =
    use g = gen seed
    [ for sc in scales ->
        [ for s in shapes ->
            use k = sc.ToScalar()
            torch.randn(s, generator = g).mul(k).to_type(bf16) ] ]

/// One step with the given gradients (set directly, in the parameter's dtype).
let private stepGrads (opt: BlockOptimizer) (ps: Tensor list) (gs: Tensor list) =
    for p, g in List.zip ps gs do p.grad <- g.to_type(p.dtype).clone()
    opt.step()

let private masked (fast: bool) (o: #MaskedAdam) = o.UseFastPath <- fast; o

[<Tests>]
let precision =
    testList "Scale.Precision" [
        test "Scale.Precision.rounding: stochastic rounding's mean over many draws is the value; ops route = scalar formula bit for bit; nearest = libtorch" {
            // many draws of one value: entry i of a tensor of copies rounds with its own counter-based bits
            let n = 200000
            let key = BFloat16Rounding.StepKey(11L, 3L, 5)
            for x in [ 1.0f + 0.3f * 0.0078125f; -(3.0f + 0.9f * 0.015625f); 1e-3f; 1e-39f; 1.5f ] do
                use t = torch.full([| int64 n |], x.ToScalar(), dtype = f32)
                use r = BFloat16Rounding.Stochastic(t, key)
                let v = values r
                let distinct = v |> Array.distinct
                Expect.isLessThanOrEqual distinct.Length 2 $"x = {x}: only the two neighbours appear ({distinct.Length} values)"
                if BitConverter.SingleToInt32Bits x &&& 0xFFFF = 0 then
                    Expect.equal distinct [| x |] $"x = {x} is a bfloat16 value: unchanged"
                else
                    let a, b = Array.min distinct, Array.max distinct
                    Expect.isTrue (float a < float x && float x < float b) $"x = {x} lies between its neighbours {a} and {b}"
                    let f = (float x - float a) / (float b - float a)
                    let se = (float b - float a) * sqrt (f * (1.0 - f) / float n)
                    let mean = v |> Array.averageBy float
                    Expect.isLessThan (abs (mean - float x)) (5.0 * se) $"x = {x}: mean {mean} within 5 standard errors ({se})"
            // the ops route (any device) and the kernels' scalar formula: the same bits on a hard mix of values
            let rng = Random 5
            let special = [| 0.0f; -0.0f; infinityf; -infinityf; nanf; 3.3895314e38f; -3.3895314e38f; 3.4e38f; Single.MaxValue; 1.0f; 1e-45f; -1e-45f |]
            let xs =
                Array.init 60000 (fun i ->
                    match i % 7 with
                    | 0 -> float32 (rng.NextDouble() - 0.5) * 1e-40f                     // subnormal
                    | 1 -> BitConverter.Int32BitsToSingle(rng.Next())                     // any positive pattern
                    | 2 -> -BitConverter.Int32BitsToSingle(rng.Next())
                    | 3 -> float32 (rng.NextDouble() * 2.0 - 1.0)
                    | 4 -> special.[rng.Next special.Length]
                    | 5 -> BitConverter.Int32BitsToSingle(0x7F7F0000 + rng.Next 65536)   // the last binade: may round to ∞
                    | _ -> float32 (rng.NextDouble()) * 1e-38f)
            use xt = torch.tensor(xs)
            let ops = bits16 (BFloat16Rounding.Stochastic(xt, key))
            let nearest = bits16 (xt.to_type(bf16))
            let isNan (b: uint16) = (b &&& 0x7FFFus) > 0x7F80us
            let mutable nans = 0
            for i in 0 .. xs.Length - 1 do
                let sc = BFloat16Rounding.Stochastic(xs.[i], BFloat16Rounding.Random16(key, int64 i))
                if Single.IsNaN xs.[i] then
                    nans <- nans + 1
                    Expect.isTrue (isNan ops.[i] && isNan sc) $"NaN stays NaN at {i}"
                else
                    if ops.[i] <> sc then failtestf "x = %g (%08x) at %d: ops route %04x, scalar %04x" xs.[i] (BitConverter.SingleToInt32Bits xs.[i]) i ops.[i] sc
                    let ne = BFloat16Rounding.Nearest xs.[i]
                    if nearest.[i] <> ne then failtestf "nearest of %g (%08x): libtorch %04x, ours %04x" xs.[i] (BitConverter.SingleToInt32Bits xs.[i]) nearest.[i] ne
            Expect.isGreaterThan nans 0 "the mix has NaNs"
            // the random bits themselves: uniform on [0, 2^16) in mean and in the top bit
            let rs = Array.init 100000 (fun i -> float (BFloat16Rounding.Random16(key, int64 i)))
            Expect.isLessThan (abs (Array.average rs - 32767.5)) (5.0 * 18918.6 / sqrt 100000.0) "mean of the 16-bit draws"
        }

        test "Scale.Precision.unbiased: a constant update of 0.128 ulp — nearest never moves, stochastic rounding moves by the float32 amount on average, master weights follow float32 exactly" {
            // 8192 entries at 1.5 (ulp 2⁻⁷), gradient 1: AdamW's step ≈ lr, Lion's and GD's exactly lr = 1e-3 per step
            let n, steps = 8192L, 60
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ "AdamW (fused kernel)", (fun ps -> new AdamW(asSeq ps, lr = 1e-3) |> masked true :> BlockOptimizer)
                  "AdamW (ops route)", (fun ps -> new AdamW(asSeq ps, lr = 1e-3) |> masked false :> BlockOptimizer)
                  "MoFO α = 1 (fused kernel)", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 1.0) :> BlockOptimizer)
                  "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-3) :> BlockOptimizer)
                  "GDMoFO", (fun ps -> new GDMoFO(asSeq ps, lr = 1e-3, alpha = 1.0) :> BlockOptimizer) ]
            for name, make in makers do
                let run (dtype: torch.ScalarType) (mode: BFloat16Update) =
                    let p = torch.full([| n |], (1.5).ToScalar(), dtype = dtype).requires_grad_(true)
                    use o = make [ p ]
                    o.BFloat16Update <- mode
                    o.RoundingSeed <- 17L
                    use g = torch.ones([| n |], dtype = bf16)
                    for _ in 1 .. steps do stepGrads o [ p ] [ g ]
                    let master = if isNull o.Blocks.[0].Master then None else Some (values o.Blocks.[0].Master)
                    values p, master
                let ref32, _ = run f32 BFloat16Update.StochasticRounding
                let target = float ref32.[0]
                Expect.isTrue (ref32 |> Array.forall (fun x -> x = ref32.[0])) $"{name}: the float32 run moves every entry alike"
                Expect.isLessThan target 1.46 $"{name}: float32 moved by more than 0.04 ({target})"
                let nearest, _ = run bf16 BFloat16Update.Nearest
                Expect.isTrue (nearest |> Array.forall (fun x -> x = 1.5f)) $"{name}: round-to-nearest never moves the weight"
                let sr, _ = run bf16 BFloat16Update.StochasticRounding
                let mean = sr |> Array.averageBy float
                // each step's rounding error has mean 0 and variance ≤ ulp²/4, so after T steps the sd of an entry is
                // ≤ √T·ulp/2; the mean of n entries is within 5 such standard errors
                let se = sqrt (float steps) * 0.0078125 / 2.0 / sqrt (float n)
                Expect.isLessThan (abs (mean - target)) (5.0 * se) $"{name}: stochastic rounding's mean {mean} vs float32 {target} (se {se})"
                Expect.isGreaterThan (sr |> Array.distinct |> Array.length) 2 $"{name}: the entries took different roundings"
                let master, m = run bf16 BFloat16Update.MasterWeights
                Expect.equal m (Some ref32) $"{name}: the master is the float32 run bit for bit"
                use expected = torch.tensor(ref32).to_type(bf16)
                Expect.equal master (values expected) $"{name}: the bfloat16 weight is the master rounded to nearest"
        }

        test "Scale.Precision.master: bf16 under master weights = the float32 run rounded to nearest; moments and selection identical (MoFO, GD-BCD, AdamW; both paths; wd on)" {
            let shapes = [ [| 129L; 131L |]; [| 37L; 53L |]; [| 64L |] ]
            let grads = gradSeqs 21L shapes [ 1.0; 1.0; 50.0; 1.0; 0.02; 1.0 ]
            let makers : (string * (Tensor list -> MaskedAdam)) list =
                [ "MoFO", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.1, trackTouched = true) :> MaskedAdam)
                  "GradientFilteredBCD", (fun ps -> new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, trackTouched = true) :> MaskedAdam)
                  "AdamW", (fun ps -> new AdamW(asSeq ps, lr = 1e-3, weight_decay = 0.1) :> MaskedAdam) ]
            for name, make in makers do
                for fast in [ true; false ] do
                    let pb = makeBf16 22L shapes
                    let pf = widened pb
                    use ob = make pb |> masked fast
                    ob.BFloat16Update <- BFloat16Update.MasterWeights
                    use o32 = make pf |> masked fast
                    for t, gs in List.indexed grads do
                        stepGrads ob pb gs
                        stepGrads o32 pf gs
                        for i in 0 .. shapes.Length - 1 do
                            let what = $"{name} ({pathName fast}), block {i}, step {t + 1}"
                            Expect.isTrue (bitEqual ob.Blocks.[i].Master pf.[i]) $"{what}: master = float32 weights"
                            Expect.isTrue (same16 pb.[i] (pf.[i].to_type(bf16))) $"{what}: bfloat16 = float32 rounded to nearest"
                            for m1, m2 in Seq.zip ob.Blocks.[i].Moments o32.Blocks.[i].Moments do
                                Expect.equal m1.dtype f32 $"{what}: float32 moments"
                                Expect.isTrue (bitEqual m1 m2) $"{what}: moments"
                            if not (isNull ob.Blocks.[i].Touched) then
                                Expect.equal (values ob.Blocks.[i].Touched) (values o32.Blocks.[i].Touched) $"{what}: touched"
        }

        test "Scale.Precision.selection: MoFO in bf16 (stochastic rounding) selects exactly the float32 run's entries, the k largest |m|" {
            let shapes = [ [| 300L; 500L |]; [| 129L; 131L |]; [| 37L; 53L |] ]
            let grads = gradSeqs 31L shapes [ 1.0; 1.0; 1.0; 100.0; 1.0; 0.01 ]
            for fast in [ true; false ] do
                let pb = makeBf16 32L shapes
                let pf = widened pb
                use ob = new MoFOOptimizer(asSeq pb, lr = 1e-3, alpha = 0.15, trackTouched = true) |> masked fast
                use o32 = new MoFOOptimizer(asSeq pf, lr = 1e-3, alpha = 0.15, trackTouched = true) |> masked fast
                for t, gs in List.indexed grads do
                    // a fresh touched mask per step: after the step it holds that step's selection
                    for o in [ ob; o32 ] do for b in o.Blocks do b.Touched.zero_() |> ignore
                    stepGrads ob pb gs
                    stepGrads o32 pf gs
                    for i, s in List.indexed shapes do
                        let n = int (Array.fold (*) 1L s)
                        let k = kOf 0.15 n
                        let selected (o: MaskedAdam) =
                            (use bits = TouchedBits.Unpack(o.Blocks.[i].Touched, o.Blocks.[i].Numel)
                             bits.to_type(torch.ScalarType.Int32).contiguous().data<int>().ToArray())
                            |> Array.indexed |> Array.filter (fun (_, x) -> x = 1) |> Array.map fst
                        let sb, s32 = selected ob, selected o32
                        let what = $"{pathName fast}, block {i}, step {t + 1}"
                        Expect.isTrue (bitEqual ob.Blocks.[i].Moments.[0] o32.Blocks.[i].Moments.[0]) $"{what}: the same moments"
                        Expect.equal sb.Length k $"{what}: exactly k selected"
                        Expect.isTrue ((sb = s32)) $"{what}: bf16 selects the float32 run's entries"
                        if i = 2 then
                            let m = toArray ob.Blocks.[i].Moments.[0] |> Array.map float
                            Expect.isTrue ((Set.ofArray sb = referenceTopK m k)) $"{what}: the k largest |m|, ties to the lower index"
        }

        test "Scale.Precision.paths: fused kernel = ops route bit for bit (bf16 in every mode and float32; MoFO, GD-BCD, AdamW, HFT; wd on/off; touched on/off; window hits and misses)" {
            // 150 000 entries (3 chunks), 16 899 (one chunk, a scalar tail), a small block (no speculation), a dense
            // vector, and a block smaller than 1/α (k = 0: moments and decay only)
            let shapes = [ [| 300L; 500L |]; [| 129L; 131L |]; [| 37L; 53L |]; [| 64L |]; [| 2L; 3L |] ]
            let names = [ "model.layers.0.self_attn.q_proj.weight"; "model.layers.0.self_attn.k_proj.weight"; "model.layers.0.mlp.up_proj.weight"
                          "model.norm.weight"; "model.layers.0.mlp.down_proj.weight" ]
            // integer-valued gradients at step 8 (massive ties); jumps make the speculative window miss
            let scales = [ 1.0; 1.0; 1.0; 100.0; 1.0; 0.01; 1.0; 0.0; 1.02 ]
            let grads =
                gradSeqs 41L shapes scales
                |> List.mapi (fun t gs -> if scales.[t] = 0.0 then gradSeqs (50L + int64 t) shapes [ 1.5 ] |> List.head |> List.map (fun g -> g.round()) else gs)
            let makers : (string * (Tensor list -> float -> bool -> MaskedAdam)) list =
                [ "MoFO", (fun ps wd tt -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = wd, trackTouched = tt) :> MaskedAdam)
                  "GradientFilteredBCD", (fun ps wd tt -> new GradientFilteredBCD(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = wd, trackTouched = tt) :> MaskedAdam)
                  "AdamW", (fun ps wd tt -> new AdamW(asSeq ps, lr = 1e-3, weight_decay = wd, trackTouched = tt) :> MaskedAdam)
                  "HFT", (fun ps wd tt -> new HFT(ParamGroup(asSeq ps, names) |> List.singleton, lr = 1e-3, seed = 3L, weight_decay = wd, trackTouched = tt) :> MaskedAdam) ]
            // MoFO: float32 and every bf16 mode, stochastic rounding (the default) with and without decay and touched;
            // the other members a few of these
            let runs = [ f32, BFloat16Update.StochasticRounding, 0.1, true
                         bf16, BFloat16Update.StochasticRounding, 0.0, true
                         bf16, BFloat16Update.StochasticRounding, 0.1, false
                         bf16, BFloat16Update.MasterWeights, 0.1, true
                         bf16, BFloat16Update.Nearest, 0.0, false ]
            let runsOf = Map [ "MoFO", [ 0; 1; 2; 3; 4 ]; "GradientFilteredBCD", [ 0; 2; 3 ]; "AdamW", [ 0; 1; 4 ]; "HFT", [ 2; 3 ] ]
            for name, make in makers do
                for dtype, mode, wd, tt in runsOf.[name] |> List.map (fun r -> runs.[r]) do
                    let what = $"{name}, wd {wd}, touched {tt}, {dtype} {mode}"
                    let p1 = makeBf16 42L shapes |> List.map (fun p -> p.detach().to_type(dtype).requires_grad_(true))
                    let p2 = p1 |> List.map (fun p -> p.detach().clone().requires_grad_(true))
                    use o1 = make p1 wd tt |> masked true
                    use o2 = make p2 wd tt |> masked false
                    for o in [ o1; o2 ] do o.BFloat16Update <- mode; o.RoundingSeed <- 9L
                    for t, gs in List.indexed grads do
                        stepGrads o1 p1 gs
                        stepGrads o2 p2 gs
                        // compared after a hit, a miss, the ties and the last step (a difference would persist)
                        if List.contains t [ 2; 3; 5; 7; grads.Length - 1 ] then
                            for i in 0 .. shapes.Length - 1 do
                                let at = $"{what}: block {i}, step {t + 1}"
                                if dtype = bf16 then Expect.isTrue (same16 p1.[i] p2.[i]) $"{at}: bf16 weights"
                                else Expect.isTrue (bitEqual p1.[i] p2.[i]) $"{at}: float32 weights"
                                for m1, m2 in Seq.zip o1.Blocks.[i].Moments o2.Blocks.[i].Moments do
                                    Expect.isTrue (bitEqual m1 m2) $"{at}: moments"
                                if mode = BFloat16Update.MasterWeights && dtype = bf16 && o1.Blocks.[i].Kind <> BlockKind.Frozen then
                                    Expect.isTrue (bitEqual o1.Blocks.[i].Master o2.Blocks.[i].Master) $"{at}: masters"
                                if tt then
                                    Expect.equal (values o1.Blocks.[i].Touched) (values o2.Blocks.[i].Touched) $"{at}: touched"
                                else Expect.isNull o1.Blocks.[i].Touched $"{at}: no touched mask"
        }

        test "Scale.Precision.resume: save → load → continue is bit-identical in bf16 (stochastic rounding and master weights; MoFO, random BCD, Lion, GD-MoFO; file and dictionary)" {
            let makers : (string * (Tensor list -> BlockOptimizer)) list =
                [ "MoFO", (fun ps -> new MoFOOptimizer(asSeq ps, lr = 1e-3, alpha = 0.15, weight_decay = 0.1) :> BlockOptimizer)
                  "RandomizedBCD", (fun ps -> new RandomizedBCD(asSeq ps, lr = 1e-3, alpha = 0.15, seed = 7L) :> BlockOptimizer)
                  "Lion", (fun ps -> new Lion(asSeq ps, lr = 1e-3, weight_decay = 0.1) :> BlockOptimizer)
                  "GDMoFO", (fun ps -> new GDMoFO(asSeq ps, lr = 1e-2, alpha = 0.15) :> BlockOptimizer) ]
            let shapes = [ [| 120L; 700L |]; [| 20L; 30L |]; [| 30L |] ]
            let grads = gradSeqs 61L shapes [ for _ in 1 .. 6 -> 1.0 ]
            for name, make in makers do
                for mode in [ BFloat16Update.StochasticRounding; BFloat16Update.MasterWeights ] do
                    for viaFile in (if name = "MoFO" then [ true; false ] else [ false ]) do
                        let what = $"""{name}, {mode}, {(if viaFile then "file" else "dictionary")}"""
                        let configure (o: BlockOptimizer) = o.BFloat16Update <- mode; o.RoundingSeed <- 1234L; o
                        let straight = makeBf16 62L shapes
                        let resumed = straight |> List.map (fun p -> p.detach().clone().requires_grad_(true))
                        use o1 = make straight |> configure
                        for gs in grads do stepGrads o1 straight gs
                        use o2 = make resumed |> configure
                        for gs in List.take 3 grads do stepGrads o2 resumed gs
                        // a new optimizer (its seed not set: the state brings it) on bit-for-bit copies of the weights
                        let copies = resumed |> List.map (fun p -> p.detach().clone().requires_grad_(true))
                        use o3 = make copies
                        o3.BFloat16Update <- mode
                        if viaFile then
                            let file = Path.Combine(Path.GetTempPath(), $"mofo-prec-{Guid.NewGuid():N}.state")
                            try
                                o2.Save file
                                o3.Load file
                            finally File.Delete file
                        else o3.load_state_dict(o2.state_dict())
                        Expect.equal o3.RoundingSeed 1234L $"{what}: the rounding seed comes back with the state"
                        for gs in List.skip 3 grads do stepGrads o3 copies gs
                        for i, (a, b) in List.indexed (List.zip straight copies) do
                            Expect.isTrue (same16 a b) $"{what}: block {i} bit-identical after resume"
                        for b1, b3 in Seq.zip o1.Blocks o3.Blocks do
                            for m1, m3 in Seq.zip b1.Moments b3.Moments do
                                Expect.isTrue (bitEqual m1 m3) $"{what}: moments of {b1.Name}"
                            if mode = BFloat16Update.MasterWeights then
                                Expect.isTrue (bitEqual b1.Master b3.Master) $"{what}: master of {b1.Name}"
                            else Expect.isNull b3.Master $"{what}: no master under stochastic rounding"
        }

        test "Scale.Precision.members: every member steps bf16 parameters (both paths, touched on/off, every mode); float32 parameters ignore the mode" {
            let names = [ "model.embed_tokens.weight"; "model.layers.0.self_attn.q_proj.weight"; "model.layers.0.self_attn.k_proj.weight"
                          "model.layers.0.mlp.up_proj.weight"; "model.layers.0.mlp.down_proj.weight"; "model.layers.0.input_layernorm.weight"
                          "model.layers.0.post_attention_layernorm.weight"; "lm_head.weight" ]
            let shapes = [ [| 64L; 32L |]; [| 32L; 32L |]; [| 32L; 32L |]; [| 80L; 32L |]; [| 32L; 80L |]; [| 32L |]; [| 32L |]; [| 64L; 32L |] ]
            let group ps = [ ParamGroup(asSeq ps, names) ]
            let makers : (string * (Tensor list -> bool -> BlockOptimizer)) list =
                [ "MoFOOptimizer", (fun ps tt -> new MoFOOptimizer(group ps, lr = 1e-2, trackTouched = tt) :> BlockOptimizer)
                  "AdamW", (fun ps tt -> new AdamW(group ps, lr = 1e-2, trackTouched = tt) :> BlockOptimizer)
                  "GradientFilteredBCD", (fun ps tt -> new GradientFilteredBCD(group ps, lr = 1e-2, trackTouched = tt) :> BlockOptimizer)
                  "RandomizedBCD", (fun ps tt -> new RandomizedBCD(group ps, lr = 1e-2, seed = 3L, trackTouched = tt) :> BlockOptimizer)
                  "HFT", (fun ps tt -> new HFT(group ps, lr = 1e-2, seed = 3L, trackTouched = tt) :> BlockOptimizer)
                  "Lion", (fun ps tt -> new Lion(group ps, lr = 1e-2, trackTouched = tt) :> BlockOptimizer)
                  "GDMoFO", (fun ps tt -> new GDMoFO(group ps, lr = 1e-1, trackTouched = tt) :> BlockOptimizer) ]
            let grads = gradSeqs 71L shapes [ 1.0; 1.0 ]
            for name, make in makers do
                for fast in [ true; false ] do
                    for tt in [ false; true ] do
                        for mode in modes do
                            let what = $"{name} ({pathName fast}, touched {tt}, {mode})"
                            let ps = makeBf16 72L shapes
                            let before = ps |> List.map bits16
                            use o = make ps tt
                            match o with :? MaskedAdam as m -> m.UseFastPath <- fast | _ -> ()
                            o.BFloat16Update <- mode
                            for gs in grads do stepGrads o ps gs
                            for b, (p, p0) in Seq.zip o.Blocks (List.zip ps before) do
                                Expect.equal p.dtype bf16 $"{what}: {b.Name} stays bfloat16"
                                for m in b.Moments do Expect.equal m.dtype f32 $"{what}: {b.Name}: float32 moments"
                                let v = values p
                                Expect.isTrue (v |> Array.forall Single.IsFinite) $"{what}: {b.Name} finite"
                                if b.Kind <> BlockKind.Frozen then
                                    Expect.notEqual (bits16 p) p0 $"{what}: {b.Name} moved"
                                    Expect.equal (isNull b.Master) (mode <> BFloat16Update.MasterWeights) $"{what}: {b.Name}: a master exactly under master weights"
                                else Expect.equal (bits16 p) p0 $"{what}: {b.Name} frozen"
                                Expect.equal (isNull b.Touched) (not tt) $"{what}: {b.Name}: touched mask as asked"
            // float32 parameters: the mode changes nothing, and no master is made
            let runF32 mode =
                let ps = makeParams 73L shapes
                use o = new MoFOOptimizer(group ps, lr = 1e-2)
                o.BFloat16Update <- mode
                for gs in grads do stepGrads o ps gs
                Expect.isTrue (o.Blocks |> Seq.forall (fun b -> isNull b.Master)) $"float32 under {mode}: no masters"
                ps |> List.map toArray
            let r0 = runF32 BFloat16Update.StochasticRounding
            for mode in modes do Expect.equal (runF32 mode) r0 $"float32 parameters ignore {mode}"
        }
    ]
