/// The paper's tables and figures as DSL pipelines. Each reads like the paper's description of the experiment: the
/// model, the data, the methods compared, the columns, the claims.
module MoFO.Dsl.Repro.Paper

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Study

let private M = Column.Of

/// The tiny-scale signal: the fine-tuning task and the forgetting measures a 260K model can show.
let private signalColumns (taskColumns: Measure list) =
    (taskColumns |> List.map M) @ [ M Measure.PretrainProxy; M Measure.StoryCloze; M Measure.GreedyIntact; M Measure.Distance ]
let private signalMeasures (taskColumns: Measure list) =
    taskColumns @ [ Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]

// ---- Tables 1 and 2: Pythia-160m on FLAN's DPR ---------------------------------------------------------------------

/// Tables 1 and 2's "Average" of the three commonsense tasks.
let private commonsenseAverage = Column.Mean("Average", [ Measure.HellaSwag; Measure.ArcEasy; Measure.ArcChallenge ])
let private commonsenseColumns = [ M Measure.HellaSwag; M Measure.ArcEasy; M Measure.ArcChallenge; commonsenseAverage ]
let private dprTask = [ Measure.TaskLoss; Measure.TaskAccuracy ]

/// Pythia-160m (tiny: stories260K) fine-tuned on DPR, evaluated on the commonsense tasks and the tiny-scale signal.
let private dprStudy (c: Ctx) (methods: Method list) =
    let e =
        experiment c Pythia160m Dataset.Dpr DprKind
            ([ Measure.HellaSwag; Measure.ArcEasy; Measure.ArcChallenge ] @ signalMeasures dprTask)
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll
    let title = if c.IsTiny then "stories260K on DPR" else "Pythia-160m on FLAN DPR"
    let bench = { Title = $"{title}: commonsense accuracy (%%)"; Columns = commonsenseColumns; Base = Some baseRun; Rows = runs }
    let signal = { Title = $"{title}: fine-tuning task and forgetting"; Columns = signalColumns dprTask; Base = Some baseRun; Rows = runs }
    baseRun, runs, bench, signal

/// Table 1: Adam and Lion reach similar fine-tuning loss; Lion's minimum is farther and forgets more.
let table1 (c: Ctx) =
    let baseRun, runs, bench, signal = dprStudy c [ Method.FullFT; Method.Lion ]
    let adam, lion = runs[0], runs[1]
    let adam = { adam with Label = "Adam" }
    let avg = commonsenseAverage
    let checks =
        [ Claims.comparable Measure.TaskLoss 0.10 lion adam
          Claims.distanceFraction adam lion 1.0
          Claims.forgetsLess Measure.PretrainProxy baseRun adam lion
          Claims.forgetsLess Measure.StoryCloze baseRun adam lion
          Results.check "Adam loses less commonsense accuracy than Lion on average (Table 1)"
              (avg.Value adam.Values - avg.Value baseRun.Values > avg.Value lion.Values - avg.Value baseRun.Values)
              $"average: base {avg.Value baseRun.Values:F2}, Adam {avg.Value adam.Values:F2}, Lion {avg.Value lion.Values:F2}" ]
    let tables = [ { bench with Rows = [ adam; lion ] }; { signal with Rows = [ adam; lion ] } ]
    finish c { output "table1" "table1" with Tables = tables; Paper = (Some Paper.table1); Checks = checks; Notes = [ tinyNote c ]; Figure = (Table.deltaChart tables[1]) }

