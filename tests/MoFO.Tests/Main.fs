module MoFO.Tests.Main

open Expecto
open Expecto.Impl

/// Runs every [<Tests>] value; the last line printed is the plain summary `N passed, N failed, N skipped`.
[<EntryPoint>]
let main argv =
    // Expecto wraps Console.Out in its own ANSI writer; the summary line goes to the raw stdout, alone and plain.
    let stdout = new System.IO.StreamWriter(System.Console.OpenStandardOutput())
    let mutable summary = None
    let config =
        { defaultConfig with
            printer =
                { defaultConfig.printer with
                    summary = fun cfg s ->
                        summary <- Some s
                        defaultConfig.printer.summary cfg s } }
    let code = runTestsInAssemblyWithCLIArgs [ Printer config.printer; No_Spinner; Colours 0 ] argv
    System.Console.Out.Flush()
    stdout.WriteLine() // Expecto leaves an ANSI reset pending on the current line
    match summary with
    | Some s -> stdout.WriteLine $"{s.passed.Length} passed, {s.failed.Length + s.errored.Length} failed, {s.ignored.Length} skipped"
    | None -> stdout.WriteLine "0 passed, 1 failed, 0 skipped"
    stdout.Flush()
    if code <> 0 then 1 else 0
