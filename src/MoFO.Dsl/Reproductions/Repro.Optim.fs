/// The optimizer-level reproductions: Section 4's toy example and Theorem 1's convergence (thin wrappers over
/// MoFO.Optim.ToyExample / ConvergenceExperiment that build the report and the figure).
module MoFO.Dsl.Repro.Optim

open System
open System.Diagnostics
open Plotly.NET
open MoFO.Optim
open MoFO.Dsl.Results

/// The toy example's settings: lr 0.02, 2000 steps (the paper gives no numbers; these show both end points clearly).
let toyLr, toySteps = 0.02, 2000

/// Section 4: Adam vs MoFO (α = 50 %, one block of two entries) from (0, 0).
let toyExample (o: Options) =
    let sw = Stopwatch.StartNew()
    let adam = ToyExample.Run("Adam", toyLr, toySteps)
    let mofo = ToyExample.Run("MoFO", toyLr, toySteps, 0.5)
    let metrics (r: ToyRun) =
        [ "theta1", r.Theta1; "theta2", r.Theta2; "finetuneLoss", r.FinetuneLoss; "pretrainLoss", r.PretrainLoss
          "distanceFromPretrained", r.DistanceFromStart ]
    let dist (a: float, b: float) (r: ToyRun) = sqrt ((r.Theta1 - a) ** 2.0 + (r.Theta2 - b) ** 2.0)
    let report =
        { Name = "toy-example"; Title = "toy-example"; Scale = o.Scale; Seed = o.Seed
          Rows = [ row "Adam" (metrics adam); row "MoFO (α = 50 %)" (metrics mofo) ]
          Paper =
            Some [ row "Adam" [ "theta1", 1.0; "theta2", 1.0; "finetuneLoss", 0.0; "pretrainLoss", 2.0; "distanceFromPretrained", sqrt 2.0 ]
                   row "MoFO (α = 50 %)" [ "theta1", 1.0; "theta2", 0.0; "finetuneLoss", 0.0; "pretrainLoss", 1.0; "distanceFromPretrained", 1.0 ] ]
          Checks =
            [ check "MoFO converges to (1, 0)" (dist (1.0, 0.0) mofo <= 0.05)
                  $"ends at ({mofo.Theta1:F4}, {mofo.Theta2:F4}), {dist (1.0, 0.0) mofo:F4} from (1, 0) (tolerance 0.05)"
              check "MoFO keeps pretraining loss ≈ 1" (abs (mofo.PretrainLoss - 1.0) <= 0.05) $"pretrain loss {mofo.PretrainLoss:F4}"
              check "Adam converges to (1, 1)" (dist (1.0, 1.0) adam <= 0.05)
                  $"ends at ({adam.Theta1:F4}, {adam.Theta2:F4}), {dist (1.0, 1.0) adam:F4} from (1, 1) after {toySteps} steps at lr {toyLr} (the quartic valley is flat: Adam approaches (1, 1) slowly)"
              check "Adam's pretraining loss ≈ 2" (abs (adam.PretrainLoss - 2.0) <= 0.15) $"pretrain loss {adam.PretrainLoss:F4}"
              check "both reach the fine-tuning minimum" (adam.FinetuneLoss < 1e-5 && mofo.FinetuneLoss < 1e-5)
                  $"fine-tune loss Adam {adam.FinetuneLoss:E2}, MoFO {mofo.FinetuneLoss:E2}"
              check "MoFO forgets less (lower pretraining loss)" (mofo.PretrainLoss < adam.PretrainLoss)
                  $"{mofo.PretrainLoss:F4} < {adam.PretrainLoss:F4}" ]
          ElapsedSeconds = sw.Elapsed.TotalSeconds
          Layout = None }
    let grid = [ for i in 0 .. 120 -> -0.25 + 1.75 * float i / 120.0 ]
    let z = [ for y in grid -> [ for x in grid -> log10 (ToyExample.Finetune(x, y) + 1e-4) ] ]
    let chart =
        [ Chart.Contour(zData = z, X = grid, Y = grid, Name = "log10 fine-tune loss", ShowScale = false)
          Chart.Line(x = adam.Theta1Path, y = adam.Theta2Path, Name = "Adam", LineColor = Color.fromString "orange", LineWidth = 3.0)
          Chart.Line(x = mofo.Theta1Path, y = mofo.Theta2Path, Name = "MoFO (α = 50 %)", LineColor = Color.fromString "green", LineWidth = 3.0)
          Chart.Point(x = [ 0.0 ], y = [ 0.0 ], Name = "pretrained (0, 0)", MarkerColor = Color.fromString "black") ]
        |> Chart.combine
        |> Chart.withTitle "Section 4 toy example: fine-tune loss (θ1−1)²(θ2−1)², pretrain loss θ1²+θ2²"
        |> Chart.withXAxisStyle "θ1"
        |> Chart.withYAxisStyle "θ2"
        |> Chart.withSize (750, 650)
    report, chart

