// Table 2 of the MoFO paper: Pythia-160m (tiny: stories260K) fine-tuned on FLAN's definite pronoun resolution (DPR)
// with Adam and MoFO (α = 15 %); the change of commonsense accuracy, and at tiny scale the task fit and forgetting.
// Writes results/table2.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table2.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table2` runs this script. Edit the methods, columns or claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: Pythia-160m on DPR (tiny: stories260K, DPR for 300 steps of 16 at lr 1e-3).
    let commonsense = [ Measure.HellaSwag; Measure.ArcEasy; Measure.ArcChallenge ]
    let signal = [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let e = experiment c Pythia160m Dataset.Dpr DprKind (commonsense @ signal)

    // The methods compared (Adam is full fine-tuning with AdamW).
    let methods = [ Method.FullFT; Method.MoFO 0.15 ]
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll |> Experiment.relabel Method.FullFT "Adam"
    let adam, mofo = Experiment.find Method.FullFT runs, Experiment.find (Method.MoFO 0.15) runs

    // The columns: the paper's commonsense tasks and their average; the tiny scale's signal.
    let average = Column.Mean("Average", commonsense)
    let title = if c.IsTiny then "stories260K on DPR" else "Pythia-160m on FLAN DPR"
    let bench = { Title = $"{title}: commonsense accuracy (%%)"; Columns = (commonsense |> List.map Column.Of) @ [ average ]; Base = Some baseRun; Rows = runs }
    let fit = { Title = $"{title}: fine-tuning task and forgetting"; Columns = signal |> List.map Column.Of; Base = Some baseRun; Rows = runs }

    // The paper's claims: similar fine-tuning loss, a much smaller distance, less forgetting.
    let checks =
        [ Claims.comparable Measure.TaskLoss 0.05 mofo adam
          Claims.distanceFraction mofo adam 0.5
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo adam
          Claims.forgetsLess Measure.StoryCloze baseRun mofo adam
          Claims.forgetsLess Measure.GreedyIntact baseRun mofo adam
          Results.check "MoFO loses less commonsense accuracy than Adam on average (Table 2)"
              (average.Value mofo.Values > average.Value adam.Values)
              ($"average: base {average.Value baseRun.Values:F2}, Adam {average.Value adam.Values:F2}, MoFO {average.Value mofo.Values:F2}"
               + (if c.IsTiny then " (near chance at tiny scale)" else "")) ]

    finish c { output "table2" "Table 2 — Adam vs MoFO on DPR" with
                 Tables = [ bench; fit ]; Paper = Some Paper.table2; Checks = checks; Notes = [ tinyNote c ] }))
