module MoFO.Tests.Evaluation.Sandbox

open System
open System.IO
open Expecto
open MoFO
open MoFO.Evaluation
open MoFO.Tests.Fixtures

let private sandbox =
    lazy (
        try Some (PythonSandbox.Create(SandboxLimits(Timeout = TimeSpan.FromSeconds 3.0)))
        with :? SandboxUnavailableException -> None)

let private requireSandbox () =
    match sandbox.Force() with
    | Some s -> s
    | None -> skiptest "bubblewrap or python3 is not installed (apt-get install bubblewrap python3)"

/// Runs a hostile program; it must fail (not pass) within its limits plus a margin.
let private mustFail (name: string) (slot: int) (program: string) =
    let s = requireSandbox ()
    let clock = Diagnostics.Stopwatch.StartNew()
    let r = s.Run(program, slot)
    Expect.isFalse r.Passed $"{name}: reported as failed ({r.Describe()})"
    Expect.isLessThan clock.Elapsed.TotalSeconds 15.0 $"{name}: ended within its limits"
    r

[<Tests>]
let tests =
    testSequenced <| testList "Evaluation.Sandbox" [
        test "without bubblewrap the harness refuses to run generated code unless explicitly allowed" {
            let e = throwsWith<SandboxUnavailableException> (fun () -> PythonSandbox.Create(bwrapPath = "/nonexistent/bwrap") |> ignore)
            Expect.stringContains e.Message "allowUnsandboxed" "says how to override (Core names the option; the CLI its flag)"
            Expect.equal e.Remedy "allowUnsandboxed" "the remedy's field"
            Expect.stringContains (MoFO.Dsl.Cli.Common.render e) "--unsafe-no-sandbox" "the command line names its flag"
            Expect.stringContains e.Message "apt-get install bubblewrap" "says how to install it"
            let unsafe = PythonSandbox.Create(allowUnsandboxed = true, bwrapPath = "/nonexistent/bwrap")
            Expect.isFalse unsafe.Isolated "runs without isolation only when asked"
            let r = unsafe.Run("print('x' * 10)", 20)
            Expect.isTrue r.Passed "still runs under resource limits"
            let slow = unsafe.Run("while True:\n    pass\n", 20)
            Expect.isFalse slow.Passed "limits still apply"
        }

        test "a correct program passes, a failing assertion fails with its message" {
            let s = requireSandbox ()
            Expect.isTrue (s.Run("assert 1 + 1 == 2\nprint('ok')", 10).Passed) "passes"
            let r = s.Run("assert 1 + 1 == 3, 'arithmetic'", 10)
            Expect.equal r.Status SandboxStatus.Failed "fails"
            Expect.stringContains (r.Describe()) "AssertionError: arithmetic" "reason"
        }

        test "no network: a connection attempt fails" {
            mustFail "network" 11 "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n" |> ignore
            mustFail "loopback" 11 "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)\n" |> ignore
        }

        test "no writes outside the private temp dir; the host is untouched" {
            let marker = Path.Combine(repoRoot, $"sandbox-escape-{Guid.NewGuid():N}.txt")
            let tmpMarker = Path.Combine(Path.GetTempPath(), $"sandbox-escape-{Guid.NewGuid():N}.txt")
            let home = Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, $"sandbox-escape-{Guid.NewGuid():N}.txt")
            for target in [ marker; tmpMarker; home ] do
                let program = sprintf "open(%A, 'w').write('x')\n" target
                mustFail $"write {target}" 12 program |> ignore
                Expect.isFalse (File.Exists target) $"{target} was not created"
            // Reading the project is not possible either: it is not mounted.
            let readProgram = sprintf "open(%A).read()\n" (Path.Combine(repoRoot, "MoFO.sln"))
            mustFail "read the repository" 12 readProgram |> ignore
            // Writing into its own working folder works.
            Expect.isTrue ((requireSandbox ()).Run("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", 12).Passed) "own temp dir is writable"
        }

        test "an unbounded fork is stopped and leaves no process behind" {
            mustFail "fork bomb" 13 "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" |> ignore
            Threading.Thread.Sleep 500
            // Slot 13 runs as uid 60013 (when the tests run as root): nothing of that user may be left.
            let uidOf (pid: string) =
                try
                    File.ReadLines($"/proc/{pid}/status")
                    |> Seq.tryFind (fun l -> l.StartsWith "Uid:")
                    |> Option.map (fun l -> l.Split([| '\t'; ' ' |], StringSplitOptions.RemoveEmptyEntries)[1])
                with _ -> None
            let leftovers =
                Directory.GetDirectories "/proc"
                |> Array.map Path.GetFileName
                |> Array.filter (fun d -> d |> Seq.forall Char.IsDigit)
                |> Array.filter (fun pid -> uidOf pid = Some "60013")
            Expect.isEmpty leftovers "no process of the sandbox user left running"
        }

        test "unbounded allocation fails at the memory limit" {
            let r = mustFail "memory" 14 "x = []\nwhile True:\n    x.append(bytearray(50_000_000))\n"
            Expect.isTrue (r.Status = SandboxStatus.Failed || r.Status = SandboxStatus.TimedOut) "failed"
        }

        test "an endless loop times out; a sleeping one too" {
            let r = mustFail "busy loop" 15 "while True:\n    pass\n"
            Expect.isLessThan r.Elapsed.TotalSeconds 6.0 "killed near the 3 s limit"
            let r2 = mustFail "sleep" 15 "import time\ntime.sleep(60)\n"
            Expect.equal r2.Status SandboxStatus.TimedOut "wall-clock timeout"
        }

        test "printing gigabytes stops at the output limit" {
            let r = mustFail "output flood" 16 "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
            Expect.equal r.Status SandboxStatus.OutputLimitExceeded "output limit"
            Expect.isLessThan (r.Stdout.Length + r.Stderr.Length) 10000 "only a tail is kept"
        }
    ]

