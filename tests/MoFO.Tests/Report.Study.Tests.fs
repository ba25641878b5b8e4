/// A study's results page (results/<name>.html) and its Markdown and console tables, from tables built in memory (no
/// training): the study's title, the tables' values, every claim, plotly.js once however many figures, changes only
/// from a non-zero base, one number format per column.
module MoFO.Tests.ReportStudy

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Evals
open MoFO.Tests.Fixtures

let private run (label: string) (m: Method option) (values: (Measure * float) list) : Run =
    { Label = label; Key = "test:" + label; Method = m; ModelPath = ""; BasePath = ""; Dir = ""; Values = Map.ofList values; Train = None; Seed = 0 }

/// The ablation's shape: the base, two MoFO runs and Full FT over task loss, pretrain-proxy NLL, story cloze (an
/// accuracy) and the distance (0 on the base by definition).
let private baseRun = run "stories260K" None [ Measure.TaskLoss, 6.341117; Measure.PretrainProxy, 1.2; Measure.StoryCloze, 0.59375; Measure.Distance, 0.0 ]
let private runs =
    [ run "MoFO (α=5%)" (Some (Method.MoFO 0.05)) [ Measure.TaskLoss, 1.80356; Measure.PretrainProxy, 1.75; Measure.StoryCloze, 0.53125; Measure.Distance, 2.66039 ]
      run "MoFO (α=15%)" (Some (Method.MoFO 0.15)) [ Measure.TaskLoss, 1.75621; Measure.PretrainProxy, 2.0473; Measure.StoryCloze, 0.5; Measure.Distance, 4.01893 ]
      run "Full FT" (Some Method.FullFT) [ Measure.TaskLoss, 1.767; Measure.PretrainProxy, 2.8451; Measure.StoryCloze, 0.390625; Measure.Distance, 9.49291 ] ]
let private table =
    { Title = "MoFO's α on DPR"
      Columns = [ Column.Of Measure.TaskLoss; Column.Of Measure.PretrainProxy; Column.Of Measure.StoryCloze; Column.Of Measure.Distance ]
      Base = Some baseRun
      Rows = runs }

let private checks =
    [ Results.check "MoFO (α=5%) forgets less than Full FT" true "1.75 < 2.8451"
      Results.check "the distance grows with α & stays < 10" false "ρ = 0.5" ]

/// A figure of the study's own (not one of the table's): a curve over α.
let private ownFigure = Chart.Line(x = [ 0.05; 0.15; 1.0 ], y = [ 2.66; 4.02; 9.49 ], Name = "L2 over α")

/// Runs `Study.finish` into a fresh folder; returns the exit code, the HTML and the Markdown.
let private finish (o: Study.StudyOutput) =
    let dir = Path.Combine(Path.GetTempPath(), $"mofo-report-{Guid.NewGuid():N}")
    try
        let c = Study.context { Results.Options.defaults () with OutDir = dir }
        let code, _, _ = captureConsole (fun () -> Study.finish c o)
        code, File.ReadAllText(Path.Combine(dir, o.Name + ".html")), File.ReadAllText(Path.Combine(dir, o.Name + ".md"))
    finally
        if Directory.Exists dir then Directory.Delete(dir, true)

let private count (needle: string) (s: string) = Regex.Matches(s, Regex.Escape needle).Count

/// `page` contains `part` (the page, with plotly.js inline, is too long to print when it does not).
let private has (page: string) (part: string) (what: string) =
    if not (page.Contains part) then failtestf "%s: the page has no '%s'" what part

/// The cells of a Markdown table's body (rows after the header and the separator), by column (the label column left out).
let private markdownColumns (md: string) =
    let rows =
        md.Split('\n') |> Array.filter (fun l -> l.StartsWith "|") |> Array.skip 2
        |> Array.map (fun l -> l.Trim().Trim('|').Split('|') |> Array.map (fun c -> c.Trim()) |> Array.tail)
    [ for j in 0 .. rows[0].Length - 1 -> [ for r in rows -> r[j] ] ]

