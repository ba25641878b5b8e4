/// Tables in the paper's layout (a base-model row, then each method with its change from the base), the paper's own
/// numbers typed by the same columns, figures of a table, and claim checks.
namespace MoFO.Dsl

open System
open System.Text
open Plotly.NET
open Plotly.NET.LayoutObjects
open MoFO.Dsl.Evals

/// A column of a paper table: one measure, or the mean of several (the paper's "Commonsense" and "Average").
[<RequireQualifiedAccess>]
type Column =
    | Of of Measure
    | Mean of name: string * Measure list
    member c.Header = match c with Of m -> m.Name | Mean (n, _) -> n
    /// The column's machine key in results JSON: the measure's key, or the mean's name as a key ("average").
    member c.Key = match c with Of m -> m.Key | Mean (n, _) -> Results.keyOf n
    member c.Measures = match c with Of m -> [ m ] | Mean (_, ms) -> ms
    /// The value in the table's unit (accuracies in %); a mean skips measures that are unavailable (NaN).
    member c.Value(values: Map<Measure, float>) =
        let one (m: Measure) = values |> Map.tryFind m |> Option.defaultValue nan |> fun v -> if m.IsAccuracy then 100.0 * v else v
        match c with
        | Of m -> one m
        | Mean (_, ms) ->
            let xs = ms |> List.map one |> List.filter Double.IsFinite
            if xs.IsEmpty then nan else List.average xs
    member c.HigherIsBetter = match c with Of m -> m.HigherIsBetter | Mean _ -> true
    /// The unit of the column's numbers: its measure's, or the one unit of a mean's measures (None where they differ).
    member c.Unit =
        match c with
        | Of m -> Some m.Unit
        | Mean (_, ms) -> match ms |> List.map (fun m -> m.Unit) |> List.distinct with [ u ] -> Some u | _ -> None

module Columns =
    /// The paper's Commonsense: the mean of ARC-easy, ARC-challenge and HellaSwag (HellaSwag is skipped where it is not
    /// available, as at tiny scale).
    let commonsense = Column.Mean("Commonsense", [ Measure.ArcEasy; Measure.ArcChallenge; Measure.HellaSwag ])
    let average (cols: Column list) = Column.Mean("Average", cols |> List.collect (fun c -> c.Measures) |> List.distinct)

/// The paper's reported numbers: rows of (method, [column header, value]).
type PaperTable = { Caption: string; Rows: (string * (string * float) list) list }

/// A table of this run: the base row, then one row per run, over `Columns`.
type Table =
    { Title: string
      Columns: Column list
      Base: Run option
      Rows: Run list }

