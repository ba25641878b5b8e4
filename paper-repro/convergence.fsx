// Theorem 1 of the MoFO paper: GD-MoFO (a gradient step on each block's top-α entries by |g|) with η = 1/L on a smooth
// non-convex function reaches a stationary point at rate O(T^-1/2): min_{t<T} ‖g_t‖ against T beside the bound.
// Writes results/convergence.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/convergence.fsx [--scale tiny|paper] [--seed N] [--strict]
// `./mofo repro convergence` runs this script. Edit the problem or the claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open Plotly.NET
open MoFO.Optim
open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The problem: f = Σ(x²/2 + s·cos x) + c/2·Σ(x_(i+1) − x_i)², d = 4096 in 8 blocks, α = 15 % (L = 1 + s + 2c).
    let dims, blocks, alpha, s, coupling = 4096, 8, 0.15, 3.0, 0.5
    let steps = if c.IsTiny then 1000 else 5000
    let pts = ConvergenceExperiment.Run(dims, blocks, alpha, s, coupling, steps, int64 c.Seed) |> List.ofSeq
    let l = ConvergenceExperiment.Lipschitz(s, coupling)
    let rows =
        [ for p in pts ->
            Results.row $"GD-MoFO T = {p.T}" [ "T", float p.T; "min grad inf", p.MinGradInf; "min grad top-alpha", p.MinGradTopAlpha; "min grad L2", p.MinGradL2; "bound", p.Bound ] ]

    // The theorem's claims.
    let last = List.last pts
    let checks =
        [ Results.check "min_{t<T} ‖g_t‖_top-α ≤ sqrt(2L(f(x0) − f*)/T) for every T (Theorem 1, η = 1/L)" (pts |> List.forall (fun p -> p.MinGradTopAlpha <= p.Bound))
              $"f = Σ(x²/2 + {s}·cos x) + {coupling}/2·Σ(x_(i+1) − x_i)², d = {dims} in {blocks} blocks, α = {alpha}, L = {l}, f* ≥ −{s}·d; checked at {pts.Length} values of T up to {steps}"
          Results.check "‖g‖∞ ≤ ‖g‖_top-α (so ‖g‖∞ = O(T^-1/2))" (pts |> List.forall (fun p -> p.MinGradInf <= p.MinGradTopAlpha)) "the largest entry of each block is always among its top α"
          Results.check "GD-MoFO reaches a stationary point" (last.MinGradInf < 1e-6) $"min ‖g‖∞ after {steps} steps: {last.MinGradInf:E2}" ]

    // The figure: both gradient norms and the bound against T, on log axes.
    let ts = pts |> List.map (fun p -> float p.T)
    let floor = 1e-16
    let figure =
        [ Chart.Line(x = ts, y = (pts |> List.map (fun p -> max floor p.MinGradTopAlpha)), Name = "min ‖g_t‖ top-α", ShowMarkers = true)
          Chart.Line(x = ts, y = (pts |> List.map (fun p -> max floor p.MinGradInf)), Name = "min ‖g_t‖∞", ShowMarkers = true)
          Chart.Line(x = ts, y = (pts |> List.map (fun p -> p.Bound)), Name = "bound sqrt(2L(f0 − f*)/T) ∝ T^-1/2", LineDash = StyleParam.DrawingStyle.Dash) ]
        |> Chart.combine
        |> Chart.withXAxisStyle ("T (iterations)", AxisType = StyleParam.AxisType.Log)
        |> Chart.withYAxisStyle ("min over t < T", AxisType = StyleParam.AxisType.Log)
        |> Chart.withTitle "Theorem 1: GD-MoFO with η = 1/L on a smooth non-convex function"
        |> Chart.withSize (800, 550)

    finish c { output "convergence" "Theorem 1 — GD-MoFO's convergence rate" with ExtraRows = rows; Checks = checks; Figure = Some figure }))
