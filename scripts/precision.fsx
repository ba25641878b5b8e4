// Mixed precision at tiny scale: the same MoFO fine-tune of stories260K on DPR (300 steps of 16, lr 1e-3, the pilot's
// recipe) in float32 and in bfloat16 with stochastic rounding (the default) over three seeds, and with float32 master
// weights and plain round-to-nearest (seed 0) beside them, and float32 weights with 8-bit optimizer states over the
// three seeds. The claims checked: bf16 with stochastic rounding ends within 2 % of float32's held-out loss, 8-bit states
// within 1 % of float32 states' (means over the seeds; each seed's data order differs, so the spread of float32 over
// seeds is the yardstick). Writes results/precision.{json,md,html}.
//   dotnet fsi scripts/precision.fsx [--seed N] [--smoke]
#load "Build.fsx"
#load "MoFO.fsx"

open MoFO.Dsl
open MoFO.Optim
open MoFO.Training

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->
    let steps = if c.Smoke then Some 3 else Some 300
    let recipe = { Recipe.Paper with Lr = 1e-3; Steps = steps; BatchSize = 16; MicroBatchSize = 16; MaxLength = 128; Schedule = Schedule.Constant }
    let e =
        { Experiment.create ModelSource.Stories260K Dataset.Dpr (Method.MoFO 0.15) recipe
              [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.Distance ] Scale.Tiny c.Seed
            with Settings = c.Settings }
    let seeds = if c.Smoke then [ c.Seed ] else [ c.Seed; c.Seed + 1; c.Seed + 2 ]
    let bf16 = { recipe with Precision = Precision.BFloat16 }
    let variants =
        [ for s in seeds do yield $"float32 (seed {s})", { e with Seed = s }
          for s in seeds do yield $"bf16, stochastic rounding (seed {s})", { e with Seed = s; Recipe = bf16 }
          yield $"bf16, float32 master weights (seed {c.Seed})", { e with Recipe = { bf16 with BFloat16Update = BFloat16Update.MasterWeights } }
          yield $"bf16, round to nearest (seed {c.Seed})", { e with Recipe = { bf16 with BFloat16Update = BFloat16Update.Nearest } }
          for s in seeds do yield $"float32, 8-bit optimizer states (seed {s})", { e with Seed = s; Recipe = { recipe with OptimizerState = MomentStorage.Blockwise8Bit } } ]
    let baseline = Experiment.baseline e
    let runs = variants |> List.map snd |> Experiment.runAll |> List.map2 (fun (label, _) run -> { run with Label = label }) variants
    let table =
        { Title = "MoFO on DPR (stories260K, 300 steps, lr 1e-3): float32, bfloat16, 8-bit optimizer states"
          Columns = [ Column.Of Measure.TaskLoss; Column.Of Measure.TaskTokenAccuracy; Column.Of Measure.PretrainProxy; Column.Of Measure.Distance ]
          Base = Some baseline
          Rows = runs }
    let n = seeds.Length
    let loss (rs: Run list) = rs |> List.averageBy (fun r -> r[Measure.TaskLoss])
    let fp32, sr = runs |> List.take n, runs |> List.skip n |> List.take n
    let master, nearest = runs[2 * n], runs[2 * n + 1]
    let eight = runs |> List.skip (2 * n + 2)
    let f0 = loss fp32
    let rel (x: float) = (x - f0) / f0
    let pct (x: float) = sprintf "%+.2f %%" (100.0 * rel x)
    let spread = (fp32 |> List.map (fun r -> r[Measure.TaskLoss]) |> List.max) - (fp32 |> List.map (fun r -> r[Measure.TaskLoss]) |> List.min)
    let perSeed (rs: Run list) = rs |> List.map (fun r -> r[Measure.TaskLoss].ToString "F4") |> String.concat ", "
    let checks =
        [ Results.check "bf16 with stochastic rounding ends within 2 % of float32's held-out loss (means over the seeds)" (abs (rel (loss sr)) <= 0.02)
              $"held-out loss: float32 {f0:F4} (spread over seeds {spread:F4}), bf16 stochastic {loss sr:F4} ({pct (loss sr)}); per seed: float32 {perSeed fp32}, bf16 {perSeed sr}"
          Results.check "8-bit optimizer states end within 1 % of float32 states' held-out loss (means over the seeds)" (abs (rel (loss eight)) <= 0.01)
              $"held-out loss: float32 states {f0:F4}, 8-bit states {loss eight:F4} ({pct (loss eight)}); per seed: 8-bit {perSeed eight}"
          Results.check "bf16 with float32 master weights ends within 2 % of float32's held-out loss" (abs (rel master[Measure.TaskLoss]) <= 0.02)
              $"bf16 master weights {master[Measure.TaskLoss]:F4} ({pct master[Measure.TaskLoss]})"
          Results.check "round-to-nearest bf16 loses updates: it fits the training data less than stochastic rounding (final train loss)"
              (match nearest.Train, sr.Head.Train with
               | Some a, Some b -> a.FinalLoss.GetValueOrDefault nan > b.FinalLoss.GetValueOrDefault nan
               | _ -> false)
              $"""final train loss: nearest {(nearest.Train |> Option.map (fun t -> t.FinalLoss.GetValueOrDefault nan) |> Option.defaultValue nan):F4}, stochastic {(sr.Head.Train |> Option.map (fun t -> t.FinalLoss.GetValueOrDefault nan) |> Option.defaultValue nan):F4}; held-out: nearest {nearest[Measure.TaskLoss]:F4} ({pct nearest[Measure.TaskLoss]})""" ]
    Study.finish c { Study.output "precision" "Precision study — float32, bfloat16 with stochastic rounding, master weights, round-to-nearest, 8-bit optimizer states" with Tables = [ table ]; Checks = checks }))