/// Table 2: MoFO forgets less than Adam at similar fine-tuning loss.
let table2 (c: Ctx) =
    let baseRun, runs, bench, signal = dprStudy c [ Method.FullFT; Method.MoFO 0.15 ]
    let adam, mofo = { runs[0] with Label = "Adam" }, runs[1]
    let avg = commonsenseAverage
    let checks =
        [ Claims.comparable Measure.TaskLoss 0.05 mofo adam
          Claims.distanceFraction mofo adam 0.5
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo adam
          Claims.forgetsLess Measure.StoryCloze baseRun mofo adam
          Claims.forgetsLess Measure.GreedyIntact baseRun mofo adam
          Results.check "MoFO loses less commonsense accuracy than Adam on average (Table 2)"
              (avg.Value mofo.Values > avg.Value adam.Values)
              ($"average: base {avg.Value baseRun.Values:F2}, Adam {avg.Value adam.Values:F2}, MoFO {avg.Value mofo.Values:F2}" + (if c.IsTiny then " (near chance at tiny scale)" else "")) ]
    let tables = [ { bench with Rows = [ adam; mofo ] }; { signal with Rows = [ adam; mofo ] } ]
    finish c { output "table2" "table2" with Tables = tables; Paper = (Some Paper.table2); Checks = checks; Notes = [ tinyNote c ]; Figure = (Table.deltaChart tables[1]) }

// ---- Figures 1 and 3: the loss landscape ---------------------------------------------------------------------------

let private contour (s: Landscape.Surface) (z: float list list) (title: string) (nameA: string) (nameB: string) =
    let ax, ay = s.A
    let bx, by = s.B
    [ Chart.Contour(zData = z, X = s.Xs, Y = s.Ys, Name = title, ShowScale = false, ContoursColoring = StyleParam.ContourColoring.Heatmap)
      Chart.Point(x = [ 0.0 ], y = [ 0.0 ], Name = "pretrained", MarkerColor = Color.fromString "black", ShowLegend = false)
      Chart.Point(x = [ ax ], y = [ ay ], Name = $"{nameA} ({s.DistanceA:F2} from pretrained)", MarkerColor = Color.fromString "orange", MultiText = [ nameA ], TextPosition = StyleParam.TextPosition.TopCenter, ShowLegend = false)
      Chart.Point(x = [ bx ], y = [ by ], Name = $"{nameB} ({s.DistanceB:F2} from pretrained)", MarkerColor = Color.fromString "green", MultiText = [ nameB ], TextPosition = StyleParam.TextPosition.TopCenter, ShowLegend = false) ]
    |> Chart.combine
    |> Chart.withXAxisStyle $"along {nameA} − pretrained"
    |> Chart.withYAxisStyle "orthogonal direction"

