// Table 4 of the MoFO paper: Llama-2-7B (tiny: stories260K) fine-tuned on Code-Alpaca with Full FT, HFT, L1 and L2
// regularization toward the pretrained weights, and MoFO (α = 10 %); HumanEval and the change of general capability.
// Writes results/table4.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table4.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table4` runs this script. Edit the methods, columns or claims below and run it again: e.g. add
// `Method.LoRA (8, None)` to the methods for a LoRA row (its rate is 10× the recipe's).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: Llama-2-7B on Code-Alpaca (paper: 2 epochs of 64, lr 2e-5 cosine; tiny:
    // stories260K on Code-Alpaca 2k, 150 steps of 8 at lr 1e-3).
    let benchmarks = [ Measure.HumanEval; Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.Gsm8k ]
    let signal = [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let e = experiment c Llama2_7b (codeAlpaca c) CodeKind (benchmarks @ signal)

    // The methods compared: the paper's λ for L1 (1e-6) and L2 (1e-3), MoFO at α = 10 %.
    let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.10 ]
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll
    let run m = Experiment.find m runs
    let full, hft, l1, l2, mofo = run Method.FullFT, run Method.HFT, run (Method.L1 1e-6), run (Method.L2 1e-3), run (Method.MoFO 0.10)

    // The columns: HumanEval (the task) | Commonsense, MMLU, GSM8K and their average (the general capability).
    let average = Column.Mean("Average", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.Mmlu; Measure.Gsm8k ])
    let name = if c.IsTiny then "stories260K" else "Llama-2-7B"
    let bench =
        { Title = $"{name} on Code-Alpaca: task and general capability (%%)"; Base = Some baseRun; Rows = runs
          Columns = [ Column.Of Measure.HumanEval; Columns.commonsense; Column.Of Measure.Mmlu; Column.Of Measure.Gsm8k; average ] }
    let fit = { Title = $"{name} on Code-Alpaca: held-out task fit and forgetting"; Columns = signal |> List.map Column.Of; Base = Some baseRun; Rows = runs }

    // The paper's claims: MoFO learns the task as well as Full FT and forgets less; L1/L2 cost fine-tuning performance.
    let checks =
        [ Claims.comparable Measure.TaskLoss 0.05 mofo full
          Claims.distanceFraction mofo full 0.5
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo full
          Claims.forgetsLess Measure.StoryCloze baseRun mofo full
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo hft
          Claims.beats Measure.TaskLoss mofo [ l1; l2 ]
          Results.check "L1 and L2 regularization cost fine-tuning performance (higher held-out loss than Full FT)"
              (l1[Measure.TaskLoss] > full[Measure.TaskLoss] && l2[Measure.TaskLoss] > full[Measure.TaskLoss])
              $"task loss: Full FT {full[Measure.TaskLoss]:F4}, L1 {l1[Measure.TaskLoss]:F4}, L2 {l2[Measure.TaskLoss]:F4}"
          Results.check ("MoFO's HumanEval is comparable to Full FT's (within 5 points" + (if c.IsTiny then "; near zero at tiny scale)" else ")"))
              (100.0 * mofo[Measure.HumanEval] >= 100.0 * full[Measure.HumanEval] - 5.0)
              $"Full FT {100.0 * full[Measure.HumanEval]:F1}, MoFO {100.0 * mofo[Measure.HumanEval]:F1}" ]

    finish c { output "table4" "Table 4 — Code-Alpaca: Full FT, HFT, L1, L2 and MoFO" with
                 Tables = [ bench; fit ]; Paper = Some Paper.table4; Checks = checks; Notes = [ tinyNote c ] }))
