/// Every reproduction by name: the scripts in paper-repro/ and `mofo repro <name>` run them through here.
module MoFO.Dsl.Repro.All

open System
open System.IO
open System.Text
open MoFO.Dsl
open MoFO.Dsl.Results

module S = MoFO.Dsl.Repro.Paper

/// The reproductions, in the paper's order: name, what it reproduces, how to run it.
let studies : (string * string * (Study.Ctx -> int)) list =
    [ "toy-example", "Section 4: Adam vs MoFO on the two-parameter toy problem", (fun c -> let r, ch = Optim.toyExample c.Options in finish c.Options r (Some ch))
      "convergence", "Theorem 1: GD-MoFO's convergence rate", (fun c -> let r, ch = Optim.convergence c.Options in finish c.Options r (Some ch))
      "table1", "Table 1: Adam vs Lion on DPR (Pythia-160m)", S.table1
      "table2", "Table 2: Adam vs MoFO on DPR (Pythia-160m)", S.table2
      "figure-landscape", "Figures 1 and 3: loss landscapes through the pretrained, Adam, Lion and MoFO weights", S.figureLandscape
      "table3", "Table 3: MetaMathQA (Llama-2-7B), Full FT, HFT, L1, L2, MoFO", S.table3
      "table4", "Table 4: Code-Alpaca (Llama-2-7B), Full FT, HFT, L1, L2, MoFO", S.table4
      "table5", "Table 5: continual fine-tuning (TinyLlama-1.1B on TRACE), OP and BWT with GEM and Replay", S.table5
      "figure-fraction", "Figure 4: MoFO's update fraction α", S.figureFraction
      "table6", "Table 6: MoFO vs gradient-filtered and randomized BCD", S.table6
      "frontier", "Beyond the paper: learning–forgetting frontiers over learning rates and seeds", Frontier.frontier ]

let names = studies |> List.map (fun (n, _, _) -> n)

/// Runs one reproduction; returns 0, or 1 when run with --strict and a claim does not hold. Failures are exceptions
/// (the CLI maps them onto the exit-code table).
let run (name: string) (o: Options) =
    MoFO.Runtime.init ()
    match studies |> List.tryFind (fun (n, _, _) -> n = name) with
    | None -> raise (MoFO.OptionException("Name", $"""Name {name}: unknown reproduction (expected one of {String.Join(", ", names)}, all)"""))
    | Some (_, _, f) -> f (Study.context o)

/// Reads the checks of a written result (for the index).
let private checksOf (path: string) =
    if not (File.Exists path) then None
    else
        use d = Text.Json.JsonDocument.Parse(File.ReadAllText path)
        let cs = d.RootElement.GetProperty("checks").EnumerateArray() |> Seq.map (fun c -> c.GetProperty("holds").GetBoolean()) |> Seq.toList
        Some (cs |> List.filter id |> List.length, cs.Length, d.RootElement.GetProperty("elapsedSeconds").GetDouble())

/// results/index.html: a link to every table and figure with how many of its claims hold.
let writeIndex (o: Options) (extra: (string * string) list) =
    let sb = StringBuilder()
    sb.Append("<!doctype html><html><head><meta charset=\"utf-8\"><title>MoFO.NET reproduction</title>")
      .Append("<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:4px 10px;text-align:left}tr:nth-child(even){background:#f4f4f4}</style></head><body>")
      .Append($"<h1>MoFO.NET — the paper's tables and figures</h1><p>scale <b>{o.Scale}</b>, seed {o.Seed}, written {DateTime.UtcNow:u}</p>")
      .Append("<table><tr><th>result</th><th>reproduces</th><th>claims holding</th><th>time</th><th>files</th></tr>") |> ignore
    for name, what in (studies |> List.map (fun (n, w, _) -> n, w)) @ extra do
        let json = Path.Combine(o.OutDir, name + ".json")
        let files =
            [ ".html"; ".md"; ".json" ] |> List.filter (fun ext -> File.Exists(Path.Combine(o.OutDir, name + ext)))
            |> List.map (fun ext -> $"<a href=\"{name}{ext}\">{ext.TrimStart('.')}</a>")
        match checksOf json with
        | Some (ok, n, secs) -> sb.Append($"<tr><td><a href=\"{name}.md\">{name}</a></td><td>{what}</td><td>{ok} / {n}</td><td>{secs:F0} s</td><td>{String.Join(' ', files)}</td></tr>") |> ignore
        | None -> sb.Append($"<tr><td>{name}</td><td>{what}</td><td colspan=3>not run</td></tr>") |> ignore
    sb.Append("</table></body></html>") |> ignore
    Directory.CreateDirectory o.OutDir |> ignore
    let path = Path.Combine(o.OutDir, "index.html")
    MoFO.AtomicFile.WriteAllText(path, sb.ToString())
    path

/// Runs every reproduction of the paper in turn (not the frontier sweep: `mofo repro frontier`, ≈ 30 min at tiny scale)
/// and writes results/index.html (which links the frontier too when its results exist); the exit code is the worst.
let all (o: Options) =
    let clock = Diagnostics.Stopwatch.StartNew()
    let codes =
        [ for n in names |> List.filter (fun n -> n <> "frontier") ->
            eprintfn "==== %s (%.0f s so far) ====" n clock.Elapsed.TotalSeconds
            n, (try run n o with e -> eprintfn "%s: %s" n e.Message; int (ExitCode.classify e)) ]
    let index = writeIndex o []
    printfn "all: %d reproductions in %.0f s; index: %s" codes.Length clock.Elapsed.TotalSeconds index
    for n, code in codes do if code <> 0 then printfn "  %s exited %d" n code
    codes |> List.map snd |> List.fold max 0