/// Figures 1 and 3: fine-tuning and pretraining loss over the plane through the pretrained, Adam and Lion (Figure 1)
/// or Adam and MoFO (Figure 3) weights, with their distances.
let figureLandscape (c: Ctx) =
    let e = experiment c Pythia160m Dataset.Dpr DprKind (signalMeasures dprTask)
    let runs = e |> Experiment.compare [ Method.FullFT; Method.Lion; Method.MoFO 0.15 ] |> Experiment.runAll
    let adam, lion, mofo = runs[0], runs[1], runs[2]
    let _, task = Experiment.load e.Data e.Recipe.MaxLength
    let n, heldOut, nSamples = (if c.Smoke then 3, 8, 4 elif c.IsTiny then 13, 128, 32 else 9, 256, 32)
    let task = { task with HeldOut = List.truncate heldOut task.HeldOut }
    let samples =
        use b = MoFO.Models.ModelLoader.Load(e.Model.Path)
        Harnesses.baseSamples b c.Settings.Samples c.Settings.SampleTokens c.Settings.Seed c.Settings.Cache |> Seq.truncate nSamples |> ResizeArray
    eprintfn "landscape: Figure 1 (Adam, Lion), %d × %d points" n n
    let fig1 = Landscape.compute e.Model.Path adam.ModelPath lion.ModelPath task samples n 0.25
    eprintfn "landscape: Figure 3 (Adam, MoFO), %d × %d points" n n
    let fig3 = Landscape.compute e.Model.Path adam.ModelPath mofo.ModelPath task samples n 0.25
    let row name dist (ft: float, pt: float) = Results.row name [ "distance", dist; "finetune loss", ft; "pretrain loss (proxy)", pt ]
    let rows =
        [ row "pretrained" 0.0 fig3.AtOrigin
          row "Figure 1: Adam" fig1.DistanceA fig1.AtA
          row "Figure 1: Lion" fig1.DistanceB fig1.AtB
          row "Figure 3: Adam" fig3.DistanceA fig3.AtA
          row "Figure 3: MoFO" fig3.DistanceB fig3.AtB ]
    // the plane's exact points must be the models themselves: the same losses as the models loaded directly
    let directAdam, directMofo = Landscape.direct adam.ModelPath task samples, Landscape.direct mofo.ModelPath task samples
    let rel a b = abs (a - b) / max 1e-9 (abs b)
    let checks =
        [ Results.check "Figure 1(a): Adam and Lion reach similar fine-tuning loss (within 15 %)" (rel lion[Measure.TaskLoss] adam[Measure.TaskLoss] <= 0.15)
              $"held-out task loss: Adam {adam[Measure.TaskLoss]:F4}, Lion {lion[Measure.TaskLoss]:F4}"
          Results.check "Figure 1(a): Adam's minimum is closer to the pretrained model than Lion's" (fig1.DistanceA < fig1.DistanceB)
              $"distance: Adam {fig1.DistanceA:F3}, Lion {fig1.DistanceB:F3}"
          Results.check "Figure 1(b): the closer minimum (Adam) has the lower pretraining loss" (adam[Measure.PretrainProxy] < lion[Measure.PretrainProxy])
              $"pretrain proxy: Adam {adam[Measure.PretrainProxy]:F4}, Lion {lion[Measure.PretrainProxy]:F4}"
          Results.check "Figure 3(a): MoFO and Adam both reach low fine-tuning loss (MoFO within 10 % of Adam)" (mofo[Measure.TaskLoss] <= 1.10 * adam[Measure.TaskLoss])
              $"held-out task loss: Adam {adam[Measure.TaskLoss]:F4}, MoFO {mofo[Measure.TaskLoss]:F4}"
          Results.check "Figure 3(b): MoFO's distance from the pretrained model is a small fraction of Adam's (paper ≈ 20 %; here at most 50 %)" (fig3.DistanceB <= 0.5 * fig3.DistanceA)
              $"MoFO {fig3.DistanceB:F3}, Adam {fig3.DistanceA:F3}: {100.0 * fig3.DistanceB / fig3.DistanceA:F1} %%"
          Results.check "Figure 3(b): MoFO's minimum has the lower pretraining loss" (mofo[Measure.PretrainProxy] < adam[Measure.PretrainProxy])
              $"pretrain proxy: Adam {adam[Measure.PretrainProxy]:F4}, MoFO {mofo[Measure.PretrainProxy]:F4}"
          Results.check "the plane passes through the trained models (losses at their coordinates equal the models' own, within 1e-4 relative)"
              (rel (fst fig3.AtA) (fst directAdam) <= 1e-4 && rel (fst fig3.AtB) (fst directMofo) <= 1e-4 && rel (snd fig3.AtB) (snd directMofo) <= 1e-4)
              $"fine-tune loss on the {heldOut}-example subset: Adam {fst fig3.AtA:F5} in the plane vs {fst directAdam:F5} loaded; MoFO {fst fig3.AtB:F5} vs {fst directMofo:F5}; MoFO's pretrain proxy {snd fig3.AtB:F5} vs {snd directMofo:F5}" ]
    let chart =
        Chart.Grid(2, 2, SubPlotTitles = [ "Figure 1(a): fine-tuning loss"; "Figure 1(b): pretraining loss (proxy)"; "Figure 3(a): fine-tuning loss"; "Figure 3(b): pretraining loss (proxy)" ])
            [ contour fig1 fig1.Finetune "fine-tune" "Adam" "Lion"
              contour fig1 fig1.Pretrain "pretrain" "Adam" "Lion"
              contour fig3 fig3.Finetune "fine-tune" "Adam" "MoFO"
              contour fig3 fig3.Pretrain "pretrain" "Adam" "MoFO" ]
        |> Chart.withTitle "Loss landscapes on the plane through the pretrained model and two fine-tuned models (coordinates: weight distance)"
        |> Chart.withSize (1200, 1000)
    let layout =
        let sb = Text.StringBuilder()
        sb.AppendLine("### Distances and losses at the three models (grid values)").AppendLine() |> ignore
        sb.AppendLine("| point | distance | fine-tune loss | pretrain loss (proxy) |").AppendLine("|---|---|---|---|") |> ignore
        for r in rows do
            let m = Map.ofList r.Metrics
            sb.AppendLine($"""| {r.Method} | {m["distance"]:F3} | {m["finetune loss"]:F4} | {m["pretrain loss (proxy)"]:F4} |""") |> ignore
        sb.AppendLine().AppendLine($"Grid {n} × {n}; fine-tuning loss on {heldOut} held-out DPR examples, pretraining-loss proxy on {nSamples} base-model samples.").AppendLine(tinyNote c).ToString()
    let report: Results.Report =
        { Name = "figure-landscape"; Title = "figure-landscape"; Scale = c.Scale.Name; Seed = c.Seed; Rows = rows; Paper = None; Checks = checks
          ElapsedSeconds = c.Clock.Elapsed.TotalSeconds; Layout = Some layout }
    Results.finish c.Options report (Some chart)

