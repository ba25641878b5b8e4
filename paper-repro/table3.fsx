// Table 3 of the MoFO paper: Llama-2-7B (tiny: stories260K) fine-tuned on MetaMathQA with Full FT, HFT, L1 and L2
// regularization toward the pretrained weights, and MoFO (α = 15 %); GSM8K and the change of general capability.
// Writes results/table3.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table3.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table3` runs this script. Edit the methods, columns or claims below and run it again: e.g. add
// `Method.LoRA (8, None)` to the methods for a LoRA row (its rate is 10× the recipe's).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: Llama-2-7B on MetaMathQA (paper: a seeded 10 %, 2 epochs of 128, lr 2e-5 cosine; tiny:
    // stories260K on the 1,024-example subset, 150 steps of 8 at lr 1e-3).
    let benchmarks = [ Measure.Gsm8k; Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.HumanEval ]
    let signal = [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let e = experiment c Llama2_7b (metaMathQA c) MathKind (benchmarks @ signal)

    // The methods compared: the paper's λ for L1 (1e-6) and L2 (1e-3), MoFO at α = 15 %.
    let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.15 ]
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll
    let run m = Experiment.find m runs
    let full, hft, l1, l2, mofo = run Method.FullFT, run Method.HFT, run (Method.L1 1e-6), run (Method.L2 1e-3), run (Method.MoFO 0.15)

    // The columns: GSM8K (the task) | Commonsense, MMLU, HumanEval and their average (the general capability).
    let average = Column.Mean("Average", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.Mmlu; Measure.HumanEval ])
    let name = if c.IsTiny then "stories260K" else "Llama-2-7B"
    let bench =
        { Title = $"{name} on MetaMathQA: task and general capability (%%)"; Base = Some baseRun; Rows = runs
          Columns = [ Column.Of Measure.Gsm8k; Columns.commonsense; Column.Of Measure.Mmlu; Column.Of Measure.HumanEval; average ] }
    let fit = { Title = $"{name} on MetaMathQA: held-out task fit and forgetting"; Columns = signal |> List.map Column.Of; Base = Some baseRun; Rows = runs }

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
          Results.check ("MoFO's GSM8K is comparable to Full FT's (within 5 points" + (if c.IsTiny then "; near zero at tiny scale)" else ")"))
              (100.0 * mofo[Measure.Gsm8k] >= 100.0 * full[Measure.Gsm8k] - 5.0)
              $"Full FT {100.0 * full[Measure.Gsm8k]:F1}, MoFO {100.0 * mofo[Measure.Gsm8k]:F1}" ]

    finish c { output "table3" "Table 3 — MetaMathQA: Full FT, HFT, L1, L2 and MoFO" with
                 Tables = [ bench; fit ]; Paper = Some Paper.table3; Checks = checks; Notes = [ tinyNote c ] }))
