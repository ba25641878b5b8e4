/// The output contract of every paper-repro and ablation script (DESIGN.md): results/<name>.json, .md and .html,
/// the same table on the console, and the exit code.
module MoFO.Dsl.Results

open System
open System.IO
open System.Net
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

// ---- numbers ----------------------------------------------------------------------------------------------------------

/// How the numbers of one column print: every value of a column with `Decimals` decimals and every change from the base
/// with `ChangeDecimals`, or all in scientific notation. A column's format is chosen once, from all its values, so a
/// column never mixes 2 and 4 decimals.
type NumberFormat = { Decimals: int; ChangeDecimals: int; Scientific: bool }

module NumberFormat =
    let private inv = Globalization.CultureInfo.InvariantCulture
    let private magnitudes (values: float seq) = values |> Seq.filter Double.IsFinite |> Seq.map abs |> Seq.filter (fun x -> x > 0.0) |> Seq.toList
    let private decimalsOf (s: string) = match s.IndexOf '.' with -1 -> 0 | i -> s.Length - i - 1

    /// `d` decimals, or more where the column's largest magnitude would print as a single digit or 0 (then 2 significant
    /// digits of it, at most 8 decimals).
    let private visible (values: float seq) (d: int) =
        match magnitudes values with
        | [] -> d
        | ms -> let m = List.max ms in if m >= 10.0 ** float -d then d else min 8 (int (ceil (-(log10 m))) + 1)

    /// The format of a measure's column, from its unit: accuracies (shown in %) with 1 decimal and their changes in
    /// points with 2 (on the small evaluation subsets an item moves an accuracy by steps like 1.5625 points); NLL and KL
    /// (nats) with 4; distances in weight space with 3 (2 when the column reaches 10). A column whose values would all
    /// round to 0 gets the decimals that show 2 significant digits.
    let ofUnit (unit: MeasureUnit) (values: float seq) =
        let values = Seq.toList values
        let d, dc =
            match unit with
            | MeasureUnit.Accuracy -> 1, 2
            | MeasureUnit.Nats -> 4, 4
            | MeasureUnit.Weights -> let d = (if magnitudes values |> List.exists (fun x -> x >= 10.0) then 2 else 3) in d, d
        let shown = visible values d
        { Decimals = shown; ChangeDecimals = max dc shown; Scientific = false }

    /// The format of a column without a unit: the fewest decimals (at most 6) that show each value to 4 significant
    /// digits (whole numbers: none); scientific where the column is below 1e-3, reaches 1e6 or spans 4 orders of magnitude.
    let ofValues (values: float seq) =
        match magnitudes values with
        | [] -> { Decimals = 0; ChangeDecimals = 0; Scientific = false }
        | ms when List.max ms < 1e-3 || List.max ms >= 1e6 || List.max ms / List.min ms >= 1e4 -> { Decimals = 2; ChangeDecimals = 2; Scientific = true }
        | ms ->
            let need (x: float) = decimalsOf (Math.Round(x, max 0 (3 - int (floor (log10 x)))).ToString("0.######", inv))
            let d = ms |> List.map need |> List.max |> min 6
            { Decimals = d; ChangeDecimals = d; Scientific = false }

    /// The format of numbers as a paper prints them: the decimals of the longest (at most 4), for values and changes.
    let ofPrinted (values: float seq) =
        let d = magnitudes values |> List.map (fun x -> decimalsOf (Math.Round(x, 4).ToString("0.####", inv))) |> List.fold max 0
        { Decimals = d; ChangeDecimals = d; Scientific = false }

    let private signed (negative: bool) (plus: string) (digits: string) =
        if negative && digits.Trim('0', '.') <> "" then "−" + digits else plus + digits

    /// A value: "–" where it was not measured (NaN), a minus sign (−) where negative.
    let value (f: NumberFormat) (x: float) =
        if Double.IsNaN x then "–"
        else signed (x < 0.0) "" (abs(x).ToString((if f.Scientific then "0.00e+0" else "F" + string f.Decimals), inv))

    /// A change from the base: always signed (+, or − for a decrease).
    let change (f: NumberFormat) (d: float) =
        if Double.IsNaN d then "" else signed (d < 0.0) "+" (abs(d).ToString((if f.Scientific then "0.00e+0" else "F" + string f.ChangeDecimals), inv))

    /// The change from a base value, where it says something: both finite and the base non-zero (a change from 0
    /// repeats the value: the distance from the base, an accuracy of 0 at chance).
    let changeFrom (baseValue: float) (x: float) =
        if Double.IsFinite baseValue && baseValue <> 0.0 && Double.IsFinite x then Some (x - baseValue) else None