// ---- Tables 3, 4 and 6: Llama-2-7B on MetaMathQA and Code-Alpaca ---------------------------------------------------

let private instructionMeasures (task: Measure) =
    [ task; Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.Gsm8k; Measure.HumanEval ]
    |> List.distinct
    |> fun ms -> ms @ signalMeasures [ Measure.TaskLoss; Measure.TaskTokenAccuracy ]

/// Columns of Tables 3 and 6 (MetaMathQA): GSM8K | Commonsense, MMLU, HumanEval, Average of the general capability.
let private mathColumns = [ M Measure.Gsm8k; Columns.commonsense; M Measure.Mmlu; M Measure.HumanEval; Column.Mean("Average", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.Mmlu; Measure.HumanEval ]) ]
/// Columns of Table 4 (Code-Alpaca): HumanEval | Commonsense, MMLU, GSM8K, Average.
let private codeColumns = [ M Measure.HumanEval; Columns.commonsense; M Measure.Mmlu; M Measure.Gsm8k; Column.Mean("Average", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.Mmlu; Measure.Gsm8k ]) ]

let private instructionStudy (c: Ctx) (data: Dataset) (kind: Kind) (taskMeasure: Measure) (columns: Column list) (methods: Method list) =
    let e = experiment c Llama2_7b data kind (instructionMeasures taskMeasure)
    let baseRun = Experiment.baseline e
    let runs = e |> Experiment.compare methods |> Experiment.runAll
    let name = if c.IsTiny then "stories260K" else "Llama-2-7B"
    let bench = { Title = $"{name} on {data.Name}: task and general capability (%%)"; Columns = columns; Base = Some baseRun; Rows = runs }
    let signal = { Title = $"{name} on {data.Name}: held-out task fit and forgetting"; Columns = signalColumns [ Measure.TaskLoss; Measure.TaskTokenAccuracy ]; Base = Some baseRun; Rows = runs }
    baseRun, runs, bench, signal

