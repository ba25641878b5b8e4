// Mixed precision at tiny scale: the same MoFO fine-tune of stories260K on DPR (300 steps of 16, lr 1e-3, the pilot's
// recipe) in float32 and in bfloat16 with stochastic rounding (the default), float32 master weights, and plain
// round-to-nearest. The claim checked: bf16 with stochastic rounding ends within 2 % of float32's held-out loss.
// Writes results/precision.{json,md,html}.
//   dotnet fsi scripts/precision.fsx [--seed N] [--smoke]
#load "Build.fsx"
#load "MoFO.fsx"

open MoFO.Dsl
open MoFO.Optim
open MoFO.Training

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->
    let steps = if c.Smoke then Some 3 else Some 300
    let recipe = { Recipe.Default with Lr = 1e-3; Steps = steps; BatchSize = 16; MicroBatchSize = 16; MaxLength = 128; Schedule = Schedule.Constant }
    let e =
        { Experiment.create ModelSource.Stories260K Dataset.Dpr (Method.MoFO 0.15) recipe
              [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.Distance ] Scale.Tiny c.Seed
            with Settings = c.Settings }
    let variants =
        [ "float32", recipe
          "bf16, stochastic rounding", { recipe with Precision = Precision.BFloat16 }
          "bf16, float32 master weights", { recipe with Precision = Precision.BFloat16; BFloat16Update = BFloat16Update.MasterWeights }
          "bf16, round to nearest", { recipe with Precision = Precision.BFloat16; BFloat16Update = BFloat16Update.Nearest } ]
    let baseline = Experiment.baseline e
    let runs =
        variants |> List.map (fun (_, r) -> { e with Recipe = r }) |> Experiment.runAll
        |> List.map2 (fun (label, _) run -> { run with Label = label }) variants
    let table =
        { Title = "MoFO on DPR (stories260K, 300 steps, lr 1e-3): float32 and bfloat16"
          Columns = [ Column.Of Measure.TaskLoss; Column.Of Measure.TaskTokenAccuracy; Column.Of Measure.PretrainProxy; Column.Of Measure.Distance ]
          Base = Some baseline
          Rows = runs }
    let fp32, sr, nearest = runs[0], runs[1], runs[3]
    let rel (a: Run) = (a[Measure.TaskLoss] - fp32[Measure.TaskLoss]) / fp32[Measure.TaskLoss]
    let pct (a: Run) = sprintf "%+.2f %%" (100.0 * rel a)
    let checks =
        [ Results.check "bf16 with stochastic rounding ends within 2 % of float32's held-out loss" (abs (rel sr) <= 0.02)
              $"held-out loss: float32 {fp32[Measure.TaskLoss]:F4}, bf16 stochastic {sr[Measure.TaskLoss]:F4} ({pct sr})"
          Results.check "bf16 with float32 master weights ends within 2 % of float32's held-out loss" (abs (rel runs[2]) <= 0.02)
              $"bf16 master weights {runs[2][Measure.TaskLoss]:F4} ({pct runs[2]})"
          Results.check "round-to-nearest bf16 (shown beside them) loses updates: its held-out loss is further from float32's than stochastic rounding's"
              (abs (rel nearest) > abs (rel sr))
              $"bf16 nearest {nearest[Measure.TaskLoss]:F4} ({pct nearest})" ]
    Study.finish c "precision" [ table ] None checks [ Study.trainingNote runs ] (Table.deltaChart table)))