let private decimals (number: string) = match number.IndexOf '.' with -1 -> 0 | i -> number.Length - i - 1

/// A cell's value and its change (None without one): "1.8036 (−4.5376)" → "1.8036", Some "−4.5376".
let private split (cell: string) =
    let m = Regex.Match(cell, @"^(\S+)(?: \(([+−]\S+)\))?$")
    if not m.Success then failtestf "a cell that is neither a value nor a value with its change: '%s'" cell
    m.Groups[1].Value, (if m.Groups[2].Success then Some m.Groups[2].Value else None)

[<Tests>]
let tests =
    testList "Report.Study" [
        test "Report.Study.html: the page's <title> and <h1> are the study's title; it shows the table's values, the paper's numbers and every claim" {
            let paper = { Caption = "Table 2 — Pythia-160m"; Rows = [ "Pythia-160m", [ "task loss", 3.1 ]; "MoFO", [ "task loss", 2.45 ] ] }
            let o = { Study.output "ablation-alpha" "MoFO's update fraction α on DPR" with Tables = [ table ]; Checks = checks; Paper = Some paper; Notes = [ "A note with `code`." ] }
            let code, html, md = finish o
            Expect.equal code 0 "not --strict: a claim that does not hold is reported, not an exit failure"
            Expect.equal (Regex.Match(html, "<title>(.*?)</title>").Groups[1].Value) "MoFO&#39;s update fraction α on DPR" "the document's title (the first <title>) is the study's"
            Expect.equal (Regex.Match(html, "<h1>(.*?)</h1>").Groups[1].Value) "MoFO&#39;s update fraction α on DPR" "and its heading"
            Expect.isFalse (html.Contains "Plotly.NET Datavisualization") "not Plotly.NET's default title"
            has html "<table class=\"study\">" "the table as an HTML table"
            // the base row, then each run with its change from the base (hand-rounded from the values above)
            for cell in [ "<td>6.3411</td>"; "<td>1.2000</td>"; "<td>59.4</td>"; "<td>0.000</td>"
                          "1.8036<span class=\"chg better\">(−4.5376)</span>"; "2.8451<span class=\"chg worse\">(+1.6451)</span>"
                          "39.1<span class=\"chg worse\">(−20.31)</span>"; "<td>9.493</td>" ] do
                has html cell "a cell of the table"
            has html "<td>2.45<span class=\"chg\">(−0.65)</span></td>" "the paper's numbers beside, as the paper prints them"
            has html "MoFO (α=5%) forgets less than Full FT" "the first claim"
            has html "the distance grows with α &amp; stays &lt; 10" "the second, escaped"
            has html "1 of 2 claims hold." "how many hold"
            Expect.equal (count "class=\"fails\"" html) 1 "the claim that does not hold is marked so"
            has html "<code>code</code>" "the notes, their Markdown as HTML"
            Expect.stringContains md "# MoFO's update fraction α on DPR\n" "the Markdown's first heading is the title too"
            Expect.isTrue (md.StartsWith "# MoFO's update fraction α on DPR") "as its first line"
        }

        test "Report.Study.plotly: plotly.js is included once, inline, however many figures the page draws" {
            let o = { Study.output "figures" "Figures" with Tables = [ table; { table with Title = "again" } ]; Checks = checks; Figure = Some ownFigure }
            let _, html, _ = finish o
            // per table: the measures on their own axes and task loss against forgetting; then the study's own figure
            Expect.equal (count "<div class=\"figure\">" html) 5 "five figures"
            Expect.equal (count "* plotly.js v" html) 1 "plotly.js's header once"
            Expect.equal (count "Copyright 2012-" html) 1 "its copyright line once"
            let library = Results.Html.plotlyJs.Value
            Expect.isGreaterThan library.Length 1_000_000 "the library itself (not a stub)"
            Expect.equal (count (library.Substring(library.Length / 2, 200)) html) 1 "a passage from the middle of the library once: it is inline, whole, once"
            Expect.isFalse (Regex.IsMatch(html, "<script[^>]+src=")) "no script is loaded from elsewhere: the page opens offline"
            Expect.isLessThan (html.Length - library.Length) 200_000 "the rest of the page is small"
        }

        test "Report.Study.figure: a study's own figure that is one of its tables' figures is drawn once" {
            let o = { Study.output "own" "Own" with Tables = [ table ]; Figure = Table.scatter table }
            let _, html, _ = finish o
            Expect.equal (count "<div class=\"figure\">" html) 2 "the measures' panels and the scatter, not the panels twice"
        }

        test "Report.Study.changes: a column whose base is 0 or missing shows no change; one whose base is measured does" {
            let md = Table.markdown table
            let cols = markdownColumns md
            Expect.equal cols[3] [ "0.000"; "2.660"; "4.019"; "9.493" ] "the distance (base 0): values only, never '(+x)'"
            Expect.equal cols[1] [ "1.2000"; "1.7500 (+0.5500)"; "2.0473 (+0.8473)"; "2.8451 (+1.6451)" ] "the pretrain proxy: each run with its change"
            let missing = { table with Base = Some { baseRun with Values = baseRun.Values |> Map.add Measure.PretrainProxy nan } }
            Expect.equal (markdownColumns (Table.markdown missing)).[1] [ "–"; "1.7500"; "2.0473"; "2.8451" ] "a base not measured: '–' and no changes"
            Expect.isFalse ((Table.console table).Contains "(+2.") "nor on the console"
            let paper = { Caption = "p"; Rows = [ "base", [ "GSM8K", 0.0; "MMLU", 42.0 ]; "Full FT", [ "GSM8K", 49.4; "MMLU", 36.6 ] ] }
            let pmd = Table.paperMarkdown paper
            Expect.stringContains pmd "| Full FT | 49.4 | 36.6 (−5.4) |" "the paper's table: no change from a base of 0 either"
        }

        test "Report.Study.rounding: every column of the Markdown and the console has one number of decimals, chosen by its unit" {
            let cols = markdownColumns (Table.markdown table)
            let expected = [ 4, Some 4; 4, Some 4; 1, Some 2; 3, None ]   // task loss, pretrain proxy (nats); story cloze (%, changes in points); distance
            for col, (values, changes) in List.zip cols expected do
                let parts = col |> List.map split
                Expect.equal (parts |> List.map (fst >> decimals) |> List.distinct) [ values ] $"the values of {col}"
                match changes with
                | Some d -> Expect.equal (parts |> List.choose snd |> List.map decimals |> List.distinct) [ d ] $"the changes of {col}"
                | None -> Expect.isEmpty (parts |> List.choose snd) $"no changes in {col}"
            Expect.equal cols[2] [ "59.4"; "53.1 (−6.25)"; "50.0 (−9.38)"; "39.1 (−20.31)" ] "story cloze in % (53.125 − 59.375 = −6.25)"
            let far = { table with Rows = runs |> List.map (fun r -> { r with Values = r.Values |> Map.add Measure.Distance (10.0 * r[Measure.Distance]) }) }
            Expect.equal (markdownColumns (Table.markdown far)).[3] [ "0.00"; "26.60"; "40.19"; "94.93" ] "distances from 10 up: 2 decimals, in every cell"
            let console = (Table.console table).Split('\n') |> Array.filter (fun l -> l.StartsWith "MoFO (α=5%)") |> Array.exactlyOne
            Expect.stringContains console "1.8036 (−4.5376)" "the console shows the Markdown's cells"
            Expect.stringContains console "53.1 (−6.25)" "with the same decimals"
        }

        test "Report.Study.numbers: columns without a unit take the fewest decimals that show 4 significant digits, or scientific notation" {
            let show xs = let f = Results.NumberFormat.ofValues xs in xs |> List.map (Results.NumberFormat.value f)
            Expect.equal (show [ 0.5 ]) [ "0.5" ] "0.5 needs one decimal"
            Expect.equal (show [ 1.2068934; 6.341117 ]) [ "1.207"; "6.341" ] "4 significant digits, the same decimals"
            Expect.equal (show [ 1.2068934; 0.0125 ]) [ "1.2069"; "0.0125" ] "the column takes the most any value needs"
            Expect.equal (show [ 1.0; 10.0; 1000.0 ]) [ "1"; "10"; "1000" ] "whole numbers: none"
            Expect.equal (show [ 1e-9; 2.5e-12; nan ]) [ "1.00e-9"; "2.50e-12"; "–" ] "tiny values in scientific notation; NaN as –"
            Expect.equal (show [ -0.25; 0.5 ]) [ "−0.25"; "0.50" ] "a minus sign"
            let kl = Results.NumberFormat.ofUnit MeasureUnit.Nats [ 0.0; 0.00002; 0.000035 ]
            Expect.equal (Results.NumberFormat.value kl 0.000035) "0.000035" "a column that would round to 0 keeps 2 significant digits"
        }

        test "Report.Study.markdown: the title first, no empty heading; the training summary under its heading only when a run has one" {
            let _, _, md = finish { Study.output "plain" "A plain study" with Tables = [ table ]; Checks = [] }
            let lines = md.Split('\n')
            Expect.equal lines[0] "# A plain study" "the title first"
            let nonBlank = lines |> Array.filter (String.IsNullOrWhiteSpace >> not)
            for i, l in Array.indexed nonBlank do
                if l.StartsWith "#" then
                    Expect.isTrue (i + 1 < nonBlank.Length && not (nonBlank[i + 1].StartsWith "#")) $"'{l}' has content under it"
            Expect.isFalse (md.Contains "Training") "no training summary: no heading for it"
            Expect.isFalse (md.Contains "## Checks") "no checks: no heading for them"
            Expect.isFalse (md.Contains "\n\n\n") "no runs of blank lines"
            let trained =
                { runs[0] with
                    Dir = Path.Combine(Directory.GetCurrentDirectory(), "runs", "a")
                    Train = Some (MoFO.Training.TrainResult("mofo", MoFO.Training.TrainingOptions(), 150, 150, false, Nullable 1.6386, Nullable(), 2.66, 100, 0, 0.486, 29.0, "out", null)) }
            let note = Study.trainingNote [ trained; runs[1] ]
            Expect.isTrue (note.StartsWith "## Training\n") "a heading"
            Expect.stringContains note "- MoFO (α=5%) (seed 0): 150 steps in 29 s, final train loss 1.6386, entries ever updated 48.6 %" "the run's summary under it"
            Expect.equal (Study.trainingNote [ runs[1] ]) "" "nothing when no run trained"
        }

        test "Report.Study.generic: a report without a study's tables gets a page too: its title, its layout's tables, its checks; no plotly.js without a figure" {
            let r: Results.Report =
                { Name = "toy"; Title = "The toy example"; Scale = "tiny"; Seed = 0
                  Rows = [ Results.row "Adam" [ "loss", 0.5; "T", 10.0 ] ]; Paper = None
                  Checks = [ Results.check "Adam converges" true "loss 0.5" ]
                  ElapsedSeconds = 1.0; Layout = Some "### Points\n\n| method | loss |\n|---|---|\n| Adam | 0.5 |\n\nBest: **Adam**." }
            let html = Results.toHtml r (Results.blocks r None)
            Expect.equal (Regex.Match(html, "<title>(.*?)</title>").Groups[1].Value) "The toy example" "its title"
            has html "<h3>Points</h3>" "the layout's heading"
            has html "<tr><td>Adam</td><td>0.5</td></tr>" "its table as HTML"
            has html "Best: <b>Adam</b>." "its paragraph"
            has html "Adam converges" "the check"
            Expect.isFalse (html.Contains "* plotly.js v") "no figure: no plotly.js"
            let withFigure = Results.toHtml r (Results.blocks r (Some ownFigure))
            Expect.equal (count "* plotly.js v" withFigure) 1 "a figure: plotly.js once"
            let md = Results.toMarkdown { r with Layout = None }
            Expect.stringContains md "| Adam | 0.5 | 10 |" "the generic table, each column in its own format"
        }
    ]
