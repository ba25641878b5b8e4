/// A measure is declared once (module `Measure`): every declared measure is reachable from everything that reads the
/// declarations (key, `mofo eval --task`, the lm-eval writer and reader, the report suites); a measure declared in this
/// file runs through the same paths as a declared one; a script that misspells a measure does not compile; and a
/// measure against the base model asks for `--base` before anything else.
module MoFO.Tests.Measures

open System
open System.IO
open System.Text.Json
open Argu
open Expecto
open MoFO
open MoFO.Dsl
open MoFO.Data
open MoFO.Evaluation
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

let private stories () = requireAsset DataRoot.Assets.Stories260K

/// Settings under which every measure can run (a data file for each key), so that availability hides none.
let private everyData = { Settings.Paper with Data = Measure.All |> List.map (fun m -> m.Key, "given.jsonl") |> Map.ofList }

/// A measure declared here as it would be declared in module `Measure`: two-choice questions on stories, by
/// log-likelihood. It is not in `Measure.All`.
let private toyQuestions =
    [ McItem("toy-0", "Once upon a time, there was a little", [| "girl"; "table" |], 0)
      McItem("toy-1", "The cat sat on the", [| "mat"; "ran" |], 0)
      McItem("toy-2", "Lily went to the park and", [| "played"; "purple" |], 0) ]

let private toy : Measure =
    { Key = "toy_choice"; Name = "toy choice"; HigherIsBetter = true; Unit = MeasureUnit.Accuracy; Suite = None; Needs = []
      Task = Some "toy-choice"; Harness = None; Assets = (fun _ -> []); Available = (fun _ -> true)
      Knobs = (fun s -> { EvalKnobs.None with Limit = s.Limit "toy_choice" })
      Apply = (fun k s -> match k.Limit with Some n -> s.WithLimit("toy_choice", n) | None -> s)
      Run = (fun ctx p -> Harnesses.multipleChoice p.Model "toy-choice" (toyQuestions |> Harnesses.take (ctx.Settings.Limit "toy_choice")) 0 (int ctx.Settings.Seed)) }

/// A results file of the harness's shape holding, for each measure with a harness task, a value at the first metric
/// key its declaration names (a `*` filled in).
let private harnessFile (path: string) (values: (Measure * float) list) =
    let results = Text.Json.Nodes.JsonObject()
    for m, v in values do
        let h = m.Harness.Value
        let task = Text.Json.Nodes.JsonObject()
        task[h.Metrics.Head.Replace("*", "create_test")] <- Text.Json.Nodes.JsonValue.Create v
        task["some_other_metric,none"] <- Text.Json.Nodes.JsonValue.Create -1.0
        results[h.Name] <- task
    let root = Text.Json.Nodes.JsonObject()
    root["results"] <- results
    File.WriteAllText(path, root.ToJsonString())

