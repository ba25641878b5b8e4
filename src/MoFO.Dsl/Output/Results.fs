/// The output contract of every paper-repro and ablation script (DESIGN.md): results/<name>.json, .md and .html,
/// the same table on the console, and the exit code.
module MoFO.Dsl.Results

open System
open System.IO
open System.Text
open Plotly.NET

/// One row of a result table: a run's identity (`Key`: the run's folder in the store, or the row's name made a key),
/// its display label (`Method`: tables, claims, the JSON's "method"), its metrics by machine key (in display order:
/// `arc_easy`, `delta_arc_easy`, `average`) and the display name of each key (`ARC-easy`, `Δ ARC-easy`, `Average`).
type Row = { Key: string; Method: string; Metrics: (string * float) list; Names: (string * string) list }

/// One reproduction check: a claim of the paper and whether it holds here.
type Check = { Claim: string; Holds: bool; Detail: string }

/// A script's whole result.
type Report =
    { Name: string
      /// the study's title: the heading of the Markdown and the HTML page
      Title: string
      Scale: string
      Seed: int
      Rows: Row list
      /// the paper's reported numbers in the same shape, or None
      Paper: Row list option
      Checks: Check list
      ElapsedSeconds: float
      /// the tables in the paper's layout (Markdown) and notes; None: a generic table of the rows
      Layout: string option }

/// A machine key for a display name: lower case, letters and digits, other runs of characters as one "_"
/// ("Δ ARC-easy" → "delta_arc_easy", "Spearman rho" → "spearman_rho").
let keyOf (name: string) =
    let s = name.Replace("Δ", "delta ").Replace("α", "alpha").Replace("ρ", "rho").Replace("%", " pct ").ToLowerInvariant()
    let b = StringBuilder()
    for c in s do
        if Char.IsLetterOrDigit c && c < '\u0080' then b.Append c |> ignore
        elif b.Length > 0 && b[b.Length - 1] <> '_' then b.Append '_' |> ignore
    b.ToString().Trim('_')

/// A row of named metrics (their keys made from the names), keyed by its label made a key.
let row (label: string) (metrics: (string * float) list) =
    { Key = keyOf label; Method = label; Metrics = metrics |> List.map (fun (n, v) -> keyOf n, v); Names = metrics |> List.map (fun (n, _) -> keyOf n, n) }

/// A row of a run (its key) with metrics given as (key, name, value).
let rowOf (key: string) (label: string) (metrics: (string * string * float) list) =
    { Key = key; Method = label; Metrics = metrics |> List.map (fun (k, _, v) -> k, v); Names = metrics |> List.map (fun (k, n, _) -> k, n) }

/// Two rows with one label are an error naming both (never a silent drop: a table, a claim and a JSON row must say
/// which run they are); the same run twice is one row.
let distinctRows (rows: Row list) =
    let rows = rows |> List.distinctBy (fun r -> r.Key, r.Method)
    for label, group in rows |> List.groupBy (fun r -> r.Method) do
        match group with
        | a :: b :: _ ->
            raise (ArgumentException
                $"two rows are labelled '{label}': {a.Key} and {b.Key}; give them distinct labels (Experiment.withLabel), or run them together (Experiment.runAll labels runs by what tells them apart)")
        | _ -> ()
    for key, group in rows |> List.groupBy (fun r -> r.Key) do
        match group with
        | a :: b :: _ -> raise (ArgumentException $"one run ({key}) is two rows, '{a.Method}' and '{b.Method}'")
        | _ -> ()
    rows
let check (claim: string) (holds: bool) (detail: string) = { Claim = claim; Holds = holds; Detail = detail }

/// What every reproduction and ablation is run with (the CLI's `mofo repro` flags and the scripts' arguments, parsed
/// in one place: `Cli.Repro`): seed, scale, --strict, the output folder, the paper-scale config, --smoke (a few steps of
/// everything: the CI configuration).
type Options =
    { Seed: int; Scale: string; Strict: bool; OutDir: string; Config: string option; Smoke: bool }

/// The results folder: results/ at the repository root (or under the current directory outside a repository).
let defaultOutDir () =
    let root = match MoFO.DataRoot.RepositoryRoot() with null -> Directory.GetCurrentDirectory() | r -> r
    Path.Combine(root, "results")

module Options =
    /// The defaults: seed 0, tiny scale, results/.
    let defaults () = { Seed = 0; Scale = "tiny"; Strict = false; OutDir = defaultOutDir (); Config = None; Smoke = false }

let private rowsJson (rows: Row list) =
    Json.arr [ for r in rows -> Json.obj [ "key", Json.str r.Key; "method", Json.str r.Method; "metrics", Json.numbers r.Metrics ] ]

/// The display name of every metric key of the rows.
let names (rows: Row list) = rows |> List.collect (fun r -> r.Names) |> List.distinctBy fst

/// The JSON document of the contract.
let toJson (r: Report) =
    Json.obj
        [ "name", Json.str r.Name
          "title", Json.str r.Title
          "scale", Json.str r.Scale
          "seed", Json.int (int64 r.Seed)
          "rows", rowsJson r.Rows
          "metricNames", Json.obj [ for k, n in names (r.Rows @ defaultArg r.Paper []) -> k, Json.str n ]
          "paper", (match r.Paper with Some p -> rowsJson p | None -> null)
          "checks", Json.arr [ for c in r.Checks -> Json.obj [ "claim", Json.str c.Claim; "holds", Json.bool c.Holds; "detail", Json.str c.Detail ] ]
          "elapsedSeconds", Json.num r.ElapsedSeconds ]
    |> Json.text

