/// Tables in the paper's layout (a base-model row, then each method with its change from the base), the paper's own
/// numbers typed by the same columns, figures of a table, and claim checks.
namespace MoFO.Dsl

open System
open System.Text
open Plotly.NET
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
    let private fmt (x: float) =
        if Double.IsNaN x then "–"
        elif abs x >= 100.0 then x.ToString("0.0", Globalization.CultureInfo.InvariantCulture)
        elif abs x >= 10.0 then x.ToString("0.0#", Globalization.CultureInfo.InvariantCulture)
        else x.ToString("0.00##", Globalization.CultureInfo.InvariantCulture)
    let private fmtDelta (x: float) =
        if Double.IsNaN x then "" else (if x >= 0.0 then "+" else "−") + fmt (abs x)

    let cell (t: Table) (r: Run) (c: Column) =
        let v = c.Value r.Values
        match t.Base with
        | Some b when r.Method.IsSome ->
            let d = v - c.Value b.Values
            if Double.IsFinite d then $"{fmt v} ({fmtDelta d})" else fmt v
        | _ -> fmt v

    /// The rows of the JSON contract, keyed by run: each run's column values and their changes from the base, under
    /// the columns' keys (`arc_easy`, `delta_arc_easy`) with their headers as display names.
    let rows (t: Table) : Results.Row list =
        let all = (t.Base |> Option.toList) @ t.Rows
        [ for r in all ->
            Results.rowOf r.Key r.Label
                [ for c in t.Columns do
                    yield c.Key, c.Header, c.Value r.Values
                    match t.Base with
                    | Some b when r.Method.IsSome -> yield "delta_" + c.Key, "Δ " + c.Header, c.Value r.Values - c.Value b.Values
                    | _ -> () ] ]

    let markdown (t: Table) =
        let sb = StringBuilder()
        sb.AppendLine($"### {t.Title}").AppendLine() |> ignore
        sb.AppendLine("| Method | " + String.Join(" | ", t.Columns |> List.map (fun c -> c.Header)) + " |") |> ignore
        sb.AppendLine("|---|" + String.replicate t.Columns.Length "---|") |> ignore
        for r in (t.Base |> Option.toList) @ t.Rows do
            sb.AppendLine($"| {r.Label} | " + String.Join(" | ", t.Columns |> List.map (cell t r)) + " |") |> ignore
        sb.ToString()

    let console (t: Table) =
        let sb = StringBuilder()
        let all = (t.Base |> Option.toList) @ t.Rows
        let mw = all |> List.map (fun r -> r.Label.Length) |> List.fold max 8
        let widths = t.Columns |> List.map (fun c -> max 16 (c.Header.Length + 2))
        sb.AppendLine(t.Title) |> ignore
        sb.AppendLine("Method".PadRight mw + String.Join("", List.map2 (fun (c: Column) w -> c.Header.PadLeft w) t.Columns widths)) |> ignore
        for r in all do
            sb.AppendLine(r.Label.PadRight mw + String.Join("", List.map2 (fun c w -> (cell t r c).PadLeft w) t.Columns widths)) |> ignore
        sb.ToString()

    let paperMarkdown (p: PaperTable) =
        let cols = p.Rows |> List.collect (snd >> List.map fst) |> List.distinct
        let sb = StringBuilder()
        sb.AppendLine($"### The paper: {p.Caption}").AppendLine() |> ignore
        sb.AppendLine("| Method | " + String.Join(" | ", cols) + " |") |> ignore
        sb.AppendLine("|---|" + String.replicate cols.Length "---|") |> ignore
        let baseRow = p.Rows |> List.tryHead |> Option.map (snd >> Map.ofList)
        for i, (name, vals) in List.indexed p.Rows do
            let m = Map.ofList vals
            let cells =
                cols |> List.map (fun c ->
                    match m.TryFind c, baseRow with
                    | Some v, Some b when i > 0 && b.ContainsKey c -> $"{fmt v} ({fmtDelta (v - b[c])})"
                    | Some v, _ -> fmt v
                    | None, _ -> "")
            sb.AppendLine($"| {name} | " + String.Join(" | ", cells) + " |") |> ignore
        sb.ToString()

    /// The paper's rows under the machine keys of the columns whose headers they use (a header no column has: its name
    /// made a key).
    let paperRows (columns: Column list) (p: PaperTable) : Results.Row list =
        let keyOf (header: string) =
            columns |> List.tryFind (fun c -> c.Header = header) |> Option.map (fun c -> c.Key) |> Option.defaultWith (fun () -> Results.keyOf header)
        p.Rows |> List.map (fun (n, vals) -> Results.rowOf ("paper:" + Results.keyOf n) n [ for h, v in vals -> keyOf h, h, v ])

    /// A grouped bar chart of the change from the base model per column (one group per column, one bar per method).
    let deltaChart (t: Table) =
        match t.Base with
        | None -> None
        | Some b ->
            let cols = t.Columns
            let bars =
                [ for r in t.Rows ->
                    let ys = cols |> List.map (fun c -> c.Value r.Values - c.Value b.Values)
                    Chart.Column(values = ys, Keys = (cols |> List.map (fun c -> c.Header)), Name = r.Label) ]
            Some (Chart.combine bars
                  |> Chart.withTitle $"{t.Title}: change from {b.Label}"
                  |> Chart.withYAxisStyle "change from the base model (accuracies in points)"
                  |> Chart.withSize (1000, 550))

