/// The learning–forgetting frontier's analysis and rendering (paper-repro/frontier.fsx composes them): WiSE-FT points,
/// which measure predicts forgetting (Spearman with a bootstrap band), the claim checks of matched comparisons and of
/// Pareto dominance, the result rows, the Markdown tables and the figure.
module MoFO.Dsl.FrontierReport

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Evals

/// A WiSE-FT point: a Full FT fine-tune averaged with the base at weight t (no training).
type WisePoint = { T: float; Lr: float; Seed: int; Learn: float; Forget: float; Run: Run }

/// WiSE-FT of each experiment's (cached) fine-tune at each t: learning = its task loss, forgetting = the rise of the
/// pretraining-loss proxy over the base's.
let wise (ts: float list) (experiments: Experiment list) (baseRun: Run) =
    [ for x in experiments do
        for t in ts do
            let r = Experiment.averaged t x
            yield { T = t; Lr = x.Recipe.Lr; Seed = x.Seed; Learn = r[Measure.TaskLoss]; Forget = r[Measure.PretrainProxy] - baseRun[Measure.PretrainProxy]; Run = r } ]

/// A merge of one Full FT fine-tune with its base alone (`Experiment.merged how []`: a sparsified task vector, no training).
type MergedPoint = { How: Merge; Lr: float; Seed: int; Learn: float; Forget: float; Run: Run }

/// A merge rule's name in tables ("TIES (d=0.2)", "DARE (d=0.5)").
let mergeName (how: Merge) =
    match how with
    | Merge.TaskArithmetic ws -> $"""task arithmetic ({String.Join(", ", ws)})"""
    | Merge.Ties d -> $"TIES (d={d})"
    | Merge.Dare (d, _) -> $"DARE (d={d})"

/// Each merge rule applied to each experiment's (cached) fine-tune alone: learning = its task loss, forgetting = the
/// rise of the pretraining-loss proxy over the base's.
let merged (hows: Merge list) (experiments: Experiment list) (baseRun: Run) =
    [ for x in experiments do
        for how in hows do
            let r = Experiment.merged how [] x
            yield { How = how; Lr = x.Recipe.Lr; Seed = x.Seed; Learn = r[Measure.TaskLoss]; Forget = r[Measure.PretrainProxy] - baseRun[Measure.PretrainProxy]; Run = r } ]

/// The (task loss, forgetting) curve of one merge rule for a seed (over the learning rates of the fine-tunes it merged),
/// for `Frontier.matchedWith`.
let mergeCurve (how: Merge) (points: MergedPoint list) (seed: int) =
    [ for p in points do if p.How = how && p.Seed = seed then yield p.Learn, p.Forget ]

/// The Markdown table and the result rows of the merged points (means over seeds).
let mergedTable (points: MergedPoint list) =
    let sb = Text.StringBuilder()
    let line (s: string) = sb.AppendLine(s) |> ignore
    if not points.IsEmpty then
        line "### TIES and DARE of each Full FT fine-tune alone (its task vector sparsified; no training; means over seeds)"
        line ""
        line "| merge | Full FT lr | task loss | forgetting (Δ proxy) | L2 from base | KL to base |"
        line "|---|---|---|---|---|---|"
        for (how, lr), ps in points |> List.groupBy (fun p -> p.How, p.Lr) do
            let avg f = ps |> List.averageBy f
            line $"| {mergeName how} | {lr:G3} | {avg (fun p -> p.Learn):F4} | {avg (fun p -> p.Forget):F4} | {avg (fun p -> p.Run[Measure.Distance]):F4} | {avg (fun p -> p.Run[Measure.KlToBase]):F4} |"
        line ""
    sb.ToString()

/// The result rows of the merged points (means over seeds).
let mergedRows (points: MergedPoint list) =
    [ for (how, lr), ps in points |> List.groupBy (fun p -> p.How, p.Lr) ->
        Results.row $"{mergeName how} of Full FT @ lr {lr:G3}"
            [ "task loss", ps |> List.averageBy (fun p -> p.Learn); "forgetting (Δ proxy NLL)", ps |> List.averageBy (fun p -> p.Forget)
              "L2 from base", ps |> List.averageBy (fun p -> p.Run[Measure.Distance]); "seeds", float ps.Length ] ]

/// Spearman's ρ between a measure and forgetting over some points, with a 95 % percentile bootstrap band.
type Correlation = { Name: string; Rho: float; Low: float; High: float; Points: int }

/// The correlation of each predictor with forgetting over (forgetting, run) pairs (2000 seeded resamples).
let correlations (predictors: (string * (Run -> float)) list) (sample: (float * Run) list) (seed: int) =
    [ for name, f in predictors ->
        let pairs = [ for forget, r in sample -> f r, forget ]
        let rho, lo, hi = Stats.spearmanBand pairs 2000 seed
        { Name = name; Rho = rho; Low = lo; High = hi; Points = pairs |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y) |> List.length } ]