let private fmt (x: float) =
    if Double.IsNaN x then "–"
    elif x <> 0.0 && (abs x < 1e-3 || abs x >= 1e5) then x.ToString("0.###e+0", Globalization.CultureInfo.InvariantCulture)
    else x.ToString("0.####", Globalization.CultureInfo.InvariantCulture)

let private columns (rows: Row list) = rows |> List.collect (fun r -> r.Metrics |> List.map fst) |> List.distinct

let private header (rows: Row list) (key: string) = names rows |> List.tryFind (fun (k, _) -> k = key) |> Option.map snd |> Option.defaultValue key

/// A Markdown table of rows (a column per metric key, headed by its name).
let markdownTable (rows: Row list) =
    let cols = columns rows
    let sb = StringBuilder()
    sb.AppendLine("| method | " + String.Join(" | ", cols |> List.map (header rows)) + " |") |> ignore
    sb.AppendLine("|---|" + String.replicate cols.Length "---|") |> ignore
    for r in rows do
        let m = Map.ofList r.Metrics
        let cells = cols |> List.map (fun c -> match m.TryFind c with Some v -> fmt v | None -> "")
        sb.AppendLine($"| {r.Method} | " + String.Join(" | ", cells) + " |") |> ignore
    sb.ToString()

/// The Markdown page: the table, the paper's numbers beside it, the checks.
let toMarkdown (r: Report) =
    let sb = StringBuilder()
    sb.AppendLine($"# {r.Name}").AppendLine() |> ignore
    sb.AppendLine($"scale `{r.Scale}`, seed {r.Seed}, {r.ElapsedSeconds:F1} s").AppendLine() |> ignore
    match r.Layout with
    | Some layout -> sb.AppendLine(layout).AppendLine() |> ignore
    | None ->
        sb.AppendLine("## This run").AppendLine().Append(markdownTable r.Rows).AppendLine() |> ignore
        match r.Paper with
        | Some p -> sb.AppendLine("## The paper").AppendLine().Append(markdownTable p).AppendLine() |> ignore
        | None -> ()
    sb.AppendLine("## Checks").AppendLine() |> ignore
    for c in r.Checks do
        sb.AppendLine($"""- {if c.Holds then "✅ holds" else "❌ does not hold"}: {c.Claim} — {c.Detail}""") |> ignore
    sb.ToString()

let private ensureDir (dir: string) = Directory.CreateDirectory dir |> ignore

/// Writes results/<name>.json; returns the path.
let writeJson (dir: string) (r: Report) =
    ensureDir dir
    let path = Path.Combine(dir, r.Name + ".json")
    MoFO.AtomicFile.WriteAllText(path, toJson r)
    path

/// Writes results/<name>.md; returns the path.
let writeMarkdown (dir: string) (r: Report) =
    ensureDir dir
    let path = Path.Combine(dir, r.Name + ".md")
    MoFO.AtomicFile.WriteAllText(path, toMarkdown r)
    path

/// Writes a self-contained (plotly.js embedded) HTML figure as results/<name>.html; returns the path.
let writeHtml (dir: string) (name: string) (chart: GenericChart) =
    ensureDir dir
    let path = Path.Combine(dir, name + ".html")
    chart
    |> Chart.withDisplayOptions (DisplayOptions.init (PlotlyJSReference = PlotlyJSReference.Full))
    |> Chart.saveHtml path
    path

/// Prints the table and the checks to the console.
let printTable (r: Report) =
  match r.Layout with
  | Some layout ->
    printfn "%s  (scale %s, seed %d, %.1f s)" r.Name r.Scale r.Seed r.ElapsedSeconds
    printfn "%s" layout
    for c in r.Checks do
        printfn "%s %s — %s" (if c.Holds then "[holds]" else "[DOES NOT HOLD]") c.Claim c.Detail
  | None ->
    let cols = columns r.Rows
    let heads = cols |> List.map (header r.Rows)
    let cell (s: string) w = s.PadLeft w
    let widths = heads |> List.map (fun c -> max 10 (c.Length + 1))
    let mw = r.Rows |> List.map (fun x -> x.Method.Length) |> List.fold max 6
    printfn "%s  (scale %s, seed %d, %.1f s)" r.Name r.Scale r.Seed r.ElapsedSeconds
    printfn "%s%s" ("method".PadRight mw) (String.Join("", List.map2 (fun c w -> cell c w) heads widths))
    for x in r.Rows do
        let m = Map.ofList x.Metrics
        let cells = List.map2 (fun c w -> cell (match m.TryFind c with Some v -> fmt v | None -> "") w) cols widths
        printfn "%s%s" (x.Method.PadRight mw) (String.Join("", cells))
    for c in r.Checks do
        printfn "%s %s — %s" (if c.Holds then "[holds]" else "[DOES NOT HOLD]") c.Claim c.Detail

/// Writes the JSON, the Markdown and (when given) the HTML figure, prints the table; returns the exit code:
/// 0, or 1 when run with --strict and a check does not hold.
let finish (o: Options) (r: Report) (chart: GenericChart option) =
    let r = { r with Rows = distinctRows r.Rows }
    printTable r
    // in a data-parallel job (mpirun -n N) every rank holds the same report; rank 0 alone writes it
    let paths =
        if not MoFO.Distributed.Job.IsRoot then []
        else
            [ writeJson o.OutDir r; writeMarkdown o.OutDir r ]
            @ (match chart with Some c -> [ writeHtml o.OutDir r.Name c ] | None -> [])
    for p in paths do printfn "wrote %s" p
    if o.Strict && r.Checks |> List.exists (fun c -> not c.Holds) then 1 else 0
