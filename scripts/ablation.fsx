// A custom ablation with the experiment DSL — copy this file and edit it.
// MoFO's update fraction α on DPR at tiny scale (stories260K, CPU, ≈ 3 minutes): a table in the paper's layout with
// the change from the base model, claim checks, and results/ablation-alpha.{json,md,html}.
//   dotnet fsi scripts/ablation.fsx [--seed N]
#load "Build.fsx"
#load "MoFO.fsx"

open MoFO.Dsl

// The flags of `mofo repro` (--seed N, --smoke, --out DIR, …), parsed and run under the same guard and exit codes.
exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The experiment: stories260K fine-tuned on DPR for 150 steps of 16 at lr 1e-3, measured on the task and on forgetting.
    let baseExperiment =
        Experiment.create ModelSource.Stories260K Dataset.Dpr Method.FullFT
            { Recipe.Paper with Lr = 1e-3; Steps = Some 150; BatchSize = 16; MicroBatchSize = 16; MaxLength = 128; Schedule = MoFO.Training.Schedule.Constant }
            [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.Distance ]
            Scale.Tiny c.Seed

    // The sweep: Full FT and MoFO at three update fractions (run in parallel, cached in results/cache).
    let baseline = Experiment.baseline baseExperiment
    let runs =
        (baseExperiment |> Experiment.sweep [ 0.05; 0.15; 0.5 ] (fun a -> Experiment.withMethod (Method.MoFO a)))
        @ [ baseExperiment ]
        |> Experiment.runAll

    let table =
        { Title = "MoFO's α on DPR (stories260K)"
          Columns = [ Column.Of Measure.TaskLoss; Column.Of Measure.PretrainProxy; Column.Of Measure.StoryCloze; Column.Of Measure.Distance ]
          Base = Some baseline
          Rows = runs }

    let full = List.last runs
    let checks =
        Claims.trend "larger α moves farther from the pretrained model" Measure.Distance true (List.zip [ 0.05; 0.15; 0.5; 1.0 ] runs)
        :: [ for r in runs |> List.take 3 -> Claims.forgetsLess Measure.PretrainProxy baseline r full ]

    Study.finish c { Study.output "ablation-alpha" "Ablation — MoFO's update fraction α on DPR (stories260K)" with Tables = [ table ]; Checks = checks }))