let private regularizationChecks (c: Ctx) (baseRun: Run) (full: Run) (hft: Run) (l1: Run) (l2: Run) (mofo: Run) (taskBench: Measure) =
    let g (cols: Column list) (r: Run) = (List.last cols).Value r.Values
    [ Claims.comparable Measure.TaskLoss 0.05 mofo full
      Claims.distanceFraction mofo full 0.5
      Claims.forgetsLess Measure.PretrainProxy baseRun mofo full
      Claims.forgetsLess Measure.StoryCloze baseRun mofo full
      Claims.forgetsLess Measure.PretrainProxy baseRun mofo hft
      Claims.beats Measure.TaskLoss mofo [ l1; l2 ]
      Results.check "L1 and L2 regularization cost fine-tuning performance (higher held-out loss than Full FT)"
          (l1[Measure.TaskLoss] > full[Measure.TaskLoss] && l2[Measure.TaskLoss] > full[Measure.TaskLoss])
          $"task loss: Full FT {full[Measure.TaskLoss]:F4}, L1 {l1[Measure.TaskLoss]:F4}, L2 {l2[Measure.TaskLoss]:F4}"
      Results.check ($"MoFO's {taskBench.Name} is comparable to Full FT's (within 5 points" + (if c.IsTiny then "; near zero at tiny scale)" else ")"))
          (100.0 * mofo[taskBench] >= 100.0 * full[taskBench] - 5.0)
          $"Full FT {100.0 * full[taskBench]:F1}, MoFO {100.0 * mofo[taskBench]:F1}" ]

/// Table 3: Llama-2-7B on MetaMathQA with Full FT, HFT, L1, L2 and MoFO (α = 15 %).
let table3 (c: Ctx) =
    let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.15 ]
    let baseRun, runs, bench, signal = instructionStudy c (metaMathQA c) MathKind Measure.Gsm8k mathColumns methods
    let checks = regularizationChecks c baseRun runs[0] runs[1] runs[2] runs[3] runs[4] Measure.Gsm8k
    finish c { output "table3" "table3" with Tables = [ bench; signal ]; Paper = (Some Paper.table3); Checks = checks; Notes = [ tinyNote c ]; Figure = (Table.deltaChart signal) }

/// Table 4: Llama-2-7B on Code-Alpaca with Full FT, HFT, L1, L2 and MoFO (α = 10 %).
let table4 (c: Ctx) =
    let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.10 ]
    let baseRun, runs, bench, signal = instructionStudy c (codeAlpaca c) CodeKind Measure.HumanEval codeColumns methods
    let checks = regularizationChecks c baseRun runs[0] runs[1] runs[2] runs[3] runs[4] Measure.HumanEval
    finish c { output "table4" "table4" with Tables = [ bench; signal ]; Paper = (Some Paper.table4); Checks = checks; Notes = [ tinyNote c ]; Figure = (Table.deltaChart signal) }

/// Table 6: at α = 10 %, MoFO against gradient-filtered and randomized BCD (and Full FT) on MetaMathQA.
let table6 (c: Ctx) =
    let methods = [ Method.FullFT; Method.RandomBCD 0.10; Method.GradBCD 0.10; Method.MoFO 0.10 ]
    let baseRun, runs, bench, signal = instructionStudy c (metaMathQA c) MathKind Measure.Gsm8k mathColumns methods
    let full, rnd, grad, mofo = runs[0], runs[1], runs[2], runs[3]
    let checks =
        [ Claims.beats Measure.TaskLoss mofo [ grad; rnd ]
          Claims.beats Measure.TaskTokenAccuracy mofo [ grad; rnd ]
          Claims.forgetsLess Measure.PretrainProxy baseRun mofo full
          Claims.forgetsLess Measure.PretrainProxy baseRun grad full
          Claims.forgetsLess Measure.PretrainProxy baseRun rnd full
          Results.check ("MoFO's GSM8K exceeds both BCD variants'" + (if c.IsTiny then " (near zero at tiny scale)" else "")) (mofo[Measure.Gsm8k] > grad[Measure.Gsm8k] && mofo[Measure.Gsm8k] > rnd[Measure.Gsm8k])
              $"GSM8K: MoFO {100.0 * mofo[Measure.Gsm8k]:F1}, gradient-filtered {100.0 * grad[Measure.Gsm8k]:F1}, randomized {100.0 * rnd[Measure.Gsm8k]:F1}" ]
    finish c { output "table6" "table6" with Tables = [ bench; signal ]; Paper = (Some Paper.table6); Checks = checks; Notes = [ tinyNote c ]; Figure = (Table.deltaChart signal) }