[<Tests>]
let tests =
    testSequenced <| testList "Measures" [
        test "Measures.reachable: every declared measure by key and name, by mofo eval --task, in the lm-eval writer and reader, in its report suite" {
            let _, usage, _ = mofo [ "eval"; "--help" ]
            for m in Measure.All do
                Expect.equal (Measure.Parse m.Key) m $"{m.Key}: by key"
                Expect.equal (Measure.Parse m.Name) m $"{m.Key}: by name"
                match m.Task with
                | Some t ->
                    Expect.equal (Evals.ofTask t) m $"{m.Key}: mofo eval --task {t}"
                    Expect.stringContains usage t $"{m.Key}: mofo eval's usage lists {t}"
                | None -> ()
                // the writer: an outcome with aggregates only goes under the harness's task name (or the key)
                let o = { Value = 0.25; Metrics = [ "value", 0.25 ]; Count = 3; Items = Items.NotKept }
                let ts, groups = LmEval.tasks m Settings.Paper o
                let name = match m.Harness with Some h -> h.Name | None -> m.Key
                Expect.equal [ for t in ts -> t.Task ] [ name ] $"{m.Key}: one task, {name}"
                Expect.equal groups [ name, [] ] $"{m.Key}: no subtasks"
                Expect.equal ts.Head.HigherIsBetter [ "value", m.HigherIsBetter ] $"{m.Key}: its direction"
                Expect.equal ts.Head.Shots (m.Knobs Settings.Paper).Shots $"{m.Key}: its n-shot"
            // the reader: each benchmark's value at the key its declaration names, none mixed up with another's
            let benchmarks = Measure.All |> List.filter (fun m -> m.Harness.IsSome)
            Expect.equal (benchmarks |> List.map (fun m -> m.Key)) [ "mmlu"; "arc_easy"; "arc_challenge"; "hellaswag"; "gsm8k"; "humaneval" ] "the six benchmarks of the harness"
            use dir = new TempDir()
            let values = benchmarks |> List.mapi (fun i m -> m, 0.1 * float (i + 1))
            harnessFile (dir.File "h.json") values
            Expect.equal (LmEval.measuresOf (dir.File "h.json")) (Map.ofList values) "each benchmark read back at its own key"
            // the stores' JSON names each by its key and reads it back
            let text = Json.serialize Measure.All
            Expect.equal (Json.deserialize<Measure list> "all.json" text) Measure.All "every measure read back from its key"
            Expect.stringContains text "\"arc_easy\"" "a measure is its key in JSON"
            // the report suites list every measure tagged with them, in the order declared
            for suite, tag in [ Report.Suite.Tiny, SuiteTag.Tiny; Report.Suite.Paper, SuiteTag.Paper ] do
                let listed = Report.measures suite None everyData |> List.filter (fun m -> m.Suite.IsSome)
                Expect.equal listed (Measure.All |> List.filter (fun m -> m.Suite = Some tag)) $"the {tag} suite"
        }

        test "Measures.extra: a measure declared in the test runs through mofo eval, the lm-eval results and samples files and a report row" {
            use dir = new TempDir()
            let out = dir.File "toy.json"
            let parser = ArgumentParser.Create<MoFO.Dsl.Cli.Eval.EvalArgs>(programName = "mofo eval")
            let args = parser.ParseCommandLine [| "--model"; stories (); "--task"; "toy-choice"; "--output"; out; "--log-samples" |]
            let code, text, err = captureConsole (fun () -> MoFO.Dsl.Cli.Eval.runWith (Measure.All @ [ toy ]) args)
            Expect.equal code 0 err
            Expect.stringContains text "toy-choice on" "the console line"
            let r = using (JsonDocument.Parse(File.ReadAllText out)) (fun d -> d.RootElement.Clone())
            Expect.equal (r.GetProperty("measure").GetString()) "toy_choice" "its key in mofo's own record"
            let res = r.GetProperty("results").GetProperty("toy_choice")
            let acc = res.GetProperty("acc,none").GetDouble()
            Expect.equal acc (r.GetProperty("metrics").GetProperty("acc").GetDouble()) "the harness's acc is mofo's"
            Expect.isTrue (r.GetProperty("higher_is_better").GetProperty("toy_choice").GetProperty("acc").GetBoolean()) "its direction"
            Expect.isFalse (fst (r.GetProperty("n-shot").TryGetProperty "toy_choice")) "no n-shot: it has no shots knob"
            Expect.equal (r.GetProperty("items").GetArrayLength()) 3 "its items in mofo's record"
            let samples = Directory.GetFiles(dir.Path, "samples_toy_choice_*.jsonl")
            Expect.equal samples.Length 1 "one samples file, named by its key"
            let lines = File.ReadAllLines samples[0] |> Array.map (fun l -> JsonDocument.Parse(l).RootElement)
            Expect.equal lines.Length 3 "a line per question"
            Expect.floatClose Accuracy.veryHigh (lines |> Array.averageBy (fun l -> l.GetProperty("acc").GetDouble())) acc "the lines' acc average to the result"
            Expect.equal [ for l in lines -> l.GetProperty("doc").GetProperty("id").GetString() ] [ "toy-0"; "toy-1"; "toy-2" ] "its questions"
            Expect.throwsT<OptionException> (fun () -> Evals.ofTask "toy-choice" |> ignore) "not declared in Measure.All, so not a task of mofo eval"
            // a report row and its rendering
            let tuned = { Value = 1.0; Metrics = [ "acc", 1.0 ]; Count = 3; Items = Items.NotKept }
            let before = { tuned with Value = 0.5; Metrics = [ "acc", 0.5 ] }
            let row = Report.row Settings.Paper "base.bin" "tuned" toy tuned (Some before)
            Expect.equal row.Delta (Some 0.5) "fine-tuned − base"
            Expect.equal row.Verdict (Some 1) "higher is better: better"
            Expect.equal row.Command (Some "mofo eval --model tuned --task toy-choice") "the equivalent command"
            let report : Report.ForgettingReport =
                { BaseModel = "base.bin"; FineTunedModel = "tuned"; Suite = Report.Suite.Tiny; Parameters = 1L; Task = None; Rows = [ row ]
                  PerTensorL2 = []; PerLayerL2 = []; Steps = []; MetricsFile = None; Watch = []; ElapsedSeconds = 0.0; JsonPath = ""; HtmlPath = "" }
            Expect.stringContains (Report.table report) "toy choice ↑" "its name and direction in the table"
            Expect.stringContains (Report.table report) "+50.00 pt" "an accuracy's change in points"
            Expect.stringContains (Report.toJson report) "\"key\": \"toy_choice\"" "its key in report.json"
        }

        test "Measures.base: kl-to-base, kl-to-base-samples and distance without --base say so first (one line, exit 2)" {
            let againstBase = Measure.All |> List.filter Evals.againstBase |> List.choose (fun m -> m.Task)
            Expect.equal againstBase [ "distance"; "kl-to-base"; "kl-to-base-samples" ] "the measures against the base model"
            use dir = new TempDir()
            let bad = dir.File "bad.txt"
            File.WriteAllText(bad, "not a jsonl line\n")
            for task in againstBase do
                // a missing model, a data file in the wrong format and --log-samples without --output: --base is said first
                let code, _, err = mofo [ "eval"; "--model"; dir.File "no-such-model.bin"; "--task"; task; "--data"; bad; "--log-samples" ]
                Expect.equal code 2 $"{task}: a usage error"
                let lines = err.Trim().Split('\n')
                Expect.equal lines.Length 1 $"{task}: one line: {err}"
                Expect.stringContains lines[0] $"--task {task}: --base is required" $"{task}: names --base"
            // a measure on the base model's samples defaults to the model itself: no --base asked for
            let code, _, err = mofo [ "eval"; "--model"; dir.File "no-such-model.bin"; "--task"; "pretrain-proxy" ]
            Expect.notEqual code 0 "the missing model fails"
            Expect.isFalse (err.Contains "--base") $"pretrain-proxy does not require --base: {err}"
        }

        test "Measures.script: a script names a measure as Measure.ArcEasy; a misspelled one is a compile error" {
            use dir = new TempDir()
            let script (body: string) =
                let path = dir.File $"s{Guid.NewGuid():N}.fsx"
                let load = Path.Combine(repoRoot, "scripts", "MoFO.fsx").Replace("\\", "/")
                File.WriteAllText(path, $"#load \"{load}\"\nopen MoFO.Dsl\n{body}\n")
                runProcess "dotnet" [ "fsi"; "--quiet"; path ] repoRoot (TimeSpan.FromMinutes 5.0)
            let code, out, err = script "printfn \"%s %s\" Measure.ArcEasy.Key Measure.KlToBase.Name"
            Expect.equal code 0 $"the script runs; stderr: {err}"
            Expect.stringContains out "arc_easy KL to base (task)" "the declared measures"
            let code2, _, err2 = script "printfn \"%s\" Measure.ArcEasyy.Key"
            Expect.notEqual code2 0 "a misspelled measure fails"
            Expect.stringContains err2 "ArcEasyy" "the compiler names it"
        }
    ]
