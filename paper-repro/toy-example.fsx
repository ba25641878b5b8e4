// Section 4 of the MoFO paper: Adam vs MoFO (α = 50 %: one block of two entries) from the pretrained point (0, 0) on
// the toy problem — pretraining loss θ1² + θ2², fine-tuning loss (θ1 − 1)²(θ2 − 1)². Both reach a fine-tuning minimum;
// MoFO's, (1, 0), is closer to the pretrained point and keeps the pretraining loss at 1 (Adam's (1, 1): 2).
// Writes results/toy-example.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/toy-example.fsx [--seed N] [--strict]
// `./mofo repro toy-example` runs this script. Edit the learning rate, steps or claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open Plotly.NET
open MoFO.Optim
open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The runs: lr 0.02 for 2000 steps (the paper gives no numbers; these show both end points clearly).
    let lr, steps = 0.02, 2000
    let adam = ToyExample.Run("Adam", lr, steps)
    let mofo = ToyExample.Run("MoFO", lr, steps, 0.5)
    let metrics (r: ToyRun) =
        [ "theta1", r.Theta1; "theta2", r.Theta2; "finetune loss", r.FinetuneLoss; "pretrain loss", r.PretrainLoss; "distance from pretrained", r.DistanceFromStart ]
    let rows = [ Results.row "Adam" (metrics adam); Results.row "MoFO (α = 50 %)" (metrics mofo) ]
    let paper =
        { Caption = "Section 4 — the analytic end points"
          Rows = [ "Adam", [ "theta1", 1.0; "theta2", 1.0; "finetune loss", 0.0; "pretrain loss", 2.0; "distance from pretrained", sqrt 2.0 ]
                   "MoFO (α = 50 %)", [ "theta1", 1.0; "theta2", 0.0; "finetune loss", 0.0; "pretrain loss", 1.0; "distance from pretrained", 1.0 ] ] }

    // The paper's claims.
    let dist (a: float, b: float) (r: ToyRun) = sqrt ((r.Theta1 - a) ** 2.0 + (r.Theta2 - b) ** 2.0)
    let checks =
        [ Results.check "MoFO converges to (1, 0)" (dist (1.0, 0.0) mofo <= 0.05)
              $"ends at ({mofo.Theta1:F4}, {mofo.Theta2:F4}), {dist (1.0, 0.0) mofo:F4} from (1, 0) (tolerance 0.05)"
          Results.check "MoFO keeps pretraining loss ≈ 1" (abs (mofo.PretrainLoss - 1.0) <= 0.05) $"pretrain loss {mofo.PretrainLoss:F4}"
          Results.check "Adam converges to (1, 1)" (dist (1.0, 1.0) adam <= 0.05)
              $"ends at ({adam.Theta1:F4}, {adam.Theta2:F4}), {dist (1.0, 1.0) adam:F4} from (1, 1) after {steps} steps at lr {lr} (the quartic valley is flat: Adam approaches (1, 1) slowly)"
          Results.check "Adam's pretraining loss ≈ 2" (abs (adam.PretrainLoss - 2.0) <= 0.15) $"pretrain loss {adam.PretrainLoss:F4}"
          Results.check "both reach the fine-tuning minimum" (adam.FinetuneLoss < 1e-5 && mofo.FinetuneLoss < 1e-5)
              $"fine-tune loss Adam {adam.FinetuneLoss:E2}, MoFO {mofo.FinetuneLoss:E2}"
          Results.check "MoFO forgets less (lower pretraining loss)" (mofo.PretrainLoss < adam.PretrainLoss) $"{mofo.PretrainLoss:F4} < {adam.PretrainLoss:F4}" ]

    // The figure: the fine-tuning loss over the plane with both paths.
    let grid = [ for i in 0 .. 120 -> -0.25 + 1.75 * float i / 120.0 ]
    let z = [ for y in grid -> [ for x in grid -> log10 (ToyExample.Finetune(x, y) + 1e-4) ] ]
    let figure =
        [ Chart.Contour(zData = z, X = grid, Y = grid, Name = "log10 fine-tune loss", ShowScale = false)
          Chart.Line(x = adam.Theta1Path, y = adam.Theta2Path, Name = "Adam", LineColor = Color.fromString "orange", LineWidth = 3.0)
          Chart.Line(x = mofo.Theta1Path, y = mofo.Theta2Path, Name = "MoFO (α = 50 %)", LineColor = Color.fromString "green", LineWidth = 3.0)
          Chart.Point(x = [ 0.0 ], y = [ 0.0 ], Name = "pretrained (0, 0)", MarkerColor = Color.fromString "black") ]
        |> Chart.combine
        |> Chart.withTitle "Section 4 toy example: fine-tune loss (θ1−1)²(θ2−1)², pretrain loss θ1²+θ2²"
        |> Chart.withXAxisStyle "θ1"
        |> Chart.withYAxisStyle "θ2"
        |> Chart.withSize (750, 650)

    finish c { output "toy-example" "Section 4 — Adam vs MoFO on the two-parameter toy problem" with
                 ExtraRows = rows; Paper = Some paper; Checks = checks; Figure = Some figure }))