// ---- Figure 4: the update fraction α ---------------------------------------------------------------------------------

/// Figure 4: MoFO with α from 5 % to 80 % (and Full FT = 100 %) on MetaMathQA: (a) fine-tuning performance, (b) change of
/// general capability.
let figureFraction (c: Ctx) =
    let alphas = if c.Smoke then [ 0.05; 0.4 ] else [ 0.05; 0.10; 0.15; 0.20; 0.40; 0.60; 0.80 ]
    let measures =
        if c.IsTiny then signalMeasures [ Measure.TaskLoss; Measure.TaskTokenAccuracy ]
        else instructionMeasures Measure.Gsm8k
    let e = experiment c Llama2_7b (metaMathQA c) MathKind measures
    let baseRun = Experiment.baseline e
    let runs = (e |> Experiment.sweep alphas (fun a -> Experiment.withMethod (Method.MoFO a))) @ [ Experiment.withMethod Method.FullFT e ] |> Experiment.runAll
    let points = List.zip (alphas @ [ 1.0 ]) runs
    let mofoPoints = points |> List.take alphas.Length
    let full = List.last runs
    let general = Column.Mean("General capability", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag; Measure.Mmlu; Measure.HumanEval ])
    let perf, perfName = if c.IsTiny then Column.Of Measure.TaskTokenAccuracy, "held-out answer-token accuracy (%)" else Column.Of Measure.Gsm8k, "GSM8K (%)"
    let forget, forgetName =
        if c.IsTiny then Column.Of Measure.PretrainProxy, "pretraining-loss proxy (NLL; lower = less forgetting)"
        else general, "general capability (mean accuracy, %)"
    let table = { Title = "MoFO's update fraction α (100 % = Full FT)"; Columns = signalColumns [ Measure.TaskLoss; Measure.TaskTokenAccuracy ] @ (if c.IsTiny then [] else [ M Measure.Gsm8k; general ]); Base = Some baseRun; Rows = runs }
    let checks =
        [ Claims.trend "larger α learns more: held-out task loss falls as α grows (Figure 4a)" Measure.TaskLoss false mofoPoints
          Claims.trend "larger α forgets more: the pretraining-loss proxy rises as α grows (Figure 4b)" Measure.PretrainProxy true mofoPoints
          Claims.trend "larger α moves farther from the pretrained model" Measure.Distance true mofoPoints
          Results.check "every α forgets less than Full FT (pretraining-loss proxy)" (mofoPoints |> List.forall (fun (_, r) -> r[Measure.PretrainProxy] < full[Measure.PretrainProxy]))
              (String.Join(", ", points |> List.map (fun (a, r) -> $"{100.0 * a:F0} %%: {r[Measure.PretrainProxy]:F4}")))
          (let r5 = snd mofoPoints.Head
           let gain5 = perf.Value r5.Values - perf.Value baseRun.Values
           let gainFull = perf.Value full.Values - perf.Value baseRun.Values
           Results.check "α = 5 % already gains most of Full FT's improvement on the task (the paper: ≈ 90 % of its GSM8K)" (gainFull > 0.0 && gain5 / gainFull >= 0.5)
               $"gain over the base on {perf.Header}: α = 5 %% {gain5:F2}, Full FT {gainFull:F2} ({100.0 * gain5 / gainFull:F0} %%)") ]
    let xs = points |> List.map (fun (a, _) -> 100.0 * a)
    let chart =
        Chart.Grid(1, 2, SubPlotTitles = [ $"(a) {perfName}"; $"(b) {forgetName}" ])
            [ Chart.Line(x = xs, y = (points |> List.map (fun (_, r) -> perf.Value r.Values)), Name = "MoFO / Full FT (100 %)", ShowMarkers = true)
              |> Chart.withXAxisStyle "update fraction α (%)"
              Chart.Line(x = xs, y = (points |> List.map (fun (_, r) -> forget.Value r.Values)), Name = "forgetting", ShowMarkers = true)
              |> Chart.withXAxisStyle "update fraction α (%)" ]
        |> Chart.withTitle "Figure 4: the update fraction of MoFO"
        |> Chart.withSize (1200, 500)
    finish c { output "figure-fraction" "figure-fraction" with Tables = [ table ]; Paper = None; Checks = checks; Notes = [ Paper.fractionFigureNotes; tinyNote c ]; Figure = (Some chart) }