let private f4 (x: float) = if Double.IsNaN x then "–" else x.ToString("0.0000", Globalization.CultureInfo.InvariantCulture)

/// The check that a method forgets less than its reference at matched fine-tuning loss, for every seed.
let matchedCheck (mt: Frontier.Matched) =
    let per =
        String.Join("; ", mt.PerSeed |> List.map (fun (s, a) ->
            match a with
            | Some (d, r, (lo, hi)) -> $"seed {s}: {f4 d} ({mt.Reference} forgets {f4 r}) over task loss {lo:F3}–{hi:F3}"
            | None -> $"seed {s}: no overlap of task-loss ranges"))
    let holds = mt.PerSeed |> List.forall (fun (_, a) -> match a with Some (d, _, _) -> d > 0.0 | None -> false)
    Results.check $"{mt.Method.Label} forgets less than {mt.Reference} at matched fine-tuning loss (for every seed, whose frontier must overlap {mt.Reference}'s)" holds
        $"mean {f4 mt.Mean} nats/token less ({100.0 * mt.Relative:F0} %% of {mt.Reference}'s forgetting), band [{f4 mt.BandLow}, {f4 mt.BandHigh}]; {per}"

/// The check that every point of a method is beaten by a point of `by` of its seed on both task loss and forgetting.
let dominanceCheck (by: Method) (points: Frontier.Point list) (m: Method) =
    let beaten, mine = Frontier.dominatedBy by points m
    let best (ps: Frontier.Point list) = if ps.IsEmpty then nan else ps |> List.map (fun p -> p.Learn) |> List.min
    let byPoints = points |> List.filter (fun p -> p.Method = by)
    Results.check $"every {m.Label} point is beaten by a {by.Label} point of its seed on both task loss and forgetting" (not mine.IsEmpty && beaten.Length = mine.Length)
        $"{beaten.Length} of {mine.Length} beaten; best task loss {m.Label} {f4 (best mine)}, {by.Label} {f4 (best byPoints)}"

/// The correlations, best first.
let ranked (cs: Correlation list) = cs |> List.filter (fun c -> Double.IsFinite c.Rho) |> List.sortByDescending (fun c -> c.Rho)

/// The check that `expected` predicts forgetting best (the highest ρ), saying whether its band clears the runner-up's.
let predictorCheck (expected: string) (cs: Correlation list) =
    let claim = $"{expected} predicts forgetting best (the highest Spearman ρ)"
    let all = String.Join("; ", cs |> List.map (fun c -> $"{c.Name}: ρ {f4 c.Rho} [{f4 c.Low}, {f4 c.High}] over {c.Points} points"))
    match ranked cs with
    | best :: rest ->
        let separated = match rest with r :: _ -> best.Low > r.High | [] -> true
        Results.check claim (best.Name = expected)
            $"""best: {best.Name} (ρ {f4 best.Rho}); {(if separated then "its band lies above the runner-up's" else "its band overlaps the runner-up's")}; {all}"""
    | [] -> Results.check claim false $"no correlation could be computed; {all}"

let private mean (f: Frontier.Point -> float) (ps: Frontier.Point list) = ps |> List.averageBy f
let private spread (f: Frontier.Point -> float) (ps: Frontier.Point list) = (ps |> List.map f |> List.max) - (ps |> List.map f |> List.min)

