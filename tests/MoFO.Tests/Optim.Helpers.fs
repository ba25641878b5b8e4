/// Shared helpers of the optimizer tests: seeded parameters, deterministic losses, independent reference steps.
module MoFO.Tests.OptimHelpers

open System
open TorchSharp
open MoFO.Optim

type Tensor = torch.Tensor

let gen (seed: int64) = new torch.Generator(uint64 seed)

/// Seeded float32 leaf tensors with gradients.
let makeParams (seed: int64) (shapes: int64[] list) =
    use g = gen seed
    shapes |> List.map (fun s -> torch.randn(s, generator = g).requires_grad_(true))

/// Detached clones with gradients (a second, identical copy of a parameter list).
let cloneParams (ps: Tensor list) = ps |> List.map (fun p -> p.detach().clone().requires_grad_(true))

/// Seeded weights for the loss Σ sin(p)·w (gradient cos(p)·w: depends on p, almost surely non-zero).
let makeWeights (seed: int64) (ps: Tensor list) =
    use g = gen (seed + 1000L)
    ps |> List.map (fun p -> torch.randn(p.shape, generator = g))

let asSeq (ps: Tensor list) : seq<Tensor> = Seq.ofList ps

/// One optimizer step on the loss Σ sin(p)·w.
let stepSin (zero: unit -> unit) (step: unit -> unit) (ps: Tensor list) (ws: Tensor list) =
    zero ()
    use scope = torch.NewDisposeScope()
    let loss = List.map2 (fun (p: Tensor) (w: Tensor) -> p.sin().mul(w).sum()) ps ws |> List.reduce (fun a b -> a.add(b))
    loss.backward()
    step ()

/// One step where the gradient of each parameter is exactly the given tensor (loss Σ p·c).
let stepWithGrads (opt: BlockOptimizer) (ps: Tensor list) (grads: Tensor list) =
    opt.zero_grad()
    use scope = torch.NewDisposeScope()
    let loss = List.map2 (fun (p: Tensor) (c: Tensor) -> p.mul(c).sum()) ps grads |> List.reduce (fun a b -> a.add(b))
    loss.backward()
    opt.step()

let toArray (t: Tensor) : float32[] = t.detach().cpu().contiguous().data<float32>().ToArray()

let maxAbsDiff (a: Tensor) (b: Tensor) =
    Array.map2 (fun (x: float32) (y: float32) -> abs (float x - float y)) (toArray a) (toArray b) |> Array.fold max 0.0

let bitEqual (a: Tensor) (b: Tensor) =
    let x = toArray a
    let y = toArray b
    x.Length = y.Length && Array.forall2 (fun (u: float32) (v: float32) -> BitConverter.SingleToInt32Bits u = BitConverter.SingleToInt32Bits v) x y

/// Indices where two snapshots differ.
let movedIndices (before: float32[]) (after: float32[]) =
    [| for i in 0 .. before.Length - 1 do if before.[i] <> after.[i] then yield i |]

/// The independent rule: the k indices with the largest |x|, ties to the lower index (a plain sort in F#).
let referenceTopK (x: float[]) (k: int) =
    x |> Array.mapi (fun i v -> i, abs v) |> Array.sortWith (fun (i, a) (j, b) -> if a <> b then compare b a else compare i j)
      |> Array.take k |> Array.map fst |> Set.ofArray

/// ⌊α·n⌋ as the issue defines it (α·n computed exactly for the α values the tests use).
let kOf (alpha: float) (n: int) = int (Math.Floor(Math.Round(alpha * float n, 9)))

/// An independent masked-Adam reference in double precision over flat arrays; the selection is done by `select`
/// on (m, g) and returns the set of updated indices.
type AdamRef(p0: float[], lr: float, b1: float, b2: float, eps: float, wd: float) =
    let p = Array.copy p0
    let m = Array.zeroCreate<float> p0.Length
    let v = Array.zeroCreate<float> p0.Length
    let mutable t = 0
    member _.P = p
    member _.M = m
    member _.Step(g: float[], select: float[] -> float[] -> Set<int>) =
        t <- t + 1
        for i in 0 .. p.Length - 1 do
            p.[i] <- p.[i] * (1.0 - lr * wd)
            m.[i] <- b1 * m.[i] + (1.0 - b1) * g.[i]
            v.[i] <- b2 * v.[i] + (1.0 - b2) * g.[i] * g.[i]
        let sel = select m g
        let bc1 = 1.0 - Math.Pow(b1, float t)
        let bc2 = 1.0 - Math.Pow(b2, float t)
        for i in sel do
            p.[i] <- p.[i] - (lr / bc1) * m.[i] / (sqrt v.[i] / sqrt bc2 + eps)
        sel

/// Gives `target` the state of `source`: through a state file (Save, then Load) or a dictionary (state_dict).
let copyState (source: MoFO.Optim.BlockOptimizer) (target: MoFO.Optim.BlockOptimizer) (viaFile: bool) =
    if viaFile then
        let file = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"mofo-optim-{System.Guid.NewGuid():N}.state")
        try
            source.Save file
            target.Load file
        finally System.IO.File.Delete file
    else target.load_state_dict(source.state_dict())

/// Six steps of `make`'s optimizer straight, and three steps, the state copied into a new optimizer (over parameters
/// copied bit for bit; `copyState`) and three more: the straight parameters and optimizer, then the resumed ones (the
/// caller disposes both optimizers).
let straightAndResumed (make: Tensor list -> MoFO.Optim.BlockOptimizer) (shapes: int64[] list) (viaFile: bool) =
    let straight = makeParams 4L shapes
    let resumed = cloneParams straight
    let ws = makeWeights 4L straight
    let o1 = make straight
    for _ in 1 .. 6 do stepSin o1.zero_grad o1.step straight ws
    use o2 = make resumed
    for _ in 1 .. 3 do stepSin o2.zero_grad o2.step resumed ws
    let copies = cloneParams resumed
    let o3 = make copies
    copyState o2 o3 viaFile
    for _ in 1 .. 3 do stepSin o3.zero_grad o3.step copies ws
    straight, o1, copies, o3
