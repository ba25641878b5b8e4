module MoFO.Tests.OptimResults

open System
open System.IO
open System.Text.Json
open Expecto
open MoFO.Dsl.Results
open MoFO.Tests.Fixtures

[<Tests>]
let results =
    testList "Optim.results" [
        test "Optim.results.json follows the output contract (name, scale, seed, rows, paper, checks, elapsedSeconds)" {
            let r =
                { Name = "demo"; Title = "A demo"; Scale = "tiny"; Seed = 3
                  Rows = [ row "Adam" [ "loss", 0.5; "nan", nan ]; row "MoFO" [ "Δ loss", 0.25 ] ]
                  Paper = None
                  Checks = [ check "MoFO lower" true "0.25 < 0.5" ]
                  ElapsedSeconds = 1.5; Layout = None }
            use doc = JsonDocument.Parse(toJson r)
            let root = doc.RootElement
            let keys = [ for p in root.EnumerateObject() -> p.Name ]
            Expect.equal keys [ "name"; "title"; "scale"; "seed"; "rows"; "metricNames"; "paper"; "checks"; "elapsedSeconds" ] "top-level keys in order"
            Expect.equal (root.GetProperty("rows").[0].GetProperty("key").GetString()) "adam" "a row's key"
            Expect.equal (root.GetProperty("rows").[1].GetProperty("method").GetString()) "MoFO" "its label"
            Expect.isTrue (root.GetProperty("rows").[1].GetProperty("metrics").TryGetProperty("delta_loss") |> fst) "metrics under machine keys"
            Expect.equal (root.GetProperty("metricNames").GetProperty("delta_loss").GetString()) "Δ loss" "with their display names beside them"
            Expect.equal (root.GetProperty("rows").[0].GetProperty("metrics").GetProperty("loss").GetDouble()) 0.5 "a metric"
            Expect.equal (root.GetProperty("rows").[0].GetProperty("metrics").GetProperty("nan").ValueKind) JsonValueKind.Null "NaN is written as null"
            Expect.equal (root.GetProperty("paper").ValueKind) JsonValueKind.Null "no paper numbers → null"
            Expect.isTrue (root.GetProperty("checks").[0].GetProperty("holds").GetBoolean()) "a check"
            let md = toMarkdown r
            Expect.stringContains md "| Adam | 0.5 | – |" "the Markdown table row"
            Expect.stringContains md "✅ holds: MoFO lower" "the Markdown check"
        }

        test "Optim.results.args: --seed, --scale, --strict; bad values are named" {
            let o = MoFO.Dsl.Cli.Repro.scriptOptions [| "script.fsx"; "--seed"; "7"; "--scale"; "tiny"; "--strict" |]
            Expect.equal (o.Seed, o.Scale, o.Strict) (7, "tiny", true) "parsed"
            let e = throwsWith<MoFO.Dsl.Cli.FlagException> (fun () -> MoFO.Dsl.Cli.Repro.scriptOptions [| "--scale"; "huge" |] |> ignore)
            Expect.stringContains e.Message "huge" "names the bad scale"
            let e2 = throwsWith<MoFO.Dsl.Cli.FlagException> (fun () -> MoFO.Dsl.Cli.Repro.scriptOptions [| "--seed"; "x" |] |> ignore)
            Expect.stringContains e2.Message "--seed" "names the bad seed"
            Expect.stringContains e2.Message "'x'" "and its value"
        }

        test "Optim.bench.args: mofo bench optim rejects bad values, naming them; --help lists --pytorch" {
            let code1, _, err1 = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "bench"; "optim"; "--repetitions"; "0" |])
            Expect.equal code1 2 "a usage error"
            Expect.stringContains err1 "--repetitions 0" "names the bad repetition count"
            let code2, _, err2 = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "bench"; "optim"; "--alpha"; "1.5" |])
            Expect.equal code2 2 "a usage error"
            Expect.stringContains err2 "1.5" "names the bad alpha"
            let code, out, _ = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "bench"; "optim"; "--help" |])
            Expect.equal code 0 "help exits 0"
            Expect.stringContains out "--pytorch" "the PyTorch peer is documented"
        }

        test "Optim.results.toy-example script writes results/toy-example.{json,md,html} and its checks hold" {
            let dll = Path.Combine(repoRoot, "src", "MoFO.Dsl", "bin", "Release", "net10.0", "MoFO.Dsl.dll")
            if not (File.Exists dll) then skiptestf "%s is not built (build in Release first: ./mofo info)" dll
            let out = Path.Combine(Path.GetTempPath(), $"mofo-results-{Guid.NewGuid():N}")
            try
                let code, stdout, err = runProcess "dotnet" [ "fsi"; "--quiet"; "paper-repro/toy-example.fsx"; "--seed"; "1"; "--strict"; "--out"; out ] repoRoot (TimeSpan.FromMinutes 5.0)
                Expect.equal code 0 $"exit code; stdout: {stdout} stderr: {err}"
                for ext in [ "json"; "md"; "html" ] do
                    Expect.isTrue (File.Exists(Path.Combine(out, $"toy-example.{ext}"))) $"toy-example.{ext} written"
                use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "toy-example.json")))
                let checks = doc.RootElement.GetProperty("checks")
                Expect.isTrue (checks.GetArrayLength() >= 4) "the checks are reported"
                for c in checks.EnumerateArray() do
                    Expect.isTrue (c.GetProperty("holds").GetBoolean()) (c.GetProperty("claim").GetString())
                Expect.stringContains (File.ReadAllText(Path.Combine(out, "toy-example.html"))) "plotly" "the figure embeds plotly.js"
            finally
                if Directory.Exists out then Directory.Delete(out, true)
        }
    ]
