// Table 1 of the MoFO paper: Pythia-160m (tiny: stories260K) fine-tuned on FLAN's definite pronoun resolution (DPR)
// with Adam and Lion: similar fine-tuning loss, but Lion's minimum lies farther from the pretrained model and forgets
// more. Writes results/table1.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table1.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table1` runs this script. Edit the methods, columns or claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: Pythia-160m on DPR (tiny: stories260K, DPR for 300 steps of 16 at lr 1e-3; Lion at 0.2×).
    let commonsense = [ Measure.HellaSwag; Measure.ArcEasy; Measure.ArcChallenge ]
    let signal = [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let e = experiment c Pythia160m Dataset.Dpr DprKind (commonsense @ signal)

    // The methods compared (Adam is full fine-tuning with AdamW).
    let methods = [ Method.FullFT; Method.Lion ]
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll |> Experiment.relabel Method.FullFT "Adam"
    let adam, lion = Experiment.find Method.FullFT runs, Experiment.find Method.Lion runs

    // The columns: the paper's commonsense tasks and their average; the tiny scale's signal.
    let average = Column.Mean("Average", commonsense)
    let title = if c.IsTiny then "stories260K on DPR" else "Pythia-160m on FLAN DPR"
    let bench = { Title = $"{title}: commonsense accuracy (%%)"; Columns = (commonsense |> List.map Column.Of) @ [ average ]; Base = Some baseRun; Rows = runs }
    let fit = { Title = $"{title}: fine-tuning task and forgetting"; Columns = signal |> List.map Column.Of; Base = Some baseRun; Rows = runs }

    // The paper's claims: Adam and Lion reach similar loss; Lion moves farther and forgets more.
    let checks =
        [ Claims.comparable Measure.TaskLoss 0.10 lion adam
          Claims.distanceFraction adam lion 1.0
          Claims.forgetsLess Measure.PretrainProxy baseRun adam lion
          Claims.forgetsLess Measure.StoryCloze baseRun adam lion
          Results.check "Adam loses less commonsense accuracy than Lion on average (Table 1)"
              (average.Value adam.Values - average.Value baseRun.Values > average.Value lion.Values - average.Value baseRun.Values)
              $"average: base {average.Value baseRun.Values:F2}, Adam {average.Value adam.Values:F2}, Lion {average.Value lion.Values:F2}" ]

    finish c { output "table1" "Table 1 — Adam vs Lion on DPR" with
                 Tables = [ bench; fit ]; Paper = Some Paper.table1; Checks = checks; Notes = [ tinyNote c ] }))