let private columns (rows: Row list) = rows |> List.collect (fun r -> r.Metrics |> List.map fst) |> List.distinct

let private header (rows: Row list) (key: string) = names rows |> List.tryFind (fun (k, _) -> k = key) |> Option.map snd |> Option.defaultValue key

/// The generic table of rows: a column per metric key, each with its own format (`NumberFormat.ofValues`).
let private cells (rows: Row list) =
    let cols = columns rows
    let formats = cols |> List.map (fun c -> NumberFormat.ofValues (rows |> List.choose (fun r -> r.Metrics |> List.tryFind (fun (k, _) -> k = c) |> Option.map snd)))
    let cellsOf (r: Row) =
        let m = Map.ofList r.Metrics
        List.map2 (fun c f -> match m.TryFind c with Some v -> NumberFormat.value f v | None -> "") cols formats
    cols |> List.map (header rows), [ for r in rows -> r.Method, cellsOf r ]

/// A Markdown table of rows (a column per metric key, headed by its name, each with its own number format).
let markdownTable (rows: Row list) =
    let heads, body = cells rows
    let sb = StringBuilder()
    sb.AppendLine("| method | " + String.Join(" | ", heads) + " |") |> ignore
    sb.AppendLine("|---|" + String.replicate heads.Length "---|") |> ignore
    for label, cs in body do sb.AppendLine($"| {label} | " + String.Join(" | ", cs) + " |") |> ignore
    sb.ToString()

/// The count of claims that hold, as a sentence ("3 of 4 claims hold").
let private holding (checks: Check list) =
    let n = checks |> List.filter (fun c -> c.Holds) |> List.length
    if checks.Length = 1 then (if n = 1 then "The claim holds." else "The claim does not hold.")
    else $"{n} of {checks.Length} claims hold."

/// Text without runs of blank lines (sections end with one blank line, never three).
let private tidy (text: string) =
    Text.RegularExpressions.Regex.Replace(text.Replace("\r\n", "\n"), @"\n{3,}", "\n\n").TrimEnd() + "\n"

/// The scale, seed and time of a report, in one line.
let private meta (r: Report) =
    let name = if r.Title <> r.Name then $"`{r.Name}` · " else ""
    $"{name}scale `{r.Scale}` · seed {r.Seed} · {r.ElapsedSeconds:F1} s"

/// The page's title: the study's, or its name.
let private titleOf (r: Report) = if String.IsNullOrWhiteSpace r.Title then r.Name else r.Title

/// The Markdown page: the title, the tables (the study's layout, or this run's rows and the paper's), the checks.
let toMarkdown (r: Report) =
    let sb = StringBuilder()
    sb.AppendLine($"# {titleOf r}").AppendLine().AppendLine(meta r).AppendLine() |> ignore
    match r.Layout with
    | Some layout -> sb.AppendLine(layout).AppendLine() |> ignore
    | None ->
        if not r.Rows.IsEmpty then sb.AppendLine("## This run").AppendLine().Append(markdownTable r.Rows).AppendLine() |> ignore
        match r.Paper with
        | Some p when not p.IsEmpty -> sb.AppendLine("## The paper").AppendLine().Append(markdownTable p).AppendLine() |> ignore
        | _ -> ()
    if not r.Checks.IsEmpty then
        sb.AppendLine("## Checks").AppendLine().AppendLine(holding r.Checks).AppendLine() |> ignore
        for c in r.Checks do
            sb.AppendLine($"""- {if c.Holds then "✅ holds" else "❌ does not hold"}: {c.Claim} — {c.Detail}""") |> ignore
    tidy (sb.ToString())

// ---- the HTML page ----------------------------------------------------------------------------------------------------

/// A part of a results page: HTML as it is, or a figure (drawn by plotly.js, which the page includes once).
[<RequireQualifiedAccess>]
type Block =
    | Html of string
    | Figure of GenericChart

