/// The loss landscape of Figures 1 and 3: the plane through three weight vectors (the pretrained model θ0 and two
/// fine-tuned models θA, θB), with orthonormal axes e1 = (θA − θ0)/‖θA − θ0‖ and e2 = the part of θB − θ0 orthogonal to
/// e1, normalised. A grid point (x, y) is the model θ0 + x·e1 + y·e2 (coordinates in units of weight distance); at each
/// point the fine-tuning loss (held-out answer tokens) and the pretraining-loss proxy (base-model samples) are measured.
module MoFO.Dsl.Landscape

open System
open TorchSharp
open MoFO.Evaluation
open MoFO.Models
open MoFO.Dsl.Evals
open Plotly.NET

type Surface =
    { Xs: float list
      Ys: float list
      /// Finetune[iy][ix]
      Finetune: float list list
      Pretrain: float list list
      /// the coordinates of θA and θB in the plane (θ0 is the origin)
      A: float * float
      B: float * float
      DistanceA: float
      DistanceB: float
      /// (fine-tune loss, pretrain loss) at the exact points θ0, θA and θB of the plane
      AtOrigin: float * float
      AtA: float * float
      AtB: float * float }

/// t · x with an explicit Scalar held for the call (TorchSharp may finalize an implicit one mid-call).
let private scaled (t: torch.Tensor) (x: float) =
    use s = x.ToScalar()
    t.mul(s)

/// Measures the plane on an n × n grid with a margin of `margin` times the larger distance around the three points.
let compute (basePath: string) (aPath: string) (bPath: string) (task: TaskData) (samples: Collections.Generic.IReadOnlyList<string>) (n: int) (margin: float) =
    use model = ModelLoader.Load(basePath)
    use a = ModelLoader.Load(aPath)
    use b = ModelLoader.Load(bPath)
    let ps = model.Module.named_parameters() |> Seq.toArray
    let pa = a.Module.named_parameters() |> Seq.map (fun struct (k, v) -> k, v) |> dict
    let pb = b.Module.named_parameters() |> Seq.map (fun struct (k, v) -> k, v) |> dict
    use _ng = torch.no_grad()
    let origin = ps |> Array.map (fun struct (_, p) -> p.detach().clone())
    let da = ps |> Array.mapi (fun i struct (k, _) -> (pa[k].detach() - origin[i]).to_type(torch.ScalarType.Float64))
    let db = ps |> Array.mapi (fun i struct (k, _) -> (pb[k].detach() - origin[i]).to_type(torch.ScalarType.Float64))
    let dot (x: torch.Tensor[]) (y: torch.Tensor[]) = Array.map2 (fun (u: torch.Tensor) (v: torch.Tensor) -> (u * v).sum().item<float>()) x y |> Array.sum
    let normA = sqrt (dot da da)
    let normB = sqrt (dot db db)
    if normA = 0.0 then raise (ArgumentException $"{aPath}: the model equals the base model; the plane is undefined")
    let e1 = da |> Array.map (fun t -> scaled t (1.0 / normA))
    let bx = dot db e1
    let rest = Array.map2 (fun (t: torch.Tensor) (u: torch.Tensor) -> t - scaled u bx) db e1
    let by = sqrt (max 0.0 (dot rest rest))
    let e2 = if by > 1e-12 then rest |> Array.map (fun t -> scaled t (1.0 / by)) else rest |> Array.map (fun t -> torch.zeros_like t)
    let r = max normA normB
    let x0, x1 = (min 0.0 bx) - margin * r, (max normA bx) + margin * r
    let y0, y1 = (min 0.0 by) - margin * r, (max 0.0 by) + margin * r
    let axis lo hi = [ for i in 0 .. n - 1 -> lo + (hi - lo) * float i / float (n - 1) ]
    let xs, ys = axis x0 x1, axis y0 y1
    let set (x: float) (y: float) =
        ps |> Array.iteri (fun i struct (_, p) ->
            use scope = torch.NewDisposeScope()
            let v = (origin[i].to_type(torch.ScalarType.Float64) + scaled e1[i] x + scaled e2[i] y).to_type(p.dtype)
            p.copy_(v) |> ignore)
    let total = n * n + 3
    use progress = new MoFO.ConsoleProgress("landscape", int64 total, "points")
    let at x y =
        set x y
        let f = TaskMetrics.Fit(model, ResizeArray task.HeldOut, task.MaxLength)
        let p = Forgetting.Loss(model, samples)
        progress.Advance()
        f.MeanTokenNll, p.MeanTokenNll
    let grid = [ for y in ys -> [ for x in xs -> at x y ] ]
    let atOrigin, atA, atB = at 0.0 0.0, at normA 0.0, at bx by
    set 0.0 0.0
    for t in Array.concat [ origin; da; db; e1; e2; rest ] do t.Dispose()
    { Xs = xs; Ys = ys
      Finetune = grid |> List.map (List.map fst)
      Pretrain = grid |> List.map (List.map snd)
      A = (normA, 0.0); B = (bx, by); DistanceA = normA; DistanceB = normB; AtOrigin = atOrigin; AtA = atA; AtB = atB }

/// (fine-tune loss, pretrain loss) of a model itself on the landscape's data (to check the plane against).
let direct (path: string) (task: TaskData) (samples: Collections.Generic.IReadOnlyList<string>) =
    use m = ModelLoader.Load(path)
    (TaskMetrics.Fit(m, ResizeArray task.HeldOut, task.MaxLength)).MeanTokenNll, (Forgetting.Loss(m, samples)).MeanTokenNll

/// The value of a surface's grid nearest to a point (for checks).
let nearest (s: Surface) (values: float list list) (x: float, y: float) =
    let ix = s.Xs |> List.mapi (fun i v -> i, abs (v - x)) |> List.minBy snd |> fst
    let iy = s.Ys |> List.mapi (fun i v -> i, abs (v - y)) |> List.minBy snd |> fst
    values[iy][ix]

/// A contour of one loss over the plane, with the pretrained model at the origin and the two fine-tuned models marked
/// (named, with their distance from the pretrained model).
let contour (s: Surface) (z: float list list) (title: string) (nameA: string) (nameB: string) =
    let open' = Chart.Contour(zData = z, X = s.Xs, Y = s.Ys, Name = title, ShowScale = false, ContoursColoring = StyleParam.ContourColoring.Heatmap)
    let ax, ay = s.A
    let bx, by = s.B
    let mark (x: float) (y: float) (name: string) (color: string) (text: string list) =
        Chart.Point(x = [ x ], y = [ y ], Name = name, MarkerColor = Color.fromString color, MultiText = text,
                               TextPosition = StyleParam.TextPosition.TopCenter, ShowLegend = false)
    [ open'
      mark 0.0 0.0 "pretrained" "black" []
      mark ax ay $"{nameA} ({s.DistanceA:F2} from pretrained)" "orange" [ nameA ]
      mark bx by $"{nameB} ({s.DistanceB:F2} from pretrained)" "green" [ nameB ] ]
    |> Chart.combine
    |> Chart.withXAxisStyle $"along {nameA} − pretrained"
    |> Chart.withYAxisStyle "orthogonal direction"
