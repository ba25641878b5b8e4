/// Shared fixtures: the repository root, the data root, skipping when real assets are absent, capturing console output.
module MoFO.Tests.Fixtures

open System
open System.IO
open Expecto

MoFO.Native.NativeLoader.EnsureLoaded()

/// The repository root (the folder with MoFO.sln).
let repoRoot =
    match MoFO.DataRoot.RepositoryRoot() with
    | null -> failwith "tests must run inside the repository (no MoFO.sln found above the current directory)"
    | r -> r

/// The full path of a real asset, or skips the test with the one-line message that names the path.
let requireAsset (asset: MoFO.Asset) =
    if asset.Present then asset.FullPath else skiptest (MoFO.DataRoot.MissingMessage asset.FullPath)

let private consoleGate = obj ()

/// Runs f with stdout and stderr captured; returns (result, stdout, stderr). Serialized: the console is global.
let captureConsole (f: unit -> 'a) =
    lock consoleGate (fun () ->
        let out, err = Console.Out, Console.Error
        use o = new StringWriter()
        use e = new StringWriter()
        Console.SetOut o
        Console.SetError e
        try
            let r = f ()
            r, o.ToString(), e.ToString()
        finally
            Console.SetOut out
            Console.SetError err)

/// Runs a process to completion; returns (exit code, stdout, stderr).
let runProcess (file: string) (args: string list) (workDir: string) (timeout: TimeSpan) =
    let psi = Diagnostics.ProcessStartInfo(file, args, WorkingDirectory = workDir,
                                           RedirectStandardOutput = true, RedirectStandardError = true)
    use p = Diagnostics.Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    if not (p.WaitForExit timeout) then
        p.Kill true
        failtestf "%s %s did not finish within %O" file (String.Join(" ", args)) timeout
    p.ExitCode, out.Result, err.Result

/// Runs f, expecting an exception of type 'e; returns it so that its message can be checked.
let throwsWith<'e when 'e :> exn> (f: unit -> unit) : 'e =
    try
        f ()
        failtestf "expected %s, but nothing was thrown" typeof<'e>.Name
    with
    | :? 'e as e -> e
    | e when (e :? AssertException) -> raise e
    | e -> failtestf "expected %s, got %s: %s" typeof<'e>.Name (e.GetType().Name) e.Message