/// Theorem 1: GD-MoFO with η = 1/L; min_{t<T} ‖g_t‖ against T beside the O(T^-1/2) bound.
let convergence (o: Options) =
    let sw = Stopwatch.StartNew()
    let dims, blocks, alpha, s, c = 4096, 8, 0.15, 3.0, 0.5
    let steps = if o.Scale = "paper" then 5000 else 1000
    let pts = ConvergenceExperiment.Run(dims, blocks, alpha, s, c, steps, int64 o.Seed) |> List.ofSeq
    let l = ConvergenceExperiment.Lipschitz(s, c)
    let rows =
        pts
        |> List.map (fun p ->
            row $"GD-MoFO T = {p.T}"
                [ "T", float p.T; "minGradInf", p.MinGradInf; "minGradTopAlpha", p.MinGradTopAlpha; "minGradL2", p.MinGradL2; "bound", p.Bound ])
    let allUnder = pts |> List.forall (fun p -> p.MinGradTopAlpha <= p.Bound)
    let infUnder = pts |> List.forall (fun p -> p.MinGradInf <= p.MinGradTopAlpha)
    let last = List.last pts
    let report =
        { Name = "convergence"; Title = "convergence"; Scale = o.Scale; Seed = o.Seed
          Rows = rows
          Paper = None
          Checks =
            [ check "min_{t<T} ‖g_t‖_top-α ≤ sqrt(2L(f(x0) − f*)/T) for every T (Theorem 1, η = 1/L)" allUnder
                  $"f = Σ(x²/2 + {s}·cos x) + {c}/2·Σ(x_(i+1) − x_i)², d = {dims} in {blocks} blocks, α = {alpha}, L = {l}, f* ≥ −{s}·d; checked at {pts.Length} values of T up to {steps}"
              check "‖g‖∞ ≤ ‖g‖_top-α (so ‖g‖∞ = O(T^-1/2))" infUnder "the largest entry of each block is always among its top α"
              check "GD-MoFO reaches a stationary point" (last.MinGradInf < 1e-6) $"min ‖g‖∞ after {steps} steps: {last.MinGradInf:E2}" ]
          ElapsedSeconds = sw.Elapsed.TotalSeconds
          Layout = None }
    let ts = pts |> List.map (fun p -> float p.T)
    let floor = 1e-16
    let chart =
        [ Chart.Line(x = ts, y = (pts |> List.map (fun p -> max floor p.MinGradTopAlpha)), Name = "min ‖g_t‖ top-α", ShowMarkers = true)
          Chart.Line(x = ts, y = (pts |> List.map (fun p -> max floor p.MinGradInf)), Name = "min ‖g_t‖∞", ShowMarkers = true)
          Chart.Line(x = ts, y = (pts |> List.map (fun p -> p.Bound)), Name = "bound sqrt(2L(f0 − f*)/T) ∝ T^-1/2", LineDash = StyleParam.DrawingStyle.Dash) ]
        |> Chart.combine
        |> Chart.withXAxisStyle ("T (iterations)", AxisType = StyleParam.AxisType.Log)
        |> Chart.withYAxisStyle ("min over t < T", AxisType = StyleParam.AxisType.Log)
        |> Chart.withTitle "Theorem 1: GD-MoFO with η = 1/L on a smooth non-convex function"
        |> Chart.withSize (800, 550)
    report, chart