module Table =
    let private all (t: Table) = (t.Base |> Option.toList) @ t.Rows
    let private isRun (t: Table) (r: Run) = t.Base.IsSome && r.Method.IsSome

    /// How a column prints (the same decimals in every cell): from its unit (`Results.NumberFormat.ofUnit`: accuracies
    /// in % with 1 decimal, NLL/KL with 4, distances with 3), or from its values where its measures mix units.
    let format (t: Table) (c: Column) =
        let values = all t |> List.map (fun r -> c.Value r.Values)
        match c.Unit with
        | Some u -> Results.NumberFormat.ofUnit u values
        | None -> Results.NumberFormat.ofValues values

    /// A run's change from the base in a column, where it says something: the base's value measured and not 0 (a change
    /// from 0 repeats the value, as in the distance from the base); None for the base row itself.
    let change (t: Table) (r: Run) (c: Column) =
        match t.Base with
        | Some b when isRun t r -> Results.NumberFormat.changeFrom (c.Value b.Values) (c.Value r.Values)
        | _ -> None

    /// Whether a change is for the better (1), the worse (-1) or neither (0), by the column's direction.
    let private verdict (c: Column) (d: float) = if d = 0.0 then 0 elif (d > 0.0) = c.HigherIsBetter then 1 else -1

    let private cellWith (f: Results.NumberFormat) (t: Table) (r: Run) (c: Column) =
        let v = Results.NumberFormat.value f (c.Value r.Values)
        match change t r c with
        | Some d -> $"{v} ({Results.NumberFormat.change f d})"
        | None -> v

    /// A cell as the Markdown and the console show it: the value, and its change from the base in parentheses where the
    /// base's value is a measurement other than 0.
    let cell (t: Table) (r: Run) (c: Column) = cellWith (format t c) t r c

    /// The rows of the JSON contract, keyed by run: each run's column values and their changes from the base, under
    /// the columns' keys (`arc_easy`, `delta_arc_easy`) with their headers as display names.
    let rows (t: Table) : Results.Row list =
        [ for r in all t ->
            Results.rowOf r.Key r.Label
                [ for c in t.Columns do
                    yield c.Key, c.Header, c.Value r.Values
                    match t.Base with
                    | Some b when r.Method.IsSome -> yield "delta_" + c.Key, "Δ " + c.Header, c.Value r.Values - c.Value b.Values
                    | _ -> () ] ]

    let private grid (t: Table) =
        let formats = t.Columns |> List.map (format t)
        [ for r in all t -> r.Label, List.map2 (fun f c -> cellWith f t r c) formats t.Columns ]

    /// The table in Markdown under its title: the base row, then each run with its change from the base.
    let markdown (t: Table) =
        let sb = StringBuilder()
        sb.AppendLine($"## {t.Title}").AppendLine() |> ignore
        sb.AppendLine("| Method | " + String.Join(" | ", t.Columns |> List.map (fun c -> c.Header)) + " |") |> ignore
        sb.AppendLine("|---|" + String.replicate t.Columns.Length "---|") |> ignore
        for label, cells in grid t do sb.AppendLine($"| {label} | " + String.Join(" | ", cells) + " |") |> ignore
        sb.ToString()

    /// The table as console text (the same cells as the Markdown, right-aligned).
    let console (t: Table) =
        let sb = StringBuilder()
        let cells = grid t
        let mw = cells |> List.map (fun (l, _) -> l.Length) |> List.fold max 8
        let widths = t.Columns |> List.mapi (fun i c -> cells |> List.fold (fun w (_, cs) -> max w ((List.item i cs).Length + 2)) (c.Header.Length + 2))
        sb.AppendLine(t.Title) |> ignore
        sb.AppendLine("Method".PadRight mw + String.Join("", List.map2 (fun (c: Column) w -> c.Header.PadLeft w) t.Columns widths)) |> ignore
        for label, cs in cells do sb.AppendLine(label.PadRight mw + String.Join("", List.map2 (fun (c: string) w -> c.PadLeft w) cs widths)) |> ignore
        sb.ToString()

    let private enc (s: string) = Net.WebUtility.HtmlEncode s

    /// The table as HTML under its title: the same cells as the Markdown, each change coloured by whether it is for the
    /// better (by the column's direction, shown in its header).
    let html (t: Table) =
        let sb = StringBuilder()
        sb.Append($"<h2>{enc t.Title}</h2>\n<table class=\"study\">\n<thead><tr><th>Method</th>") |> ignore
        for c in t.Columns do
            let dir = if c.HigherIsBetter then "↑ higher is better" else "↓ lower is better"
            let unit = match c.Unit with Some MeasureUnit.Accuracy -> " (%)" | _ -> ""
            sb.Append($"<th title=\"{dir}\">{enc c.Header}{unit} <span class=\"dir\">{dir.Substring(0, 1)}</span></th>") |> ignore
        sb.Append("</tr></thead>\n<tbody>\n") |> ignore
        let formats = t.Columns |> List.map (format t)
        for r in all t do
            sb.Append((if isRun t r then "<tr>" else "<tr class=\"base\">") + $"<td>{enc r.Label}</td>") |> ignore
            for f, c in List.zip formats t.Columns do
                let v = Results.NumberFormat.value f (c.Value r.Values)
                match change t r c with
                | Some d ->
                    let cls = match verdict c d with 1 -> " better" | -1 -> " worse" | _ -> ""
                    sb.Append($"<td>{v}<span class=\"chg{cls}\">({Results.NumberFormat.change f d})</span></td>") |> ignore
                | None -> sb.Append($"<td>{v}</td>") |> ignore
            sb.Append("</tr>\n") |> ignore
        sb.Append("</tbody>\n</table>\n").ToString()

    /// The paper's rows as cells: each column with the decimals the paper prints, a change from its first row where
    /// that row has a value other than 0.
    let private paperGrid (p: PaperTable) =
        let cols = p.Rows |> List.collect (snd >> List.map fst) |> List.distinct
        let formats = cols |> List.map (fun c -> Results.NumberFormat.ofPrinted (p.Rows |> List.choose (snd >> List.tryFind (fst >> (=) c) >> Option.map snd)))
        let baseRow = p.Rows |> List.tryHead |> Option.map (snd >> Map.ofList)
        let cellsOf i (vals: (string * float) list) =
            let m = Map.ofList vals
            List.map2 (fun c f ->
                match m.TryFind c, baseRow |> Option.bind (Map.tryFind c) with
                | Some v, Some b when i > 0 ->
                    match Results.NumberFormat.changeFrom b v with
                    | Some d -> $"{Results.NumberFormat.value f v} ({Results.NumberFormat.change f d})"
                    | None -> Results.NumberFormat.value f v
                | Some v, _ -> Results.NumberFormat.value f v
                | None, _ -> "") cols formats
        cols, [ for i, (name, vals) in List.indexed p.Rows -> name, cellsOf i vals ]

    /// The paper's table in Markdown.
    let paperMarkdown (p: PaperTable) =
        let cols, rows = paperGrid p
        let sb = StringBuilder()
        sb.AppendLine($"## The paper: {p.Caption}").AppendLine() |> ignore
        sb.AppendLine("| Method | " + String.Join(" | ", cols) + " |") |> ignore
        sb.AppendLine("|---|" + String.replicate cols.Length "---|") |> ignore
        for name, cells in rows do sb.AppendLine($"| {name} | " + String.Join(" | ", cells) + " |") |> ignore
        sb.ToString()

    /// The paper's table as HTML (its first row, the base model, in the base's style).
    let paperHtml (p: PaperTable) =
        let cols, rows = paperGrid p
        let sb = StringBuilder()
        sb.Append($"<h2>The paper: {enc p.Caption}</h2>\n<table class=\"paper\">\n<thead><tr><th>Method</th>") |> ignore
        for c in cols do sb.Append($"<th>{enc c}</th>") |> ignore
        sb.Append("</tr></thead>\n<tbody>\n") |> ignore
        for i, (name, cells) in List.indexed rows do
            sb.Append((if i = 0 then "<tr class=\"base\">" else "<tr>") + $"<td>{enc name}</td>") |> ignore
            for x in cells do
                match x.IndexOf " (" with
                | -1 -> sb.Append($"<td>{x}</td>") |> ignore
                | k -> sb.Append($"<td>{x.Substring(0, k)}<span class=\"chg\">{x.Substring(k + 1)}</span></td>") |> ignore
            sb.Append("</tr>\n") |> ignore
        sb.Append("</tbody>\n</table>\n").ToString()

    /// The paper's rows under the machine keys of the columns whose headers they use (a header no column has: its name
    /// made a key).
    let paperRows (columns: Column list) (p: PaperTable) : Results.Row list =
        let keyOf (header: string) =
            columns |> List.tryFind (fun c -> c.Header = header) |> Option.map (fun c -> c.Key) |> Option.defaultWith (fun () -> Results.keyOf header)
        p.Rows |> List.map (fun (n, vals) -> Results.rowOf ("paper:" + Results.keyOf n) n [ for h, v in vals -> keyOf h, h, v ])

    /// The colours of a table's rows in its figures: the base grey, the runs in plotly's palette.
    let private colours (t: Table) =
        let palette = [| "#1f77b4"; "#ff7f0e"; "#2ca02c"; "#d62728"; "#9467bd"; "#8c564b"; "#e377c2"; "#17becf"; "#bcbd22"; "#7f7f7f" |]
        [ for i, r in List.indexed (all t) -> r, (if isRun t r || t.Base.IsNone then palette[(if t.Base.IsSome then i - 1 else i) % palette.Length] else "#b0b0b0") ]

    /// A panel's value axis: from 0 (or below the smallest negative value) to past the largest, with room for the
    /// printed values beside the bars.
    let private range (xs: float list) =
        let lo, hi = (match xs with [] -> 0.0 | _ -> List.min xs), (match xs with [] -> 0.0 | _ -> List.max xs)
        let span = max (max hi 0.0 - min lo 0.0) 1e-12
        (if lo < 0.0 then lo - 0.22 * span else 0.0), (if hi > 0.0 then hi + 0.22 * span elif lo < 0.0 then 0.0 else 1.0)

    /// One small bar chart of a column: a bar per row (the base grey, first) with its value printed, and a dashed line at
    /// the base's value.
    let private columnChart (t: Table) (c: Column) (f: Results.NumberFormat) (showLabels: bool) =
        let rows = colours t |> List.filter (fun (r, _) -> Double.IsFinite(c.Value r.Values))
        let xs = rows |> List.map (fun (r, _) -> c.Value r.Values)
        Chart.Bar(values = xs, Keys = (rows |> List.map (fun (r, _) -> r.Label)), Name = c.Header, ShowLegend = false,
                  MultiText = (xs |> List.map (Results.NumberFormat.value f)), TextPosition = StyleParam.TextPosition.Outside,
                  MarkerColor = Color.fromColors (rows |> List.map (snd >> Color.fromString)))
        |> Chart.withYAxis (LinearAxis.init (ShowTickLabels = showLabels, AutoRange = StyleParam.AutoRange.Reversed))
        |> Chart.withXAxis (LinearAxis.init (ZeroLine = true, ShowGrid = true, Range = StyleParam.Range.ofMinMax (range xs)))

    /// The table's measures each on its own axis (small multiples): one panel per column, a bar per row (the base grey,
    /// its value also a dashed line), the direction in each panel's title. None when the table has no rows.
    let chart (t: Table) =
        if (all t).IsEmpty || t.Columns.IsEmpty then None
        else
            let perRow = match t.Columns.Length with 4 -> 2 | n -> min 3 n
            let nRows = (t.Columns.Length + perRow - 1) / perRow
            let panels = t.Columns |> List.mapi (fun i c -> columnChart t c (format t c) (i % perRow = 0))
            let titles =
                t.Columns |> List.map (fun c ->
                    let unit = match c.Unit with Some MeasureUnit.Accuracy -> " (%)" | _ -> ""
                    $"""{c.Header}{unit} {(if c.HigherIsBetter then "↑" else "↓")}""")
            let baseLines =
                match t.Base with
                | None -> []
                | Some b ->
                    [ for i, c in List.indexed t.Columns do
                        let v = c.Value b.Values
                        if Double.IsFinite v && v <> 0.0 then
                            Shape.init (ShapeType = StyleParam.ShapeType.Line, X0 = v, X1 = v, Y0 = 0.0, Y1 = 1.0,
                                        Xref = (if i = 0 then "x" else $"x{i + 1}"), Yref = (if i = 0 then "y domain" else $"y{i + 1} domain"),
                                        Line = Line.init (Color = Color.fromString "#555", Dash = StyleParam.DrawingStyle.Dash, Width = 1.5)) ]
            let labelWidth = (all t) |> List.map (fun r -> r.Label.Length) |> List.fold max 8
            Some (
                Chart.Grid(nRows, perRow, SubPlotTitles = titles, SubPlotTitleFont = Font.init (Size = 14.0), XGap = 0.12, YGap = 0.35) panels
                |> Chart.withShapes baseLines
                |> Chart.withTitle $"{t.Title}: each measure on its own axis (dashed: the base model)"
                |> Chart.withMargin (Margin.init (Left = 20 + 7 * labelWidth, Right = 30, Top = 80, Bottom = 30))
                |> Chart.withSize (1100, 110 + nRows * (70 + 26 * (all t).Length)))

    /// The forgetting measure a scatter of the table puts against its task loss: the pretraining-loss proxy, else the
    /// KL to the base on its samples, else on the task.
    let private forgettingColumn (t: Table) =
        [ Measure.PretrainProxy; Measure.KlToBaseSamples; Measure.KlToBase ]
        |> List.tryPick (fun m -> t.Columns |> List.tryFind (fun c -> c = Column.Of m))

    /// Task loss against forgetting: a point per run (runs at the same point, as the table rounds them, share one point
    /// and one label), the base model marked apart. None unless the table has a task-loss column and a forgetting
    /// column (the pretrain proxy, or a KL to the base).
    let scatter (t: Table) =
        match t.Columns |> List.tryFind (fun c -> c = Column.Of Measure.TaskLoss), forgettingColumn t with
        | Some x, Some y ->
            let fx, fy = format t x, format t y
            let point (r: Run) = x.Value r.Values, y.Value r.Values
            let finite (r: Run) = let a, b = point r in Double.IsFinite a && Double.IsFinite b
            let groups =
                colours t |> List.filter (fun (r, _) -> (isRun t r || t.Base.IsNone) && finite r)
                |> List.groupBy (fun (r, _) -> let a, b = point r in Results.NumberFormat.value fx a, Results.NumberFormat.value fy b)
                |> List.map (fun (_, rs) -> point (fst rs.Head), String.Join(", ", rs |> List.map (fun (r, _) -> r.Label)), snd rs.Head)
            if groups.IsEmpty then None
            else
                let traces =
                    [ Chart.Point(xy = (groups |> List.map (fun (p, _, _) -> p)), Name = "runs", MultiText = (groups |> List.map (fun (_, l, _) -> l)),
                                  TextPosition = StyleParam.TextPosition.MiddleRight, ShowLegend = false,
                                  MarkerColor = Color.fromColors (groups |> List.map (fun (_, _, c) -> Color.fromString c)))
                      |> Chart.withMarkerStyle (Size = 11)
                      match t.Base with
                      | Some b when finite b ->
                          Chart.Point(xy = [ point b ], Name = $"base: {b.Label}", MultiText = [ $"{b.Label} (base)" ], TextPosition = StyleParam.TextPosition.MiddleLeft,
                                      MarkerColor = Color.fromString "#555", MarkerSymbol = StyleParam.MarkerSymbol.Star, ShowLegend = false)
                          |> Chart.withMarkerStyle (Size = 16)
                      | _ -> () ]
                Some (
                    Chart.combine traces
                    |> Chart.withTitle $"{t.Title}: task loss against forgetting (lower left is better)"
                    |> Chart.withXAxisStyle $"{x.Header} (lower: learned more)"
                    |> Chart.withYAxisStyle $"{y.Header} (higher: forgot more)"
                    |> Chart.withSize (1100, 520))
        | _ -> None