let private scoreWith (transform: HumanEvalProblem -> string) =
    let problemsPath = requireAsset DataRoot.Assets.HumanEval
    requireSandbox () |> ignore
    let problems = HumanEval.ReadProblems problemsPath
    let samples = Path.Combine(Directory.CreateTempSubdirectory("mofo-he-").FullName, "samples.jsonl")
    File.WriteAllLines(samples, [ for p in problems -> Text.Json.JsonSerializer.Serialize(dict [ "task_id", p.TaskId; "completion", transform p ]) ])
    let code, out, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "eval-samples"; "--task"; "humaneval"; "--samples"; samples; "--k"; "1" |])
    Expect.equal code 0 $"exit code; stderr: {err}"
    let results = File.ReadAllLines(Path.Combine(Path.GetDirectoryName samples, "samples_results.jsonl"))
    Expect.equal results.Length problems.Count "one result line per sample"
    out

[<Tests>]
let humanEval =
    testSequenced <| testList "Evaluation.HumanEval" [
        test "eval-samples: the 164 canonical solutions give pass@1 = 1.0" {
            let out = scoreWith (fun p -> p.CanonicalSolution)
            Expect.stringContains out "164 samples over 164 problems" "all problems"
            Expect.stringContains out "pass@1: 1.0000" "every canonical solution passes"
        }

        test "eval-samples: '    pass' everywhere gives pass@1 = 0.0" {
            let out = scoreWith (fun _ -> "    pass\n")
            Expect.stringContains out "pass@1: 0.0000" "no stub passes"
        }

        test "eval-samples: a malformed samples line is an error with file and line; an unknown task_id too" {
            let dir = Directory.CreateTempSubdirectory("mofo-he-").FullName
            let bad = Path.Combine(dir, "bad.jsonl")
            File.WriteAllText(bad, "{\"task_id\": \"HumanEval/0\", \"completion\": \"x\"}\n{\"task_id\": \"HumanEval/1\"}\n")
            requireAsset DataRoot.Assets.HumanEval |> ignore
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "eval-samples"; "--task"; "humaneval"; "--samples"; bad |])
            Expect.notEqual code 0 "fails"
            Expect.stringContains err (bad + ":2") "file and line"
            Expect.stringContains err "completion" "the missing field"
            File.WriteAllText(bad, "{\"task_id\": \"HumanEval/999\", \"completion\": \"x\"}\n")
            let code2, _, err2 = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "eval-samples"; "--task"; "humaneval"; "--samples"; bad |])
            Expect.notEqual code2 0 "fails"
            Expect.stringContains err2 "HumanEval/999" "names the task id"
        }
    ]
