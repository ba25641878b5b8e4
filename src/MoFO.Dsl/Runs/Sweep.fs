/// Sweeps: many experiments (or continual streams), each point in a process of its own, several at once. A point whose
/// process crashes (a native libtorch failure, `kill -9`) is retried from its last checkpoint (the store's run folder,
/// written atomically), and after three failed attempts recorded as failed (NaN values) while the other points go on;
/// a point that fails on the user's input (a missing or malformed file, a bad option) stops the sweep with that error's
/// exit code. A single point runs in this process.
module MoFO.Dsl.Sweep

open System
open System.Diagnostics
open System.IO
open System.Threading
open MoFO

/// What a point computes.
[<RequireQualifiedAccess>]
type Job =
    | Train of Experiment
    | Continual of Continual.Job
    member j.Label =
        match j with
        | Train e ->
            let p = if e.Recipe.Precision = MoFO.Training.Precision.BFloat16 then $" · bf16 ({e.Recipe.BFloat16Update})" else ""
            let p = if e.Recipe.OptimizerState = MoFO.Optim.MomentStorage.Blockwise8Bit then p + " · 8-bit states" else p
            $"{e.Data.Name} · {e.Method.Label} · lr {Recipe.lrFor e.Method e.Recipe:G3} · seed {e.Seed}{p}"
        | Continual c -> $"continual · {c.Experiment.Method.Label} · seed {c.Experiment.Seed}"

/// A point's file: the job and the intra-op threads its process uses (0: libtorch's default).
type PointFile = { Job: Job; Threads: int }

/// How many points run at once: on CPU at tiny scale one per core (each with one intra-op thread: a tiny model does
/// not use two cores well); otherwise one. MOFO_PARALLEL overrides.
let parallelism (scale: Scale) =
    match EnvironmentVariables.PositiveInteger EnvironmentVariables.Parallel |> Option.ofNullable with
    | Some n -> n
    | None -> (match scale with Scale.Tiny -> max 1 Environment.ProcessorCount | Scale.Paper _ -> 1)

/// Runs a job in this process.
let runJob (showProgress: bool) (j: Job) =
    match j with
    | Job.Train e -> Training.runWith showProgress e |> ignore
    | Job.Continual c -> Continual.run showProgress c |> ignore

/// The entry of a point's process (`mofo point FILE`, hidden): reads the point file and runs its job.
let runPoint (file: string) =
    let p = Json.read<PointFile> file
    MoFO.Runtime.init ()
    if p.Threads > 0 then TorchSharp.torch.set_num_threads p.Threads
    if p.Threads > 0 then ConsoleProgress.Enabled <- false
    runJob (p.Threads = 0) p.Job
    0

/// A point's process started (tests use it to kill one).
type Started = { Label: string; Pid: int; Attempt: int; Job: Job }
let started = Event<Started>()

type private Marker = class end

/// The command that starts a point's process: the host (dotnet) and the DSL assembly.
let private command () =
    let dll = typeof<Marker>.Assembly.Location
    let host =
        match Environment.GetEnvironmentVariable "DOTNET_HOST_PATH" with
        | null | "" ->
            match Environment.ProcessPath with
            | p when not (isNull p) && Path.GetFileNameWithoutExtension p = "dotnet" -> p
            | _ -> "dotnet"
        | p -> p
    host, dll