/// Claim checks recorded in each result's JSON.
module Claims =
    let private pct (x: float) = (100.0 * x).ToString("0.#", Globalization.CultureInfo.InvariantCulture) + " %"
    /// A measure's value as the tables show it (accuracies in %, with their unit's decimals).
    let private show (m: Measure) (x: float) =
        let v = if m.IsAccuracy then 100.0 * x else x
        Results.NumberFormat.value (Results.NumberFormat.ofUnit m.Unit [ v ]) v + (if m.IsAccuracy then " %" else "")
    /// A change of a measure, signed (accuracies in points).
    let private showChange (m: Measure) (d: float) =
        let v = if m.IsAccuracy then 100.0 * d else d
        Results.NumberFormat.change (Results.NumberFormat.ofUnit m.Unit [ v ]) v + (if m.IsAccuracy then " pt" else "")

    /// `a` moved at most `atMost` of `b`'s distance from the base (the paper: MoFO ≈ 20 % of Adam's).
    let distanceFraction (a: Run) (b: Run) (atMost: float) =
        let da, db = a[Measure.Distance], b[Measure.Distance]
        let paper = match a.Method with Some (Method.MoFO _) -> "; the paper: MoFO ≈ 20 % of Adam's" | _ -> ""
        Results.check $"{a.Label} ends closer to the pretrained model than {b.Label} (at most {pct atMost} of its distance{paper})"
            (da / db <= atMost)
            $"L2 from base: {a.Label} {show Measure.Distance da}, {b.Label} {show Measure.Distance db} ({pct (da / db)})"

    /// `a` changes `m` from the base less harmfully than `b` does (less forgetting).
    let forgetsLess (m: Measure) (baseRun: Run) (a: Run) (b: Run) =
        let x0 = baseRun[m]
        let da, db = a[m] - x0, b[m] - x0
        let harm d = if m.HigherIsBetter then -d else d
        Results.check $"{a.Label} forgets less than {b.Label} on {m.Name}" (harm da < harm db)
            $"base {show m x0}; {a.Label} {show m a[m]} (Δ {showChange m da}); {b.Label} {show m b[m]} (Δ {showChange m db})"

    /// `a`'s fine-tuning performance is within `tol` (relative) of `b`'s, or better.
    let comparable (m: Measure) (tol: float) (a: Run) (b: Run) =
        let va, vb = a[m], b[m]
        let ok = if m.HigherIsBetter then va >= vb * (1.0 - tol) else va <= vb * (1.0 + tol)
        Results.check $"{a.Label}'s fine-tuning performance ({m.Name}) is comparable to {b.Label}'s (within {pct tol} or better)" ok
            $"{a.Label} {show m va}, {b.Label} {show m vb}"

    /// `a` is better than every run in `others` on `m`.
    let beats (m: Measure) (a: Run) (others: Run list) =
        let better x y = if m.HigherIsBetter then x > y else x < y
        let names = String.Join(", ", others |> List.map (fun o -> o.Label))
        let detail = String.Join("; ", (a :: others) |> List.map (fun o -> $"{o.Label} {show m o[m]}"))
        Results.check $"{a.Label} beats {names} on {m.Name}" (others |> List.forall (fun o -> better a[m] o[m])) detail

    /// `m` rises (or falls) along a sequence of runs: Spearman's rank correlation with the order at least 0.8 in size.
    let trend (claim: string) (m: Measure) (increasing: bool) (runs: (float * Run) list) =
        let rho = Stats.spearman [ for x, r in runs -> x, r[m] ]
        let ok = if increasing then rho >= 0.8 else rho <= -0.8
        let detail = String.Join(", ", runs |> List.map (fun (x, r) -> $"{x:G3}: {show m r[m]}"))
        Results.check claim ok $"Spearman ρ = {rho:F2} over {detail}"
