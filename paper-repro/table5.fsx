// Table 5 of the MoFO paper: continual fine-tuning. TinyLlama-1.1B (tiny: stories260K) trained on a stream of tasks in
// sequence (TRACE's eight; tiny: four fine-tuning sets from the data root); the overall performance (OP) and backward
// transfer (BWT) of Full FT, HFT, MoFO (α = 5 %), GEM and Replay alone and with MoFO, and MTL (all tasks mixed: the
// upper bound). Writes results/table5.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table5.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro table5` runs this script. Edit the stream, the methods or the claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The stream: TRACE's tasks in the paper's order and epochs, scored by accuracy; at tiny scale DPR → GSM8K →
    // MetaMathQA → Code-Alpaca (160 training and 48 test examples each, 2 epochs), scored by the answer likelihood
    // (greedy exact match is 0 for a 260K model).
    let stream, metric =
        match c.Scale with
        | Scale.Paper _ ->
            let order = [ "C-STANCE", 5; "FOMC", 3; "MeetingBank", 7; "Py150", 5; "ScienceQA", 3; "NumGLUE-cm", 5; "NumGLUE-ds", 5; "20Minuten", 7 ]
            Continual.Stream.Trace(require c "trace" (fun p -> p.Trace), order), MoFO.Training.TaskMetric.Accuracy
        | Scale.Tiny ->
            let nTrain, nTest, epochs = (if c.Smoke then 8, 4, 1 else 160, 48, 2)
            Continual.Stream.Tiny(nTrain, nTest, epochs), MoFO.Training.TaskMetric.AnswerLikelihood
    let tasks = Continual.tasks stream
    let recipe =
        if c.Smoke then { Recipe.Paper with Lr = 1e-3; BatchSize = 4; MicroBatchSize = 4; MaxLength = 128; Schedule = MoFO.Training.Schedule.Constant }
        elif c.IsTiny then { Recipe.Paper with Lr = 1e-3; BatchSize = 8; MicroBatchSize = 8; MaxLength = 256; Schedule = MoFO.Training.Schedule.Constant }
        else { Recipe.Paper with Lr = 1e-5; BatchSize = 64; MicroBatchSize = 4; MaxLength = 1024 }

    // The methods compared: GEM and Replay keep `memory` examples of each earlier task.
    let memory = if c.IsTiny then 16 else 64
    let methods =
        [ Method.FullFT; Method.HFT; Method.MoFO 0.05; Method.GEM(memory, Method.FullFT); Method.GEM(memory, Method.MoFO 0.05)
          Method.Replay(memory, Method.FullFT); Method.Replay(memory, Method.MoFO 0.05); Method.MTL ]
    let e = { Experiment.create (model c TinyLlama) Dataset.Dpr Method.FullFT recipe [] c.Scale c.Seed with Settings = c.Settings }
    let outcomes: Continual.Outcome list =
        methods |> List.map (fun m -> { Continual.Job.Stream = stream; Continual.Job.Metric = metric; Continual.Job.Experiment = Experiment.withMethod m e })
        |> Sweep.continual
    let get m = outcomes |> List.find (fun o -> o.Method = m)
    let full, hft, mofo = get Method.FullFT, get Method.HFT, get (Method.MoFO 0.05)
    let gem, gemMofo = get (Method.GEM(memory, Method.FullFT)), get (Method.GEM(memory, Method.MoFO 0.05))
    let replay, replayMofo = get (Method.Replay(memory, Method.FullFT)), get (Method.Replay(memory, Method.MoFO 0.05))
    let mtl = get Method.MTL

    // The rows: OP and BWT of each method (in %).
    let rows = [ for o in outcomes -> Results.row o.Method.Label ([ "OP", 100.0 * o.OP ] @ (if Double.IsNaN o.BWT then [] else [ "BWT", 100.0 * o.BWT ])) ]

    // The paper's claims: MoFO has a higher OP and BWT than Full FT and HFT, and improves GEM and Replay; MTL bounds all.
    let cmp (what: string) (a: Continual.Outcome) (b: Continual.Outcome) (f: Continual.Outcome -> float) =
        Results.check $"{a.Method.Label} has a higher {what} than {b.Method.Label}" (f a > f b) $"{100.0 * f a:F2} vs {100.0 * f b:F2}"
    let checks =
        [ cmp "OP" mofo full (fun o -> o.OP); cmp "BWT" mofo full (fun o -> o.BWT)
          cmp "OP" mofo hft (fun o -> o.OP); cmp "BWT" mofo hft (fun o -> o.BWT)
          cmp "OP" gemMofo gem (fun o -> o.OP); cmp "OP" replayMofo replay (fun o -> o.OP)
          Results.check "MTL has the highest OP (the upper bound)" (outcomes |> List.forall (fun o -> o.Method = Method.MTL || o.OP <= mtl.OP))
              (String.Join(", ", outcomes |> List.map (fun o -> $"{o.Method.Label} {100.0 * o.OP:F2}"))) ]

    // R[t, i]: the metric on task i after training task t.
    let md =
        let sb = Text.StringBuilder()
        sb.AppendLine("R[t, i] (rows: after training task t; columns: task i):").AppendLine() |> ignore
        for o in outcomes |> List.filter (fun o -> o.Method <> Method.MTL) do
            let cells = String.Join(" / ", o.R |> Array.map (fun row -> String.Join(" ", row |> Array.map (fun v -> if Double.IsNaN v then "·" else (100.0 * v).ToString("F1")))))
            sb.AppendLine($"- {o.Method.Label}: {cells}") |> ignore
        sb.ToString()
    let tinyStream =
        if c.IsTiny then "At tiny scale TRACE is not available: the stream is four real fine-tuning sets from the data root, and R is the answer likelihood (geometric-mean probability of the answer tokens, teacher-forced), since greedy exact match is 0 for a 260K model."
        else ""
    let figure =
        let withBwt = outcomes |> List.filter (fun o -> not (Double.IsNaN o.BWT))
        Chart.Grid(1, 2, SubPlotTitles = [ "OP (%)"; "BWT (%)" ])
            [ Chart.Column(values = (outcomes |> List.map (fun o -> 100.0 * o.OP)), Keys = (outcomes |> List.map (fun o -> o.Method.Label)), Name = "OP")
              Chart.Column(values = (withBwt |> List.map (fun o -> 100.0 * o.BWT)), Keys = (withBwt |> List.map (fun o -> o.Method.Label)), Name = "BWT") ]
        |> Chart.withTitle "Table 5: continual fine-tuning"
        |> Chart.withSize (1200, 500)

    let arrow = String.Join(" → ", tasks |> List.map (fun t -> t.Name))
    finish c { output "table5" $"Table 5 — continual fine-tuning on {arrow}: OP and BWT ({metric}, in %%)" with
                 ExtraRows = rows; Paper = Some Paper.table5; Checks = checks; Notes = [ md; tinyStream ]; Figure = Some figure }))
