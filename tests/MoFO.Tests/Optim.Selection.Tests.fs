/// The ops path's O(n) top-k selection (TopKSelect, behind AdamOps.TopKMask) against hand-worked masks, an independent
/// F# sort, and libtorch's stable sort (AdamOps.TopKMaskBySort) on adversarial and random inputs.
module MoFO.Tests.OptimSelection

open System
open Expecto
open TorchSharp
open MoFO.Optim
open MoFO.Tests.OptimHelpers

type private ST = torch.ScalarType

let private bools (t: Tensor) =
    if t.numel() = 0L then [||] else t.cpu().contiguous().data<bool>().ToArray() // (TorchSharp's accessor fails on empty tensors)

let private shapeText (x: Tensor) = String.Join("×", x.shape)

let private maskOf (n: int) (trueAt: int list) = Array.init n (fun i -> List.contains i trueAt)

let private f32 (xs: float32[]) = torch.tensor(xs)

let private bits (b: int) = BitConverter.Int32BitsToSingle b

/// The radix mask equals the sort's: same shape, dtype and entries.
let private expectSame (x: Tensor) (k: int64) (what: string) =
    use ours = AdamOps.TopKMask(x, k)
    use sorted = AdamOps.TopKMaskBySort(x, k)
    Expect.equal ours.shape sorted.shape $"{what}: shape"
    Expect.equal ours.dtype ST.Bool $"{what}: dtype"
    let a, b = bools ours, bools sorted
    if a <> b then
        let first = Array.findIndex id (Array.map2 (<>) a b)
        failtestf "%s (k = %d of %d): masks differ first at flat index %d (radix %b, sort %b)" what k (x.numel()) first a.[first] b.[first]
    Expect.equal (a |> Array.filter id |> Array.length |> int64) (max 0L (min k (x.numel()))) $"{what}: exactly k entries selected"

/// Adversarial magnitude pools per dtype (as float64 values that the dtype holds exactly, NaN and ±inf included).
let private specials (dt: ST) =
    let denormals =
        match dt with
        | ST.Float32 -> [ float (bits 1); float (bits 2); float (bits 3); float (bits 0x7FFFFF) ]
        | ST.BFloat16 -> [ float (bits 0x10000); float (bits 0x20000); float (bits 0x7F0000) ]
        | ST.Float16 -> [ 5.960464477539063e-8; 1.1920928955078125e-7; 6.097555160522461e-5 ]
        | _ -> [ 4.9406564584124654e-324; 9.8813129168249309e-324; 2.2250738585072009e-308 ]
    let nans = [ nan; -nan; BitConverter.Int64BitsToDouble 0x7FF0000000000001L; BitConverter.Int64BitsToDouble -1L ]
    [ 0.0; -0.0; 1.0; -1.0; 0.5; 2.0; infinity; -infinity ] @ nans @ denormals @ (denormals |> List.map (fun d -> -d))

let private dtypes = [ ST.Float32; ST.BFloat16; ST.Float64; ST.Float16 ]

let private ofDoubles (dt: ST) (xs: float[]) = torch.tensor(xs, dtype = ST.Float64).``to``(dt)

/// A seeded random case: a dtype, a size, a shape, a value distribution, and k.
let private randomCase (seed: int) =
    let rng = Random(seed)
    let dt = dtypes.[rng.Next dtypes.Length]
    let n = match rng.Next 4 with 0 -> rng.Next 4 | 1 -> rng.Next 64 | 2 -> rng.Next 2000 | _ -> rng.Next 20000
    let pool = specials dt |> Array.ofList
    let draw () =
        match rng.Next 10 with
        | 0 -> pool.[rng.Next pool.Length]
        | 1 | 2 | 3 -> float (rng.Next(-3, 4))                          // many exact ties
        | 4 -> float (rng.Next(-3, 4)) * 1e-3
        | _ -> (rng.NextDouble() - 0.5) * Math.Pow(10.0, float (rng.Next(-8, 8)))
    let values = Array.init n (fun _ -> draw ())
    let x = ofDoubles dt values
    let x =
        let d = [ 2; 3; 5; 7 ] |> List.tryFind (fun d -> n > 0 && n % d = 0 && rng.Next 2 = 0)
        match d with Some d -> x.reshape(int64 d, int64 (n / d)) | None -> x
    let k = match rng.Next 5 with 0 -> 0L | 1 -> int64 n | 2 -> int64 (max 0 (n - 1)) | _ -> int64 (rng.Next(n + 1))
    dt, x, k

