/// Beyond the paper: the learning–forgetting frontier of every method on DPR (tiny: stories260K; paper: Pythia-160m).
module MoFO.Dsl.Repro.Frontier

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Evals
open MoFO.Dsl.Study

/// A WiSE-FT point: a Full FT fine-tune averaged with the base at weight t (no training).
type WisePoint = { T: float; Lr: float; Seed: int; Learn: float; Forget: float; Run: Run }

/// The measures whose rank correlation with forgetting the sweep reports: L2 distance, the fraction of entries the
/// fine-tune changed, and the KL divergence from the base on the task's held-out answers.
let predictors : (string * (Run -> float)) list =
    [ "L2 distance from base", (fun r -> r[Measure.Distance])
      "updated fraction (entries ever changed)", (fun r -> match r.Train with Some t -> t.TouchedFraction | None -> nan)
      "KL to base on the task's answers", (fun r -> r[Measure.KlToBase]) ]

/// Full FT, MoFO at two α, HFT, L2, Lion and LoRA at two ranks, each at three learning rates (Lion at 0.2×, LoRA at 10×)
/// and two seeds; WiSE-FT curves of every Full FT point; and which measure predicts forgetting.
let frontier (c: Ctx) =
    let lora r = Method.LoRA (r, None)
    // gradient-filtered and randomized BCD (the paper's ablation, Table 6) are left out to keep the sweep within 45 min
    let methods = [ Method.FullFT; Method.MoFO 0.15; Method.MoFO 0.05; Method.HFT; Method.L2 1e-3; Method.Lion; lora 2; lora 8 ]
    let methods = if c.Smoke then [ Method.FullFT; Method.MoFO 0.15; lora 2 ] else methods
    // tiny: 1e-4 under-trains, 3e-4 is near the best held-out loss, 1e-3 over-trains DPR (300 steps ≈ 3.6 epochs)
    let lrs = if c.IsTiny then [ 1e-4; 3e-4; 1e-3 ] else [ 1e-5; 2e-5; 5e-5 ]
    let seeds = if c.Smoke then [ c.Seed ] else [ c.Seed; c.Seed + 1 ]
    let lrs = if c.Smoke then [ 1e-3; 3e-3 ] else lrs
    let e = experiment c Pythia160m Dataset.Dpr DprKind [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.Distance; Measure.KlToBase ]
    let baseRun, points = Frontier.run methods lrs seeds e
    // WiSE-FT: every Full FT fine-tune averaged with the base at t (its cached run, no training)
    let ts = if c.Smoke then [ 0.5 ] else [ 0.25; 0.5; 0.75 ]
    let wise =
        [ for x in Frontier.experiments [ Method.FullFT ] lrs seeds e do
            for t in ts do
                let r = Experiment.averaged t x
                yield { T = t; Lr = x.Recipe.Lr; Seed = x.Seed; Learn = r[Measure.TaskLoss]; Forget = r[Measure.PretrainProxy] - baseRun[Measure.PretrainProxy]; Run = r } ]
    let mofo = Method.MoFO 0.15
    let loras = methods |> List.filter (fun m -> match m with Method.LoRA _ -> true | _ -> false)
    let wiseCurve seed =
        (baseRun[Measure.TaskLoss], 0.0)
        :: [ for p in points do if p.Method = Method.FullFT && p.Seed = seed then yield p.Learn, p.Forget ]
        @ [ for w in wise do if w.Seed = seed then yield w.Learn, w.Forget ]
    let matched =
        (methods |> List.filter (fun m -> m <> Method.FullFT) |> List.map (Frontier.matched Method.FullFT points))
        @ [ for m in loras -> Frontier.matched m points mofo ]
        @ [ for m in mofo :: loras -> Frontier.matchedWith "Full FT + WiSE-FT" wiseCurve points m ]
    // where frontiers do not overlap in task loss: is every LoRA point beaten by a MoFO point on both axes?
    let dominance = [ for m in loras -> m, Frontier.dominatedBy mofo points m ]
    // which measure predicts forgetting: Spearman's ρ over every fine-tune and WiSE point, with a bootstrap band
    let sample = [ for p in points -> p.Forget, p.Run ] @ [ for w in wise -> w.Forget, w.Run ]
    let correlations =
        [ for name, f in predictors ->
            let pairs = [ for forget, r in sample -> f r, forget ]
            let rho, lo, hi = Stats.spearmanBand pairs 2000 c.Seed
            name, rho, lo, hi, (pairs |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y) |> List.length) ]
    let best = correlations |> List.filter (fun (_, rho, _, _, _) -> Double.IsFinite rho) |> List.sortByDescending (fun (_, rho, _, _, _) -> rho)
    let f4 (x: float) = if Double.IsNaN x then "–" else x.ToString("0.0000", Globalization.CultureInfo.InvariantCulture)
    // rows: each method × lr (means over seeds), then each method's matched-loss advantage
    let groups = points |> List.groupBy (fun p -> p.Method, p.Lr)
    let mean (f: Frontier.Point -> float) (ps: Frontier.Point list) = ps |> List.averageBy f
    let spread (f: Frontier.Point -> float) (ps: Frontier.Point list) = (ps |> List.map f |> List.max) - (ps |> List.map f |> List.min)
    let pointRows =
        [ for (m, lr), ps in groups ->
            Results.row $"{m.Label} @ lr {lr:G3}"
                [ "lr", Recipe.lrFor m { e.Recipe with Lr = lr }; "task loss", mean (fun p -> p.Learn) ps; "task loss spread", spread (fun p -> p.Learn) ps
                  "forgetting (Δ proxy NLL)", mean (fun p -> p.Forget) ps; "forgetting spread", spread (fun p -> p.Forget) ps
                  "Δ story cloze", mean (fun p -> p.Run[Measure.StoryCloze] - baseRun[Measure.StoryCloze]) ps
                  "task acc", mean (fun p -> p.Run[Measure.TaskAccuracy]) ps
                  "L2 from base", mean (fun p -> p.Run[Measure.Distance]) ps; "seeds", float ps.Length ] ]
    let wiseRows =
        [ for (t, lr), ws in wise |> List.groupBy (fun w -> w.T, w.Lr) ->
            Results.row $"WiSE-FT t={t} of Full FT @ lr {lr:G3}"
                [ "t", t; "task loss", ws |> List.averageBy (fun w -> w.Learn); "forgetting (Δ proxy NLL)", ws |> List.averageBy (fun w -> w.Forget)
                  "L2 from base", ws |> List.averageBy (fun w -> w.Run[Measure.Distance]); "KL to base", ws |> List.averageBy (fun w -> w.Run[Measure.KlToBase])
                  "seeds", float ws.Length ] ]
    let predictorRows =
        [ for name, rho, lo, hi, n in correlations ->
            Results.row $"predictor of forgetting: {name}" [ "Spearman rho", rho; "band low", lo; "band high", hi; "points", float n ] ]
    let matchedRows =
        [ for mt in matched ->
            Results.row $"matched loss: {mt.Method.Label} vs {mt.Reference}"
                [ "less forgetting than Full FT (Δ proxy NLL)", mt.Mean; "band low", mt.BandLow; "band high", mt.BandHigh; "relative", mt.Relative
                  "seeds with overlap", float (mt.PerSeed |> List.filter (fun (_, a) -> a.IsSome) |> List.length) ] ]
    let checks =
        [ for mt in matched do
            let per = String.Join("; ", mt.PerSeed |> List.map (fun (s, a) -> match a with Some (d, r, (lo, hi)) -> $"seed {s}: {f4 d} ({mt.Reference} forgets {f4 r}) over task loss {lo:F3}–{hi:F3}" | None -> $"seed {s}: no overlap of task-loss ranges"))
            let perSeed = mt.PerSeed |> List.map snd
            let holds = perSeed |> List.forall (fun a -> match a with Some (d, _, _) -> d > 0.0 | None -> false)
            yield Results.check $"{mt.Method.Label} forgets less than {mt.Reference} at matched fine-tuning loss (for every seed, whose frontier must overlap {mt.Reference}'s)" holds
                      $"mean {f4 mt.Mean} nats/token less ({100.0 * mt.Relative:F0} %% of {mt.Reference}'s forgetting), band [{f4 mt.BandLow}, {f4 mt.BandHigh}]; {per}"
          for m, (beaten, mine) in dominance do
              let best (ps: Frontier.Point list) = if ps.IsEmpty then nan else ps |> List.map (fun p -> p.Learn) |> List.min
              let mofoPts = points |> List.filter (fun p -> p.Method = mofo)
              yield Results.check $"every {m.Label} point is beaten by a {mofo.Label} point of its seed on both task loss and forgetting" (not mine.IsEmpty && beaten.Length = mine.Length)
                        $"{beaten.Length} of {mine.Length} beaten; best task loss {m.Label} {f4 (best mine)}, {mofo.Label} {f4 (best mofoPts)}"
          let corrText = String.Join("; ", correlations |> List.map (fun (name, rho, lo, hi, n) -> $"{name}: ρ {f4 rho} [{f4 lo}, {f4 hi}] over {n} points"))
          match best with
          | (name, rho, lo, _, _) :: rest ->
              let runnerUp = match rest with (_, r2, _, hi2, _) :: _ -> Some (r2, hi2) | [] -> None
              let separated = match runnerUp with Some (_, hi2) -> lo > hi2 | None -> true
              yield Results.check "KL to base on the task predicts forgetting best (the highest Spearman ρ; RL's Razor)" (name = "KL to base on the task's answers")
                        $"""best: {name} (ρ {f4 rho}); {(if separated then "its band lies above the runner-up's" else "its band overlaps the runner-up's")}; {corrText}"""
          | [] -> yield Results.check "KL to base on the task predicts forgetting best (the highest Spearman ρ; RL's Razor)" false $"no correlation could be computed; {corrText}" ]
    let colors = [ "black"; "green"; "limegreen"; "royalblue"; "purple"; "red"; "darkorange"; "saddlebrown" ]
    let traces =
        [ for i, m in List.indexed methods do
            let color = Color.fromString colors[i % colors.Length]
            let mine = points |> List.filter (fun p -> p.Method = m)
            // the frontier of the seed means per learning rate (Pareto-optimal points, by task loss)
            let meanCurve = mine |> List.groupBy (fun p -> p.Lr) |> List.map (fun (_, ps) -> mean (fun p -> p.Learn) ps, mean (fun p -> p.Forget) ps) |> Frontier.pareto
            yield Chart.Line(x = (meanCurve |> List.map fst), y = (meanCurve |> List.map snd), Name = m.Label, ShowMarkers = true, LineColor = color, MarkerColor = color)
            yield Chart.Point(x = (mine |> List.map (fun p -> p.Learn)), y = (mine |> List.map (fun p -> p.Forget)), Name = $"{m.Label} (each seed)",
                              MarkerColor = color, Opacity = 0.35, ShowLegend = false,
                              MultiText = (mine |> List.map (fun p -> $"lr {p.Lr:G3}, seed {p.Seed}"))) ]
    let wiseTraces =
        [ for i, lr in List.indexed lrs do
            let at t = wise |> List.filter (fun w -> w.Lr = lr && w.T = t)
            let full = points |> List.filter (fun p -> p.Method = Method.FullFT && p.Lr = lr)
            let curve =
                [ yield baseRun[Measure.TaskLoss], 0.0
                  for t in ts do
                      let ws = at t
                      if not ws.IsEmpty then yield ws |> List.averageBy (fun w -> w.Learn), ws |> List.averageBy (fun w -> w.Forget)
                  if not full.IsEmpty then yield full |> List.averageBy (fun p -> p.Learn), full |> List.averageBy (fun p -> p.Forget) ]
            yield Chart.Line(x = List.map fst curve, y = List.map snd curve, Name = "WiSE-FT of Full FT (t = 0 … 1)", ShowMarkers = true, ShowLegend = (i = 0),
                             LineColor = Color.fromString "gray", MarkerColor = Color.fromString "gray", LineDash = StyleParam.DrawingStyle.Dash,
                             MultiText = ([ "base" ] @ [ for t in ts -> $"t {t}, lr {lr:G3}" ] @ [ $"Full FT, lr {lr:G3}" ])) ]
    let frontierChart =
        Chart.combine (traces @ wiseTraces)
        |> Chart.withXAxisStyle "held-out fine-tuning loss (lower = learned more)"
        |> Chart.withYAxisStyle "forgetting (Δ proxy NLL, nats/token)"
    let scatter (name: string, f: Run -> float) =
        Chart.combine
            [ for i, m in List.indexed methods do
                let mine = points |> List.filter (fun p -> p.Method = m)
                yield Chart.Point(x = (mine |> List.map (fun p -> f p.Run)), y = (mine |> List.map (fun p -> p.Forget)), Name = m.Label, ShowLegend = false,
                                  MarkerColor = Color.fromString colors[i % colors.Length])
              yield Chart.Point(x = (wise |> List.map (fun w -> f w.Run)), y = (wise |> List.map (fun w -> w.Forget)), Name = "WiSE-FT", ShowLegend = false,
                                MarkerColor = Color.fromString "gray") ]
        |> Chart.withXAxisStyle name
        |> Chart.withYAxisStyle "forgetting"
    let rhoTitle (name: string) =
        match correlations |> List.tryFind (fun (n, _, _, _, _) -> n = name) with
        | Some (_, rho, lo, hi, _) -> $"{name}: Spearman ρ {f4 rho} [{f4 lo}, {f4 hi}]"
        | None -> name
    let chart =
        [ frontierChart ] @ (predictors |> List.map scatter)
        |> Chart.Grid(2, 2, SubPlotTitles = ([ "Learning–forgetting frontiers (lines: Pareto frontier of the seed means; dots: each seed and rate; dashed: WiSE-FT)" ] @ (predictors |> List.map (fst >> rhoTitle))))
        |> Chart.withSize (1400, 1000)
    let md =
        let sb = Text.StringBuilder()
        let lrText = String.Join(", ", lrs |> List.map (fun l -> l.ToString("G3")))
        let seedText = String.Join(", ", seeds)
        sb.AppendLine($"### Learning–forgetting frontier on {e.Data.Name} ({e.Model.Label}; learning rates {lrText}, Lion at {Method.Lion.LrScale}×, LoRA at {MoFO.Training.Methods.LoraLrScale}×; seeds {seedText})").AppendLine() |> ignore
        sb.AppendLine("Methods: " + String.Join(", ", methods |> List.map (fun m -> m.Label)) + " (LoRA: adapters on the attention and MLP projections, α = 2r; gradient-filtered and randomized BCD are left out of this sweep to keep it within 45 minutes).").AppendLine() |> ignore
        sb.AppendLine($"Base model: held-out task loss {f4 baseRun[Measure.TaskLoss]}, pretraining-loss proxy {f4 baseRun[Measure.PretrainProxy]}, story cloze {f4 baseRun[Measure.StoryCloze]}.").AppendLine() |> ignore
        sb.AppendLine("| method | lr | task loss | forgetting (Δ proxy) | Δ story cloze | task acc | L2 from base |").AppendLine("|---|---|---|---|---|---|---|") |> ignore
        for r in pointRows do
            let m = Map.ofList r.Metrics
            sb.AppendLine($"""| {r.Method} | {m["lr"]:G3} | {f4 m["task loss"]} ± {f4 (m["task loss spread"] / 2.0)} | {f4 m["forgetting (Δ proxy NLL)"]} ± {f4 (m["forgetting spread"] / 2.0)} | {f4 m["Δ story cloze"]} | {f4 m["task acc"]} | {f4 m["L2 from base"]} |""") |> ignore
        sb.AppendLine().AppendLine("### At matched fine-tuning loss (interpolated along each seed's Pareto frontier of (task loss, forgetting), over the overlap of the frontiers' task-loss ranges)").AppendLine() |> ignore
        sb.AppendLine("| method | compared with | less forgetting (nats/token) | 95 % band over seeds | relative to the reference's forgetting |").AppendLine("|---|---|---|---|---|") |> ignore
        for mt in matched do
            sb.AppendLine($"| {mt.Method.Label} | {mt.Reference} | {f4 mt.Mean} | [{f4 mt.BandLow}, {f4 mt.BandHigh}] | {100.0 * mt.Relative:F0} %% |") |> ignore
        for m, (beaten, mine) in dominance do
            sb.AppendLine().Append($"{m.Label}: {beaten.Length} of its {mine.Length} points are beaten by a {mofo.Label} point of the same seed on both task loss and forgetting.") |> ignore
        sb.AppendLine() |> ignore
        sb.AppendLine().AppendLine($"### WiSE-FT: each Full FT fine-tune averaged with the base, θ = (1 − t)·θ_base + t·θ_tuned (means over seeds)").AppendLine() |> ignore
        sb.AppendLine("| t | Full FT lr | task loss | forgetting (Δ proxy) | L2 from base | KL to base |").AppendLine("|---|---|---|---|---|---|") |> ignore
        for (t, lr), ws in wise |> List.groupBy (fun w -> w.T, w.Lr) |> List.sortBy fst do
            let avg f = ws |> List.averageBy f
            sb.AppendLine($"| {t} | {lr:G3} | {f4 (avg (fun w -> w.Learn))} | {f4 (avg (fun w -> w.Forget))} | {f4 (avg (fun w -> w.Run[Measure.Distance]))} | {f4 (avg (fun w -> w.Run[Measure.KlToBase]))} |") |> ignore
        sb.AppendLine().AppendLine($"### Which measure predicts forgetting? Spearman's ρ with the rise of the pretraining-loss proxy over all {sample.Length} fine-tunes and WiSE-FT points (95 %% percentile bootstrap band over points, 2000 resamples)").AppendLine() |> ignore
        sb.AppendLine("| measure | Spearman ρ | band | points |").AppendLine("|---|---|---|---|") |> ignore
        for name, rho, lo, hi, n in correlations do
            sb.AppendLine($"| {name} | {f4 rho} | [{f4 lo}, {f4 hi}] | {n} |") |> ignore
        match best with
        | (name, rho, _, _, _) :: _ -> sb.AppendLine().AppendLine($"Best predictor here: **{name}** (ρ {f4 rho}).") |> ignore
        | [] -> ()
        sb.AppendLine().AppendLine("± is half the spread over seeds. " + tinyNote c) |> ignore
        sb.ToString()
    let report: Results.Report =
        { Name = "frontier"; Title = "frontier"; Scale = c.Scale.Name; Seed = c.Seed; Rows = pointRows @ wiseRows @ matchedRows @ predictorRows; Paper = None; Checks = checks
          ElapsedSeconds = c.Clock.Elapsed.TotalSeconds; Layout = Some md }
    Results.finish c.Options report (Some chart)