/// The rows: each method × learning rate (means over seeds), each WiSE-FT t × rate, each matched comparison, each
/// predictor.
let rows (recipe: Recipe) (baseRun: Run) (points: Frontier.Point list) (wise: WisePoint list) (matched: Frontier.Matched list) (cs: Correlation list)
         (budgets: Frontier.WithinBudget list) =
    let pointRows =
        [ for (m, lr), ps in points |> List.groupBy (fun p -> p.Method, p.Lr) ->
            Results.row $"{m.Label} @ lr {Recipe.lrFor m { recipe with Lr = lr }:G3}"
                [ "lr", Recipe.lrFor m { recipe with Lr = lr }; "task loss", mean (fun p -> p.Learn) ps; "task loss spread", spread (fun p -> p.Learn) ps
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
    let matchedRows =
        [ for mt in matched ->
            Results.row $"matched loss: {mt.Method.Label} vs {mt.Reference}"
                [ "less forgetting than Full FT (Δ proxy NLL)", mt.Mean; "band low", mt.BandLow; "band high", mt.BandHigh; "relative", mt.Relative
                  "seeds with overlap", float (mt.PerSeed |> List.filter (fun (_, a) -> a.IsSome) |> List.length) ] ]
    let predictorRows =
        [ for c in cs -> Results.row $"predictor of forgetting: {c.Name}" [ "Spearman rho", c.Rho; "band low", c.Low; "band high", c.High; "points", float c.Points ] ]
    let budgetRows =
        [ for b in budgets ->
            Results.row $"within budget {b.Budget:G3}: {b.Method.Label}"
                [ "budget (Δ proxy NLL)", b.Budget; "best task loss", b.Mean
                  "seeds within", float (b.PerSeed |> List.filter (fun (_, x) -> x.IsSome) |> List.length) ] ]
    pointRows @ wiseRows @ matchedRows @ predictorRows @ budgetRows

/// The Markdown table of the best task loss within each forgetting budget: a row per method, a column per budget (the
/// mean over seeds; the learning rate and step of each seed's best model beside it).
let budgetTable (budgets: Frontier.WithinBudget list) =
    let sb = Text.StringBuilder()
    let line (s: string) = sb.AppendLine(s) |> ignore
    let limits = budgets |> List.map (fun b -> b.Budget) |> List.distinct |> List.sort
    if not limits.IsEmpty then
        line "### The best task loss within a forgetting budget (the lowest held-out loss among each method's models — every watch of every learning rate's run, measured on the watch's probe set: the first 64 held-out examples — whose proxy rise stays within the budget; mean over seeds)"
        line ""
        line ("| method | " + String.Join(" | ", limits |> List.map (fun l -> $"Δ proxy ≤ {l:G3}")) + " |")
        line ("|---|" + String.replicate limits.Length "---|")
        for m in budgets |> List.map (fun b -> b.Method) |> List.distinct do
            let cell (l: float) =
                match budgets |> List.tryFind (fun b -> b.Method = m && b.Budget = l) with
                | Some b ->
                    let where =
                        b.PerSeed |> List.map (fun (s, x) ->
                            match x with
                            | Some (_, _, 0) -> $"s{s}: the base"
                            | Some (_, lr, step) -> $"s{s}: lr {lr:G3}, step {step}"
                            | None -> $"s{s}: none")
                    let places = String.Join("; ", where)
                    $"{f4 b.Mean} ({places})"
                | None -> "–"
            line ($"| {m.Label} | " + String.Join(" | ", limits |> List.map cell) + " |")
        line ""
    sb.ToString()

/// The Markdown: the frontier's points per method and rate, the matched comparisons, dominance, WiSE-FT, the predictors.
let markdown (e: Experiment) (methods: Method list) (lrs: float list) (seeds: int list) (baseRun: Run) (points: Frontier.Point list)
             (wise: WisePoint list) (matched: Frontier.Matched list) (dominance: (Method * (Frontier.Point list * Frontier.Point list)) list)
             (by: Method) (cs: Correlation list) (budgets: Frontier.WithinBudget list) (note: string) =
    let sb = Text.StringBuilder()
    let line (s: string) = sb.AppendLine(s) |> ignore
    let lrText, seedText = String.Join(", ", lrs |> List.map (fun l -> l.ToString("G3"))), String.Join(", ", seeds)
    let scaled = methods |> List.filter (fun m -> m.LrScale <> 1.0) |> List.map (fun m -> $"{m.Label} at {m.LrScale}×")
    let scaledText = if scaled.IsEmpty then "" else ", " + String.Join(", ", scaled)
    line $"### Learning–forgetting frontier on {e.Data.Name} ({e.Model.Label}; learning rates {lrText}{scaledText}; seeds {seedText})"
    line ""
    line ("Methods: " + String.Join(", ", methods |> List.map (fun m -> m.Label)) + ".")
    line ""
    line $"Base model: held-out task loss {f4 baseRun[Measure.TaskLoss]}, pretraining-loss proxy {f4 baseRun[Measure.PretrainProxy]}, story cloze {f4 baseRun[Measure.StoryCloze]}."
    line ""
    line "| method | lr | task loss | forgetting (Δ proxy) | Δ story cloze | task acc | L2 from base |"
    line "|---|---|---|---|---|---|---|"
    for (m, lr), ps in points |> List.groupBy (fun p -> p.Method, p.Lr) do
        let rate = Recipe.lrFor m { e.Recipe with Lr = lr }
        line $"| {m.Label} | {rate:G3} | {f4 (mean (fun p -> p.Learn) ps)} ± {f4 (spread (fun p -> p.Learn) ps / 2.0)} | {f4 (mean (fun p -> p.Forget) ps)} ± {f4 (spread (fun p -> p.Forget) ps / 2.0)} | {f4 (mean (fun p -> p.Run[Measure.StoryCloze] - baseRun[Measure.StoryCloze]) ps)} | {f4 (mean (fun p -> p.Run[Measure.TaskAccuracy]) ps)} | {f4 (mean (fun p -> p.Run[Measure.Distance]) ps)} |"
    line ""
    line "### At matched fine-tuning loss (interpolated along each seed's Pareto frontier of (task loss, forgetting), over the overlap of the frontiers' task-loss ranges)"
    line ""
    line "| method | compared with | less forgetting (nats/token) | 95 % band over seeds | relative to the reference's forgetting |"
    line "|---|---|---|---|---|"
    for mt in matched do line $"| {mt.Method.Label} | {mt.Reference} | {f4 mt.Mean} | [{f4 mt.BandLow}, {f4 mt.BandHigh}] | {100.0 * mt.Relative:F0} %% |"
    for m, (beaten, mine) in dominance do
        line ""
        line $"{m.Label}: {beaten.Length} of its {mine.Length} points are beaten by a {by.Label} point of the same seed on both task loss and forgetting."
    line ""
    sb.Append(budgetTable budgets) |> ignore
    line "### WiSE-FT: each Full FT fine-tune averaged with the base, θ = (1 − t)·θ_base + t·θ_tuned (means over seeds)"
    line ""
    line "| t | Full FT lr | task loss | forgetting (Δ proxy) | L2 from base | KL to base |"
    line "|---|---|---|---|---|---|"
    for (t, lr), ws in wise |> List.groupBy (fun w -> w.T, w.Lr) |> List.sortBy fst do
        let avg f = ws |> List.averageBy f
        line $"| {t} | {lr:G3} | {f4 (avg (fun w -> w.Learn))} | {f4 (avg (fun w -> w.Forget))} | {f4 (avg (fun w -> w.Run[Measure.Distance]))} | {f4 (avg (fun w -> w.Run[Measure.KlToBase]))} |"
    line ""
    line $"### Which measure predicts forgetting? Spearman's ρ with the rise of the pretraining-loss proxy over all {points.Length + wise.Length} fine-tunes and WiSE-FT points (95 %% percentile bootstrap band over points, 2000 resamples)"
    line ""
    line "| measure | Spearman ρ | band | points |"
    line "|---|---|---|---|"
    for c in cs do line $"| {c.Name} | {f4 c.Rho} | [{f4 c.Low}, {f4 c.High}] | {c.Points} |"
    match ranked cs with
    | best :: _ -> line ""; line $"Best predictor here: **{best.Name}** (ρ {f4 best.Rho})."
    | [] -> ()
    line ""
    line ("± is half the spread over seeds. " + note)
    sb.ToString()

let private colors = [ "black"; "green"; "limegreen"; "royalblue"; "purple"; "red"; "darkorange"; "saddlebrown" ]

/// The figure: each method's frontier (the Pareto frontier of its seed means per rate, and each point), WiSE-FT's
/// curves, and a scatter of forgetting against each predictor.
let figure (methods: Method list) (lrs: float list) (ts: float list) (baseRun: Run) (points: Frontier.Point list) (wise: WisePoint list)
           (predictors: (string * (Run -> float)) list) (cs: Correlation list) =
    let traces =
        [ for i, m in List.indexed methods do
            let color = Color.fromString colors[i % colors.Length]
            let mine = points |> List.filter (fun p -> p.Method = m)
            let meanCurve = mine |> List.groupBy (fun p -> p.Lr) |> List.map (fun (_, ps) -> mean (fun p -> p.Learn) ps, mean (fun p -> p.Forget) ps) |> Frontier.pareto
            yield Chart.Line(x = (meanCurve |> List.map fst), y = (meanCurve |> List.map snd), Name = m.Label, ShowMarkers = true, LineColor = color, MarkerColor = color)
            yield Chart.Point(x = (mine |> List.map (fun p -> p.Learn)), y = (mine |> List.map (fun p -> p.Forget)), Name = $"{m.Label} (each seed)",
                              MarkerColor = color, Opacity = 0.35, ShowLegend = false, MultiText = (mine |> List.map (fun p -> $"lr {p.Lr:G3}, seed {p.Seed}"))) ]
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
        match cs |> List.tryFind (fun c -> c.Name = name) with
        | Some c -> $"{name}: Spearman ρ {f4 c.Rho} [{f4 c.Low}, {f4 c.High}]"
        | None -> name
    [ frontierChart ] @ (predictors |> List.map scatter)
    |> Chart.Grid(2, 2, SubPlotTitles = ([ "Learning–forgetting frontiers (lines: Pareto frontier of the seed means; dots: each seed and rate; dashed: WiSE-FT)" ] @ (predictors |> List.map (fst >> rhoTitle))))
    |> Chart.withSize (1400, 1000)