let private printLock = obj ()
let private say (fmt: Printf.TextWriterFormat<'a>) = lock printLock (fun () -> eprintfn fmt)

let private lastLines (path: string) (n: int) =
    if File.Exists path then File.ReadAllLines path |> Array.filter (fun l -> l.Trim() <> "") |> Array.rev |> Array.truncate n |> Array.rev |> String.concat "\n"
    else ""

/// Runs one point's process to its end; returns its exit code (a signal as 128 + its number, as the shell reports it).
let private attempt (job: Job) (threads: int) (inheritConsole: bool) (n: int) (log: string) =
    let file = Path.Combine(Store.root (), "points", $"{Store.hash (Json.serialize job)}.json")
    Json.write file { Job = job; Threads = threads }
    let host, dll = command ()
    let psi = ProcessStartInfo(host, RedirectStandardOutput = not inheritConsole, RedirectStandardError = not inheritConsole, UseShellExecute = false)
    psi.ArgumentList.Add dll
    match DataRoot.Override with
    | null | "" -> ()
    | root -> psi.ArgumentList.Add "--data-root"; psi.ArgumentList.Add root
    psi.ArgumentList.Add "point"
    psi.ArgumentList.Add file
    use p = new Process(StartInfo = psi)
    use out = if inheritConsole then null else new StreamWriter(log, append = (n > 1), AutoFlush = true)
    let sink (e: DataReceivedEventArgs) = if not (isNull e.Data) then lock out (fun () -> out.WriteLine e.Data)
    if not inheritConsole then
        p.OutputDataReceived.Add sink
        p.ErrorDataReceived.Add sink
    p.Start() |> ignore
    if not inheritConsole then
        p.BeginOutputReadLine()
        p.BeginErrorReadLine()
    started.Trigger { Label = job.Label; Pid = p.Id; Attempt = n; Job = job }
    p.WaitForExit()
    let code = p.ExitCode
    if code = 0 then File.Delete file
    code

/// Runs the jobs, each in its own process, `par` at a time, retrying crashed points (three attempts); returns for each
/// job whether it finished. A user error of a point (its exit code says so) stops the sweep with that class.
/// The fraction of a running point's training done: its metrics lines over its steps (0 when unknown).
let private fractionDone (job: Job) =
    match job with
    | Job.Train e ->
        match e.Recipe.Steps with
        | Some steps when steps > 0 ->
            let file = Path.Combine(Identity.runDir e, "metrics.jsonl")
            try
                if File.Exists file then
                    use r = new StreamReader(new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
                    let mutable n = 0
                    while not (isNull (r.ReadLine())) do n <- n + 1
                    min 1.0 (float n / float steps)
                else 0.0
            with :? IOException -> 0.0
        | _ -> 0.0
    | Job.Continual _ -> 0.0

let map (par: int) (jobs: Job list) : (Job * bool) list =
    let items = List.toArray jobs
    let results = Array.create items.Length false
    let stop = ref None
    let next = ref -1
    let finished = ref 0
    let clock = Stopwatch.StartNew()
    let threads = if par > 1 then 1 else 0
    let inheritConsole = par <= 1
    Directory.CreateDirectory(Path.Combine(Store.root (), "points")) |> ignore
    let runOne (i: int) =
        let job = items[i]
        let log = Path.Combine(Store.root (), "points", $"{Store.hash (Json.serialize job)}.log")
        if inheritConsole then say "[%d/%d] %s" (i + 1) items.Length job.Label
        let rec go n =
            let code = attempt job threads inheritConsole n log
            let cls = enum<ExitCode> code
            if code = 0 then
                let d = Interlocked.Increment finished
                if not inheritConsole then say "[%d/%d, %.0f s] done: %s" d items.Length clock.Elapsed.TotalSeconds job.Label
                if File.Exists log then File.Delete log
                true
            elif ExitCode.isUserError cls then
                let tail = lastLines log 3
                stop.Value <- Some (ClassifiedException(cls, $"{job.Label}: {tail}"))
                false
            elif n < 3 then
                say "point %s: its process ended with code %d (%s); retrying from its checkpoint (attempt %d of 3)" job.Label code (ExitCode.describe cls) (n + 1)
                go (n + 1)
            else
                say "point %s FAILED three times (last exit code %d); its values are NaN. Last lines of %s:\n%s" job.Label code log (lastLines log 8)
                false
        results[i] <- go 1
    // in parallel mode the points' output goes to their logs: one live line follows the whole sweep (thousandths of
    // the work: finished points and the running points' steps), with the running points and an ETA
    let running = Collections.Concurrent.ConcurrentDictionary<int, Job>()
    use progress =
        if inheritConsole || not ConsoleProgress.Enabled then null
        else new ConsoleProgress("sweep", int64 items.Length * 1000L, "‰")
    let mutable shown = 0L
    let refresh () =
        if not (isNull progress) then
            let partial = running.Values |> Seq.sumBy fractionDone
            let now = int64 ((float finished.Value + partial) * 1000.0)
            let names = running.Values |> Seq.map (fun j -> $"{j.Label} {100.0 * fractionDone j:F0}%%") |> String.concat "; "
            progress.Status <- $"{finished.Value}/{items.Length} points done; running: {names}"
            if now > shown then
                progress.Advance(now - shown)
                shown <- now
    use timer = new Timer((fun _ -> lock printLock refresh), null, 2000, 2000)
    let worker () =
        let mutable go = true
        while go do
            let i = Interlocked.Increment next
            if i >= items.Length || stop.Value.IsSome then go <- false
            else
                running[i] <- items[i]
                try runOne i finally running.TryRemove(i) |> ignore
    let ts = [ for _ in 1 .. max 1 (min par items.Length) -> Thread(worker) ]
    for t in ts do t.Start()
    for t in ts do t.Join()
    timer.Dispose()
    lock printLock refresh
    match stop.Value with
    | Some e -> raise e
    | None -> Array.zip items results |> Array.toList

/// Whether an experiment's run and every value it measures are already in the store (nothing to compute).
let private complete (e: Experiment) =
    let dir = Identity.runDir e
    let folder = MoFO.Training.RunFolder dir
    if File.Exists(Path.Combine(dir, "diverged.txt")) then true
    elif isNull (folder.FinishedSummary()) then false
    else
        let cached = Store.readEvals dir (Store.settingsKey e.Settings)
        e.Measures |> List.forall (fun m ->
            let key = if m.Needs |> List.contains Need.Task then $"{m.Key}@{e.Data.Name}" else m.Key
            cached.ContainsKey key)

/// Runs several experiments and returns their runs in order: finished points come from the store, one point runs here,
/// several run each in its own process (`parallelism`). An interrupted sweep re-run continues where it stopped.
let runAll (es: Experiment list) : Run list =
    match es with
    | [] -> []
    | _ when MoFO.Distributed.Job.Distributed ->
        // a data-parallel job (mpirun -n N dotnet fsi script.fsx): every rank runs every point in this process, in the
        // same order, each point's training spread over the ranks (rank 0 alone writes)
        let runs = es |> List.distinct |> List.map (fun e -> e, Training.runWith true e) |> dict
        es |> List.map (fun e -> runs[e])
    | first :: _ ->
        let distinct = List.distinct es
        let todo = distinct |> List.filter (complete >> not)
        let failed =
            match todo with
            | [] -> Set.empty
            | [ e ] -> Training.runWith true e |> ignore; Set.empty
            | _ ->
                map (parallelism first.Scale) (todo |> List.map Job.Train)
                |> List.choose (fun (j, ok) -> match j with Job.Train e when not ok -> Some e | _ -> None)
                |> Set.ofList
        let runs = distinct |> List.map (fun e -> e, (if failed.Contains e then Training.failedRun e else Training.runWith false e)) |> dict
        if not failed.IsEmpty then eprintfn "sweep: %d of %d points failed; their values are NaN (re-run to retry them)" failed.Count distinct.Length
        es |> List.map (fun e -> runs[e])

/// Runs continual jobs (each in its own process when there are several) and returns their outcomes in order.
let continual (jobs: Continual.Job list) : Continual.Outcome list =
    match jobs with
    | [] -> []
    | [ j ] -> [ Continual.run true j ]
    | _ when MoFO.Distributed.Job.Distributed -> jobs |> List.map (Continual.run true)
    | first :: _ ->
        let results = map (parallelism first.Experiment.Scale) (jobs |> List.map Job.Continual) |> dict
        jobs |> List.map (fun j ->
            if results[Job.Continual j] then Continual.run false j
            else { Method = j.Experiment.Method; OP = nan; BWT = nan; R = [||] })
