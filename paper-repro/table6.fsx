// Table 6 of the MoFO paper: at α = 10 %, MoFO against gradient-filtered BCD (the top-α entries by |g|) and
// randomized BCD (a fresh random α subset each step), with Full FT, on MetaMathQA (Llama-2-7B; tiny: stories260K).
// Writes results/table6.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table6.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table6` runs this script. Edit the methods, columns or claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: as Table 3 (Llama-2-7B on MetaMathQA; tiny: stories260K on the 1,024-example subset).
    let benchmarks = [ Measure.Gsm8k; Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.HumanEval ]
    let signal = [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let e = experiment c Llama2_7b (metaMathQA c) MathKind (benchmarks @ signal)

    // The methods compared: three selection rules at the same update fraction, and Full FT.
    let methods = [ Method.FullFT; Method.RandomBCD 0.10; Method.GradBCD 0.10; Method.MoFO 0.10 ]
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll
    let run m = Experiment.find m runs
    let full, rnd, grad, mofo = run Method.FullFT, run (Method.RandomBCD 0.10), run (Method.GradBCD 0.10), run (Method.MoFO 0.10)

    // The columns: GSM8K | Commonsense, MMLU, HumanEval and their average; the tiny scale's signal.
    let average = Column.Mean("Average", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.Mmlu; Measure.HumanEval ])
    let name = if c.IsTiny then "stories260K" else "Llama-2-7B"
    let bench =
        { Title = $"{name} on MetaMathQA: task and general capability (%%)"; Base = Some baseRun; Rows = runs
          Columns = [ Column.Of Measure.Gsm8k; Columns.commonsense; Column.Of Measure.Mmlu; Column.Of Measure.HumanEval; average ] }
    let fit = { Title = $"{name} on MetaMathQA: held-out task fit and forgetting"; Columns = signal |> List.map Column.Of; Base = Some baseRun; Rows = runs }

    // The paper's claims: momentum filtering learns the task better than the other rules; all forget less than Full FT.
    let checks =
        [ Claims.beats Measure.TaskLoss mofo [ grad; rnd ]
          Claims.beats Measure.TaskTokenAccuracy mofo [ grad; rnd ]
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo full
          Claims.forgetsLess Measure.PretrainProxy baseRun grad full
          Claims.forgetsLess Measure.PretrainProxy baseRun rnd full
          Results.check ("MoFO's GSM8K exceeds both BCD variants'" + (if c.IsTiny then " (near zero at tiny scale)" else ""))
              (mofo[Measure.Gsm8k] > grad[Measure.Gsm8k] && mofo[Measure.Gsm8k] > rnd[Measure.Gsm8k])
              $"GSM8K: MoFO {100.0 * mofo[Measure.Gsm8k]:F1}, gradient-filtered {100.0 * grad[Measure.Gsm8k]:F1}, randomized {100.0 * rnd[Measure.Gsm8k]:F1}" ]

    finish c { output "table6" "Table 6 — MoFO vs gradient-filtered and randomized BCD" with
                 Tables = [ bench; fit ]; Paper = Some Paper.table6; Checks = checks; Notes = [ tinyNote c ] }))