[<Tests>]
let selection =
    testList "Optim.Selection" [
        test "hand-worked masks: ties to the lower index, ±0 tie, NaN above +inf, denormals by value" {
            // |x| = [3, 5, 1, 5, 0]: k = 1 takes the first 5 (index 1), k = 2 both 5s, k = 3 adds the 3.
            let x = f32 [| 3.0f; -5.0f; 1.0f; 5.0f; 0.0f |]
            Expect.equal (bools (AdamOps.TopKMask(x, 1L))) (maskOf 5 [ 1 ]) "k = 1"
            Expect.equal (bools (AdamOps.TopKMask(x, 2L))) (maskOf 5 [ 1; 3 ]) "k = 2"
            Expect.equal (bools (AdamOps.TopKMask(x, 3L))) (maskOf 5 [ 0; 1; 3 ]) "k = 3"
            // -0 and +0 are equal magnitudes: the lower indices win.
            let z = f32 [| -0.0f; 0.0f; -0.0f; 0.0f |]
            Expect.equal (bools (AdamOps.TopKMask(z, 3L))) (maskOf 4 [ 0; 1; 2 ]) "±0 tie, k = 3"
            // NaNs (either sign) rank above +inf and tie with each other; then inf, then the finite values.
            let s = f32 [| 1.0f; -nanf; infinityf; nanf; -infinityf; 2.0f |]
            Expect.equal (bools (AdamOps.TopKMask(s, 1L))) (maskOf 6 [ 1 ]) "k = 1: the first NaN"
            Expect.equal (bools (AdamOps.TopKMask(s, 2L))) (maskOf 6 [ 1; 3 ]) "k = 2: both NaNs"
            Expect.equal (bools (AdamOps.TopKMask(s, 3L))) (maskOf 6 [ 1; 2; 3 ]) "k = 3: then the first inf"
            Expect.equal (bools (AdamOps.TopKMask(s, 5L))) (maskOf 6 [ 1; 2; 3; 4; 5 ]) "k = 5: then the 2"
            // NaNs with different payloads still tie (the sort's rule): the lower index wins.
            let p = f32 [| 1.0f; bits 0x7F800001; bits 0x7FFFFFFF; bits 0xFFC00001 |]
            Expect.equal (bools (AdamOps.TopKMask(p, 1L))) (maskOf 4 [ 1 ]) "NaN payloads, k = 1"
            Expect.equal (bools (AdamOps.TopKMask(p, 2L))) (maskOf 4 [ 1; 2 ]) "NaN payloads, k = 2"
            // denormals ordered by value: |x| = [1, 0, 3, 2] smallest-denormal units.
            let d = f32 [| bits 1; 0.0f; bits 3; -(bits 2) |]
            Expect.equal (bools (AdamOps.TopKMask(d, 2L))) (maskOf 4 [ 2; 3 ]) "denormals, k = 2"
            Expect.equal (bools (AdamOps.TopKMask(d, 3L))) (maskOf 4 [ 0; 2; 3 ]) "denormals, k = 3"
        }

        test "libtorch's sort agrees with the hand-worked order (the oracle's NaN and tie rules)" {
            let s = f32 [| 1.0f; -nanf; infinityf; nanf; -infinityf; 2.0f |]
            for k, expected in [ 1L, [ 1 ]; 2L, [ 1; 3 ]; 3L, [ 1; 2; 3 ]; 4L, [ 1; 2; 3; 4 ] ] do
                Expect.equal (bools (AdamOps.TopKMaskBySort(s, k))) (maskOf 6 expected) $"sort, k = {k}"
        }

        test "equals an independent F# sort on random float32 inputs with ties" {
            let rng = Random(5)
            for n in [ 1; 2; 9; 257; 3000 ] do
                let values = Array.init n (fun _ -> if rng.Next 3 = 0 then float (rng.Next(-4, 5)) else rng.NextDouble() - 0.5)
                let x = torch.tensor(values |> Array.map float32)
                let asFloat = values |> Array.map (fun v -> float (float32 v))
                for k in [ 0; 1; n / 2; n - 1; n ] |> List.distinct |> List.filter (fun k -> k >= 0) do
                    let expected = referenceTopK asFloat k
                    let got = bools (AdamOps.TopKMask(x, int64 k)) |> Array.indexed |> Array.filter snd |> Array.map fst |> Set.ofArray
                    Expect.equal got expected $"n = {n}, k = {k}"
        }

        test "equals the sort on adversarial inputs (all dtypes, k = 0, 1, n-1, n)" {
            for dt in dtypes do
                let pool = specials dt |> Array.ofList
                let cases =
                    [ "all zero", Array.create 100 0.0
                      "all equal magnitude, mixed signs", Array.init 100 (fun i -> if i % 3 = 0 then -1.5 else 1.5)
                      "many ties at the threshold", Array.init 1000 (fun i -> float ((i * 7919) % 5 - 2))
                      "±0 only", Array.init 64 (fun i -> if i % 2 = 0 then -0.0 else 0.0)
                      "denormals and zeros", Array.init 300 (fun i -> pool.[12 + (i * 31) % (pool.Length - 12)] * (if i % 4 = 0 then 0.0 else 1.0))
                      "specials cycled", Array.init 997 (fun i -> pool.[(i * 13) % pool.Length])
                      "±inf among finite", Array.init 200 (fun i -> if i % 17 = 0 then (if i % 2 = 0 then infinity else -infinity) else float (i % 9))
                      "one entry", [| -2.0 |]
                      "one NaN", [| nan |] ]
                for name, values in cases do
                    let x = ofDoubles dt values
                    let n = int64 values.Length
                    for k in [ 0L; 1L; n / 3L; n / 2L; n - 1L; n ] |> List.distinct do
                        expectSame x k $"{dt}, {name}"
        }

        test "empty tensors, 2-D and non-contiguous shapes, k > n refused, integers through the sort" {
            for dt in dtypes do
                let e = torch.empty([| 0L |], dtype = dt)
                expectSame e 0L $"{dt}, empty"
                let e2 = torch.empty([| 3L; 0L |], dtype = dt)
                expectSame e2 0L $"{dt}, empty 3×0"
                use g = gen 3L
                let m = torch.randint(-3L, 4L, [| 6L; 7L |], generator = g).``to``(dt)
                for k in [ 0L; 1L; 20L; 41L; 42L ] do
                    expectSame m k $"{dt}, 6×7"
                    expectSame (m.t()) k $"{dt}, 7×6 transposed (non-contiguous)"
            let x = f32 [| 1.0f; 2.0f |]
            Expect.throwsT<ArgumentOutOfRangeException> (fun () -> AdamOps.TopKMask(x, 3L) |> ignore) "k > n"
            let ints = torch.tensor([| 3L; -5L; 5L; 0L |])
            Expect.equal (bools (AdamOps.TopKMask(ints, 2L))) (maskOf 4 [ 1; 2 ]) "int64 input (the sort)"
        }

        test "ties straddling chunk boundaries (inputs over one chunk)" {
            let c = TopKSelect.ChunkEntries
            let n = c + 1000L
            // all equal: the cut falls in the first chunk, at its end, and in the second chunk
            let same = torch.full([| n |], (0.25f).ToScalar())
            for k in [ 3L; c - 1L; c; c + 1L; n - 1L ] do expectSame same k $"all equal, k = {k}"
            // a few large values in the second chunk, then ties across both chunks
            let x = torch.full([| n |], (-0.5f).ToScalar())
            x.narrow(0L, c + 10L, 5L).fill_((2.0f).ToScalar()) |> ignore
            x.narrow(0L, 0L, 100L).fill_((0.125f).ToScalar()) |> ignore
            for k in [ 1L; 5L; 6L; c; c + 3L ] do expectSame x k $"ties across chunks, k = {k}"
            use g = gen 11L
            let r = torch.randn([| n |], generator = g).bfloat16().float()
            expectSame r (n * 15L / 100L) "random (bfloat16-rounded) over two chunks, k = 15 %"
        }

        test "equals the sort on 300 seeded random cases" {
            for seed in 1 .. 300 do
                let dt, x, k = randomCase seed
                expectSame x k $"seed {seed}: {dt}, shape {shapeText x}"
        }

        test "passes and temporaries: widths cover the key, temporaries bounded by a chunk" {
            Expect.equal (TopKSelect.PassWidths ST.Float32) [| 15; 16 |] "float32: 31 key bits"
            Expect.equal (TopKSelect.PassWidths ST.Float64) [| 15; 16; 16; 16 |] "float64: 63 key bits"
            Expect.equal (TopKSelect.PassWidths ST.BFloat16) [| 15 |] "bfloat16: 15 key bits"
            Expect.equal (TopKSelect.PassWidths ST.Float16) [| 15 |] "float16: 15 key bits"
            let big = TopKSelect.TemporaryBytes(131_072_000L, ST.Float32)
            Expect.equal big (TopKSelect.TemporaryBytes(TopKSelect.ChunkEntries, ST.Float32)) "no per-entry growth past one chunk"
            // 4 Mi entries × (4 key + 7) bytes + 6 histogram-sized arrays of 65538 int64
            Expect.equal big ((1L <<< 22) * 11L + 6L * 8L * 65538L) "float32: the chunk buffers and histograms"
            Expect.isLessThan big (131_072_000L * 16L / 20L) "well under a twentieth of the sort's 16 B per entry at 131M entries"
        }
    ]