/// Claim checks recorded in each result's JSON.
module Claims =
    let private pct (x: float) = (100.0 * x).ToString("0.#", Globalization.CultureInfo.InvariantCulture) + " %"
    let private f4 (x: float) = x.ToString("0.####", Globalization.CultureInfo.InvariantCulture)

    /// `a` moved at most `atMost` of `b`'s distance from the base (the paper: MoFO ≈ 20 % of Adam's).
    let distanceFraction (a: Run) (b: Run) (atMost: float) =
        let da, db = a[Measure.Distance], b[Measure.Distance]
        let paper = match a.Method with Some (Method.MoFO _) -> "; the paper: MoFO ≈ 20 % of Adam's" | _ -> ""
        Results.check $"{a.Label} ends closer to the pretrained model than {b.Label} (at most {pct atMost} of its distance{paper})"
            (da / db <= atMost)
            $"L2 from base: {a.Label} {f4 da}, {b.Label} {f4 db} ({pct (da / db)})"

    /// `a` changes `m` from the base less harmfully than `b` does (less forgetting).
    let forgetsLess (m: Measure) (baseRun: Run) (a: Run) (b: Run) =
        let x0 = baseRun[m]
        let da, db = a[m] - x0, b[m] - x0
        let harm d = if m.HigherIsBetter then -d else d
        Results.check $"{a.Label} forgets less than {b.Label} on {m.Name}" (harm da < harm db)
            $"base {f4 x0}; {a.Label} {f4 a[m]} (Δ {f4 da}); {b.Label} {f4 b[m]} (Δ {f4 db})"

    /// `a`'s fine-tuning performance is within `tol` (relative) of `b`'s, or better.
    let comparable (m: Measure) (tol: float) (a: Run) (b: Run) =
        let va, vb = a[m], b[m]
        let ok = if m.HigherIsBetter then va >= vb * (1.0 - tol) else va <= vb * (1.0 + tol)
        Results.check $"{a.Label}'s fine-tuning performance ({m.Name}) is comparable to {b.Label}'s (within {pct tol} or better)" ok
            $"{a.Label} {f4 va}, {b.Label} {f4 vb}"

    /// `a` is better than every run in `others` on `m`.
    let beats (m: Measure) (a: Run) (others: Run list) =
        let better x y = if m.HigherIsBetter then x > y else x < y
        let names = String.Join(", ", others |> List.map (fun o -> o.Label))
        let detail = String.Join("; ", (a :: others) |> List.map (fun o -> $"{o.Label} {f4 o[m]}"))
        Results.check $"{a.Label} beats {names} on {m.Name}" (others |> List.forall (fun o -> better a[m] o[m])) detail

    /// `m` rises (or falls) along a sequence of runs: Spearman's rank correlation with the order at least 0.8 in size.
    let trend (claim: string) (m: Measure) (increasing: bool) (runs: (float * Run) list) =
        let rho = Stats.spearman [ for x, r in runs -> x, r[m] ]
        let ok = if increasing then rho >= 0.8 else rho <= -0.8
        let detail = String.Join(", ", runs |> List.map (fun (x, r) -> $"{x:G3}: {f4 r[m]}"))
        Results.check claim ok $"Spearman ρ = {rho:F2} over {detail}"