/// The pieces of a results page (results/<name>.html): one self-contained file that opens offline.
module Html =
    let enc (s: string) = WebUtility.HtmlEncode s

    /// plotly.js as Plotly.NET ships it (the copy `PlotlyJSReference.Full` embeds), read once.
    let plotlyJs =
        lazy (
            let asm = typeof<GenericChart>.Assembly
            match asm.GetManifestResourceNames() |> Array.tryFind (fun n -> n.StartsWith "Plotly.NET.plotly-" && n.EndsWith ".min.js") with
            | None -> failwith "Plotly.NET carries no plotly-*.min.js resource: the results page cannot embed plotly.js (Plotly.NET version changed?)"
            | Some name ->
                use s = asm.GetManifestResourceStream name
                use reader = new StreamReader(s)
                reader.ReadToEnd())

    /// A figure's div and the script that draws it, without plotly.js (the page includes it once, in its head).
    let figure (c: GenericChart) =
        c |> Chart.withDisplayOptions (DisplayOptions.init (PlotlyJSReference = PlotlyJSReference.NoReference))
        |> GenericChart.toChartHTML
        |> fun div -> $"<div class=\"figure\">{div}</div>\n"

    /// Inline Markdown (`code`, **bold**) as HTML, the rest escaped.
    let inlineText (s: string) =
        let s = Text.RegularExpressions.Regex.Replace(enc s, @"`([^`]+)`", "<code>$1</code>")
        Text.RegularExpressions.Regex.Replace(s, @"\*\*(.+?)\*\*", "<b>$1</b>")

    let private row (cellTag: string) (line: string) =
        let cells = line.Trim().Trim('|').Split('|') |> Array.map (fun c -> $"<{cellTag}>{inlineText (c.Trim())}</{cellTag}>")
        "<tr>" + String.Join("", cells) + "</tr>"

    /// The Markdown the layouts are written in (headings, pipe tables, "- " lists, paragraphs) as HTML.
    let ofMarkdown (md: string) =
        let sb = StringBuilder()
        let lines = md.Replace("\r", "").Split('\n') |> Array.map (fun l -> l.Trim())
        let para = ResizeArray<string>()
        let flush () =
            if para.Count > 0 then sb.Append("<p>").Append(inlineText (String.Join(" ", para))).Append("</p>\n") |> ignore
            para.Clear()
        let mutable i = 0
        let block (starts: string -> bool) =
            let j = i
            while i < lines.Length && starts lines[i] do i <- i + 1
            lines[j .. i - 1]
        while i < lines.Length do
            let l = lines[i]
            if l = "" then flush (); i <- i + 1
            elif l.StartsWith "#" then
                flush ()
                let level = l.Length - l.TrimStart('#').Length
                sb.Append($"<h{min 6 level}>{inlineText (l.TrimStart('#').Trim())}</h{min 6 level}>\n") |> ignore
                i <- i + 1
            elif l.StartsWith "|" then
                flush ()
                let rows = block (fun x -> x.StartsWith "|") |> Array.filter (fun x -> not (x.Replace("|", "").Replace("-", "").Replace(":", "").Trim() = ""))
                sb.Append("<table>\n<thead>").Append(row "th" rows[0]).Append("</thead>\n<tbody>\n") |> ignore
                for x in rows[1..] do sb.Append(row "td" x).Append('\n') |> ignore
                sb.Append("</tbody>\n</table>\n") |> ignore
            elif l.StartsWith "- " then
                flush ()
                sb.Append("<ul>\n") |> ignore
                for x in block (fun x -> x.StartsWith "- ") do sb.Append($"<li>{inlineText (x.Substring 2)}</li>\n") |> ignore
                sb.Append("</ul>\n") |> ignore
            else para.Add l; i <- i + 1
        flush ()
        sb.ToString()

    /// The checks: how many hold, then each claim with its verdict and detail.
    let checks (cs: Check list) =
        if cs.IsEmpty then ""
        else
            let sb = StringBuilder()
            sb.Append($"<h2>Checks</h2>\n<p class=\"summary\">{enc (holding cs)}</p>\n<ul class=\"checks\">\n") |> ignore
            for c in cs do
                let cls, verdict = if c.Holds then "holds", "holds" else "fails", "does not hold"
                sb.Append($"<li class=\"{cls}\"><span class=\"verdict\">{verdict}</span> {enc c.Claim}<div class=\"detail\">{enc c.Detail}</div></li>\n") |> ignore
            sb.Append("</ul>\n").ToString()

    let private style =
        """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px}
h1{font-size:1.7em;margin:0 0 4px} h2{font-size:1.25em;margin:28px 0 8px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
h3{font-size:1.05em;margin:20px 0 6px} p.meta{color:#666;margin:0 0 16px} p.legend{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.95em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right;white-space:nowrap} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} tr.base td{background:#fafafa;font-style:italic}
span.chg{color:#777;font-size:.88em;margin-left:4px} span.chg.better{color:#1b7a1b} span.chg.worse{color:#b02222}
th .dir{color:#888;font-weight:normal;font-size:.85em}
ul.checks{list-style:none;padding:0} ul.checks li{margin:6px 0;padding:6px 10px;border-left:4px solid #ccc;background:#fafafa}
ul.checks li.holds{border-color:#2e8b2e} ul.checks li.fails{border-color:#c62828}
span.verdict{font-weight:600;margin-right:6px} li.holds span.verdict{color:#1b7a1b} li.fails span.verdict{color:#b02222}
div.detail{color:#555;font-size:.9em;margin-top:2px} code{font-size:.88em;background:#f3f3f3;padding:0 3px}
div.figure{margin:8px 0 16px}"""

    /// The whole page: the title (<title> and <h1>), the scale line, the blocks; plotly.js once, inline, in the head,
    /// when a block is a figure.
    let page (r: Report) (blocks: Block list) =
        let title = enc (titleOf r)
        let hasFigures = blocks |> List.exists (function Block.Figure _ -> true | _ -> false)
        let sb = StringBuilder()
        sb.Append($"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>\n{style}\n</style>\n") |> ignore
        if hasFigures then sb.Append("<script type=\"text/javascript\" charset=\"utf-8\">").Append(plotlyJs.Value).Append("</script>\n") |> ignore
        sb.Append($"</head>\n<body>\n<main>\n<h1>{title}</h1>\n<p class=\"meta\">{inlineText (meta r)}</p>\n") |> ignore
        for b in blocks do
            match b with
            | Block.Html h -> sb.Append(h).Append('\n') |> ignore
            | Block.Figure c -> sb.Append(figure c) |> ignore
        sb.Append("</main>\n</body>\n</html>\n").ToString()

