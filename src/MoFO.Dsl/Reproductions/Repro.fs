/// Every reproduction by name. Each is a script in paper-repro/ that spells out its pipeline (model and data, the
/// methods compared, the measures, the columns, the claims); `mofo repro <name>` runs that script, so the script is the
/// one definition a researcher reads and edits.
module MoFO.Dsl.Repro.All

open System
open System.Diagnostics
open System.IO
open System.Text
open MoFO
open MoFO.Dsl
open MoFO.Dsl.Results

/// The reproductions, in the paper's order: the name of their script and what it reproduces.
let studies : (string * string) list =
    [ "toy-example", "Section 4: Adam vs MoFO on the two-parameter toy problem"
      "convergence", "Theorem 1: GD-MoFO's convergence rate"
      "table1", "Table 1: Adam vs Lion on DPR (Pythia-160m)"
      "table2", "Table 2: Adam vs MoFO on DPR (Pythia-160m)"
      "figure-landscape", "Figures 1 and 3: loss landscapes through the pretrained, Adam, Lion and MoFO weights"
      "table3", "Table 3: MetaMathQA (Llama-2-7B), Full FT, HFT, L1, L2, MoFO"
      "table4", "Table 4: Code-Alpaca (Llama-2-7B), Full FT, HFT, L1, L2, MoFO"
      "table5", "Table 5: continual fine-tuning (TinyLlama-1.1B on TRACE), OP and BWT with GEM and Replay"
      "figure-fraction", "Figure 4: MoFO's update fraction α"
      "table6", "Table 6: MoFO vs gradient-filtered and randomized BCD"
      "frontier", "Beyond the paper: learning–forgetting frontiers over learning rates and seeds" ]

let names = studies |> List.map fst

/// The paper-repro folder of the repository this build belongs to.
let scriptsDir () =
    match DataRoot.RepositoryRoot() with
    | null -> raise (MissingAssetException "mofo repro runs the scripts in paper-repro/ of a MoFO.NET repository, and none was found above this program")
    | root -> Path.Combine(root, "paper-repro")

/// A reproduction's script.
let script (name: string) =
    if not (List.contains name names) then
        raise (OptionException("Name", $"""Name {name}: unknown reproduction (expected one of {String.Join(", ", names)}, all)"""))
    let path = Path.Combine(scriptsDir (), name + ".fsx")
    if not (File.Exists path) then raise (MissingAssetException $"{path}: the script of reproduction {name} is missing")
    path

/// The flags of a reproduction as a script takes them.
let arguments (o: Options) =
    [ "--scale"; o.Scale; "--seed"; string o.Seed; "--out"; o.OutDir ]
    @ (match o.Config with Some c -> [ "--config"; c ] | None -> [])
    @ (if o.Strict then [ "--strict" ] else [])
    @ (if o.Smoke then [ "--smoke" ] else [])

/// Copies a child's stream to a writer as it arrives (in blocks: a progress line's carriage returns pass through).
let private pump (source: StreamReader) (target: unit -> TextWriter) =
    Threading.Tasks.Task.Run(fun () ->
        let buffer = Array.zeroCreate<char> 4096
        let mutable n = source.Read(buffer, 0, buffer.Length)
        while n > 0 do
            let w = target ()
            lock w (fun () -> w.Write(buffer, 0, n); w.Flush())
            n <- source.Read(buffer, 0, buffer.Length))

/// Runs a reproduction's script (`dotnet fsi paper-repro/<name>.fsx` with the options' flags) to its end, its output
/// copied to this process's console; returns the script's exit code (the exit-code table).
let run (name: string) (o: Options) =
    let path = script name
    let host = match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with null | "" -> "dotnet" | p -> p
    let psi = ProcessStartInfo(host, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Directory.GetCurrentDirectory())
    for a in [ "fsi"; "--quiet"; path ] @ arguments o do psi.ArgumentList.Add a
    match DataRoot.Override with
    | null | "" -> ()
    | root -> psi.Environment["MOFO_DATA"] <- root
    use p = Process.Start psi
    let copies = [ pump p.StandardOutput (fun () -> Console.Out); pump p.StandardError (fun () -> Console.Error) ]
    p.WaitForExit()
    Threading.Tasks.Task.WaitAll(Array.ofList copies)
    p.ExitCode

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
    for name, what in studies @ extra do
        let json = Path.Combine(o.OutDir, name + ".json")
        let files =
            [ ".html"; ".md"; ".json" ] |> List.filter (fun ext -> File.Exists(Path.Combine(o.OutDir, name + ext)))
            |> List.map (fun ext -> $"<a href=\"{name}{ext}\">{ext.TrimStart('.')}</a>")
        match checksOf json with
        | Some (ok, n, secs) -> sb.Append($"<tr><td><a href=\"{name}.html\">{name}</a></td><td>{what}</td><td>{ok} / {n}</td><td>{secs:F0} s</td><td>{String.Join(' ', files)}</td></tr>") |> ignore
        | None -> sb.Append($"<tr><td>{name}</td><td>{what}</td><td colspan=3>not run</td></tr>") |> ignore
    sb.Append("</table></body></html>") |> ignore
    Directory.CreateDirectory o.OutDir |> ignore
    let path = Path.Combine(o.OutDir, "index.html")
    MoFO.AtomicFile.WriteAllText(path, sb.ToString())
    path

/// Runs every reproduction of the paper in turn (not the frontier sweep: `mofo repro frontier`, ≈ 45 min at tiny scale)
/// and writes results/index.html (which links the frontier too when its results exist); the exit code is the worst.
let all (o: Options) =
    let clock = Stopwatch.StartNew()
    let codes =
        [ for n in names |> List.filter (fun n -> n <> "frontier") ->
            eprintfn "==== %s (%.0f s so far) ====" n clock.Elapsed.TotalSeconds
            n, run n o ]
    let index = writeIndex o []
    printfn "all: %d reproductions in %.0f s; index: %s" codes.Length clock.Elapsed.TotalSeconds index
    for n, code in codes do if code <> 0 then printfn "  %s exited %d" n code
    codes |> List.map snd |> List.fold max 0
