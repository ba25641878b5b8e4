// Figure 4 of the MoFO paper: MoFO's update fraction α from 5 % to 80 % (and Full FT = 100 %) on MetaMathQA
// (Llama-2-7B; tiny: stories260K): (a) fine-tuning performance, (b) the change of general capability.
// Writes results/figure-fraction.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/figure-fraction.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro figure-fraction` runs this script. Edit the fractions, columns or claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The model and data: as Table 3. Tiny scale measures the signal a 260K model shows; paper scale the benchmarks too.
    let signal = [ Measure.TaskLoss; Measure.TaskTokenAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let benchmarks = [ Measure.Gsm8k; Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.HumanEval ]
    let e = experiment c Llama2_7b (metaMathQA c) MathKind (if c.IsTiny then signal else benchmarks @ signal)

    // The sweep: MoFO at each α, then Full FT (α = 100 %).
    let alphas = if c.Smoke then [ 0.05; 0.4 ] else [ 0.05; 0.10; 0.15; 0.20; 0.40; 0.60; 0.80 ]
    let baseRun = Experiment.baseline e
    let runs = (e |> Experiment.sweep alphas (fun a -> Experiment.withMethod (Method.MoFO a))) @ [ Experiment.withMethod Method.FullFT e ] |> Experiment.runAll
    let points = List.zip (alphas @ [ 1.0 ]) runs
    let mofoPoints = points |> List.take alphas.Length
    let full = Experiment.find Method.FullFT runs

    // The columns and the two panels: performance (tiny: answer-token accuracy; paper: GSM8K) and forgetting
    // (tiny: the pretraining-loss proxy; paper: the mean accuracy of the general-capability benchmarks).
    let general = Column.Mean("General capability", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.HumanEval ])
    let perf, perfName = if c.IsTiny then Column.Of Measure.TaskTokenAccuracy, "held-out answer-token accuracy (%)" else Column.Of Measure.Gsm8k, "GSM8K (%)"
    let forget, forgetName =
        if c.IsTiny then Column.Of Measure.PretrainProxy, "pretraining-loss proxy (NLL; lower = less forgetting)"
        else general, "general capability (mean accuracy, %)"
    let table =
        { Title = "MoFO's update fraction α (100 % = Full FT)"; Base = Some baseRun; Rows = runs
          Columns = (signal |> List.map Column.Of) @ (if c.IsTiny then [] else [ Column.Of Measure.Gsm8k; general ]) }

    // The paper's claims: larger α learns more and forgets more; every α forgets less than Full FT; 5 % gains most.
    let r5 = snd mofoPoints.Head
    let gain5, gainFull = perf.Value r5.Values - perf.Value baseRun.Values, perf.Value full.Values - perf.Value baseRun.Values
    let checks =
        [ Claims.trend "larger α learns more: held-out task loss falls as α grows (Figure 4a)" Measure.TaskLoss false mofoPoints
          Claims.trend "larger α forgets more: the pretraining-loss proxy rises as α grows (Figure 4b)" Measure.PretrainProxy true mofoPoints
          Claims.trend "larger α moves farther from the pretrained model" Measure.Distance true mofoPoints
          Results.check "every α forgets less than Full FT (pretraining-loss proxy)"
              (mofoPoints |> List.forall (fun (_, r) -> r[Measure.PretrainProxy] < full[Measure.PretrainProxy]))
              (String.Join(", ", points |> List.map (fun (a, r) -> $"{100.0 * a:F0} %%: {r[Measure.PretrainProxy]:F4}")))
          Results.check "α = 5 % already gains most of Full FT's improvement on the task (the paper: ≈ 90 % of its GSM8K)" (gainFull > 0.0 && gain5 / gainFull >= 0.5)
              $"gain over the base on {perf.Header}: α = 5 %% {gain5:F2}, Full FT {gainFull:F2} ({100.0 * gain5 / gainFull:F0} %%)" ]

    // The figure: both panels against α.
    let xs = points |> List.map (fun (a, _) -> 100.0 * a)
    let figure =
        Chart.Grid(1, 2, SubPlotTitles = [ $"(a) {perfName}"; $"(b) {forgetName}" ])
            [ Chart.Line(x = xs, y = (points |> List.map (fun (_, r) -> perf.Value r.Values)), Name = "MoFO / Full FT (100 %)", ShowMarkers = true)
              |> Chart.withXAxisStyle "update fraction α (%)"
              Chart.Line(x = xs, y = (points |> List.map (fun (_, r) -> forget.Value r.Values)), Name = "forgetting", ShowMarkers = true)
              |> Chart.withXAxisStyle "update fraction α (%)" ]
        |> Chart.withTitle "Figure 4: the update fraction of MoFO"
        |> Chart.withSize (1200, 500)

    finish c { output "figure-fraction" "Figure 4 — MoFO's update fraction α" with
                 Tables = [ table ]; Checks = checks; Notes = [ Paper.fractionFigureNotes; tinyNote c ]; Figure = Some figure }))