/// The blocks of a report without a study's own page: its layout (or this run's rows and the paper's), the figure, the
/// checks.
let blocks (r: Report) (chart: GenericChart option) =
    [ match r.Layout with
      | Some md -> Block.Html (Html.ofMarkdown md)
      | None ->
          if not r.Rows.IsEmpty then Block.Html ("<h2>This run</h2>\n" + Html.ofMarkdown (markdownTable r.Rows))
          match r.Paper with
          | Some p when not p.IsEmpty -> Block.Html ("<h2>The paper</h2>\n" + Html.ofMarkdown (markdownTable p))
          | _ -> ()
      match chart with Some c -> Block.Figure c | None -> ()
      Block.Html (Html.checks r.Checks) ]

/// The HTML page of a report (`Html.page`).
let toHtml (r: Report) (blocks: Block list) = Html.page r blocks

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

/// Writes the self-contained page results/<name>.html (plotly.js inline, once); returns the path.
let writeHtml (dir: string) (r: Report) (blocks: Block list) =
    ensureDir dir
    let path = Path.Combine(dir, r.Name + ".html")
    MoFO.AtomicFile.WriteAllText(path, toHtml r blocks)
    path

/// Prints the table and the checks to the console.
let printTable (r: Report) =
    printfn "%s  (%s)" (titleOf r) ((meta r).Replace("`", ""))
    match r.Layout with
    | Some layout -> printf "%s" (tidy layout)
    | None ->
        let heads, body = cells r.Rows
        let widths = heads |> List.map (fun c -> max 10 (c.Length + 1))
        let widths = widths |> List.mapi (fun i w -> body |> List.fold (fun w (_, cs) -> max w ((List.item i cs).Length + 1)) w)
        let mw = r.Rows |> List.map (fun x -> x.Method.Length) |> List.fold max 6
        printfn "%s%s" ("method".PadRight mw) (String.Join("", List.map2 (fun (c: string) w -> c.PadLeft w) heads widths))
        for label, cs in body do
            printfn "%s%s" (label.PadRight mw) (String.Join("", List.map2 (fun (c: string) w -> c.PadLeft w) cs widths))
    if not r.Checks.IsEmpty then printfn "\n%s" (holding r.Checks)
    for c in r.Checks do
        printfn "%s %s — %s" (if c.Holds then "[holds]" else "[DOES NOT HOLD]") c.Claim c.Detail

/// Writes the JSON, the Markdown and the HTML page (`blocks` under its title), prints the table; returns the exit code:
/// 0, or 1 when run with --strict and a check does not hold.
let finishWith (o: Options) (r: Report) (blocks: Block list) =
    let r = { r with Rows = distinctRows r.Rows }
    printTable r
    // in a data-parallel job (mpirun -n N) every rank holds the same report; rank 0 alone writes it
    let paths = if not MoFO.Distributed.Job.IsRoot then [] else [ writeJson o.OutDir r; writeMarkdown o.OutDir r; writeHtml o.OutDir r blocks ]
    for p in paths do printfn "wrote %s" p
    if o.Strict && r.Checks |> List.exists (fun c -> not c.Holds) then 1 else 0

/// Writes the JSON, the Markdown and the HTML page (the layout or rows, the figure when given, the checks), prints the
/// table; returns the exit code: 0, or 1 when run with --strict and a check does not hold.
let finish (o: Options) (r: Report) (chart: GenericChart option) = finishWith o r (blocks r chart)