// ---- Table 5: continual fine-tuning -----------------------------------------------------------------------------------

/// The task stream: TRACE's eight tasks in the paper's order and epochs at paper scale; at tiny scale four tasks built
/// from the data root (DPR, GSM8K, MetaMathQA, Code-Alpaca; 160 training and 48 test examples each, 2 epochs).
let private stream (c: Ctx) : Continual.Stream * MoFO.Training.TaskMetric =
    match c.Scale with
    | Scale.Paper _ ->
        let root = require c "trace" (fun p -> p.Trace)
        let order = [ "C-STANCE", 5; "FOMC", 3; "MeetingBank", 7; "Py150", 5; "ScienceQA", 3; "NumGLUE-cm", 5; "NumGLUE-ds", 5; "20Minuten", 7 ]
        Continual.Stream.Trace(root, order), MoFO.Training.TaskMetric.Accuracy
    | Scale.Tiny ->
        let nTrain, nTest, epochs = (if c.Smoke then 8, 4, 1 else 160, 48, 2)
        Continual.Stream.Tiny(nTrain, nTest, epochs), MoFO.Training.TaskMetric.AnswerLikelihood

/// Table 5: TinyLlama-1.1B (tiny: stories260K) trained on the task stream in sequence; OP and BWT for Full FT, HFT,
/// MoFO (α = 5 %), GEM and Replay alone and with MoFO, and MTL (all tasks mixed, the upper bound).
let table5 (c: Ctx) =
    let stream, metric = stream c
    let tasks = Continual.tasks stream
    let recipe =
        if c.Smoke then { Recipe.Paper with Lr = 1e-3; BatchSize = 4; MicroBatchSize = 4; MaxLength = 128; Schedule = MoFO.Training.Schedule.Constant }
        elif c.IsTiny then { Recipe.Paper with Lr = 1e-3; BatchSize = 8; MicroBatchSize = 8; MaxLength = 256; Schedule = MoFO.Training.Schedule.Constant }
        else { Recipe.Paper with Lr = 1e-5; BatchSize = 64; MicroBatchSize = 4; MaxLength = 1024 }
    let memory = if c.IsTiny then 16 else 64
    let methods =
        [ Method.FullFT; Method.HFT; Method.MoFO 0.05; Method.GEM(memory, Method.FullFT); Method.GEM(memory, Method.MoFO 0.05)
          Method.Replay(memory, Method.FullFT); Method.Replay(memory, Method.MoFO 0.05); Method.MTL ]
    let e = { Experiment.create (model c TinyLlama) Dataset.Dpr Method.FullFT recipe [] c.Scale c.Seed with Settings = c.Settings }
    let outcomes: Continual.Outcome list =
        methods |> List.map (fun m -> { Continual.Job.Stream = stream; Continual.Job.Metric = metric; Continual.Job.Experiment = Experiment.withMethod m e })
        |> Sweep.continual
    let get m = outcomes |> List.find (fun o -> o.Method = m)
    let rows = [ for o in outcomes -> Results.row o.Method.Label ([ "OP", 100.0 * o.OP ] @ (if Double.IsNaN o.BWT then [] else [ "BWT", 100.0 * o.BWT ])) ]
    let full, hft, mofo = get Method.FullFT, get Method.HFT, get (Method.MoFO 0.05)
    let gem, gemMofo = get (Method.GEM(memory, Method.FullFT)), get (Method.GEM(memory, Method.MoFO 0.05))
    let replay, replayMofo = get (Method.Replay(memory, Method.FullFT)), get (Method.Replay(memory, Method.MoFO 0.05))
    let mtl = get Method.MTL
    let cmp (what: string) (a: Continual.Outcome) (b: Continual.Outcome) (f: Continual.Outcome -> float) =
        Results.check $"{a.Method.Label} has a higher {what} than {b.Method.Label}" (f a > f b) $"{100.0 * f a:F2} vs {100.0 * f b:F2}"
    let checks =
        [ cmp "OP" mofo full (fun o -> o.OP); cmp "BWT" mofo full (fun o -> o.BWT)
          cmp "OP" mofo hft (fun o -> o.OP); cmp "BWT" mofo hft (fun o -> o.BWT)
          cmp "OP" gemMofo gem (fun o -> o.OP); cmp "OP" replayMofo replay (fun o -> o.OP)
          Results.check "MTL has the highest OP (the upper bound)" (outcomes |> List.forall (fun o -> o.Method = Method.MTL || o.OP <= mtl.OP))
              (String.Join(", ", outcomes |> List.map (fun o -> $"{o.Method.Label} {100.0 * o.OP:F2}"))) ]
    let md =
        let sb = Text.StringBuilder()
        let names = tasks |> List.map (fun t -> t.Name)
        let arrow = String.Join(" → ", names)
        sb.AppendLine($"### Continual fine-tuning on {arrow} (metric: {metric}, in %%)").AppendLine() |> ignore
        sb.AppendLine("| Method | OP | BWT |").AppendLine("|---|---|---|") |> ignore
        for o in outcomes do sb.AppendLine($"""| {o.Method.Label} | {100.0 * o.OP:F2} | {(if Double.IsNaN o.BWT then "" else (100.0 * o.BWT).ToString("F2"))} |""") |> ignore
        sb.AppendLine().AppendLine("R[t, i] (rows: after training task t; columns: task i):").AppendLine() |> ignore
        for o in outcomes |> List.filter (fun o -> o.Method <> Method.MTL) do
            let cells = String.Join(" / ", o.R |> Array.map (fun row -> String.Join(" ", row |> Array.map (fun v -> if Double.IsNaN v then "·" else (100.0 * v).ToString("F1")))))
            sb.AppendLine($"- {o.Method.Label}: {cells}") |> ignore
        sb.AppendLine().AppendLine(Table.paperMarkdown Paper.table5) |> ignore
        if c.IsTiny then
            sb.AppendLine("At tiny scale TRACE is not available: the stream is four real fine-tuning sets from the data root, and R is the answer likelihood (geometric-mean probability of the answer tokens, teacher-forced), since greedy exact match is 0 for a 260K model.") |> ignore
        sb.ToString()
    let chart =
        Chart.Grid(1, 2, SubPlotTitles = [ "OP (%)"; "BWT (%)" ])
            [ Chart.Column(values = (outcomes |> List.map (fun o -> 100.0 * o.OP)), Keys = (outcomes |> List.map (fun o -> o.Method.Label)), Name = "OP")
              Chart.Column(values = (outcomes |> List.filter (fun o -> not (Double.IsNaN o.BWT)) |> List.map (fun o -> 100.0 * o.BWT)),
                           Keys = (outcomes |> List.filter (fun o -> not (Double.IsNaN o.BWT)) |> List.map (fun o -> o.Method.Label)), Name = "BWT") ]
        |> Chart.withTitle "Table 5: continual fine-tuning"
        |> Chart.withSize (1200, 500)
    let report: Results.Report =
        { Name = "table5"; Title = "table5"; Scale = c.Scale.Name; Seed = c.Seed; Rows = rows; Paper = Some (Table.paperRows [] Paper.table5); Checks = checks
          ElapsedSeconds = c.Clock.Elapsed.TotalSeconds; Layout = Some md }
    Results.finish c.Options report (Some chart)
