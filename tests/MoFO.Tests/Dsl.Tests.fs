module MoFO.Tests.Dsl

open System
open System.IO
open System.Text.Json
open Expecto
open MoFO.Dsl
open MoFO.Dsl.Evals
open MoFO.Tests.Fixtures

let private run (label: string) (m: Method option) (values: (Measure * float) list) : Run =
    { Label = label; Key = "test:" + label; Method = m; ModelPath = ""; BasePath = ""; Dir = ""; Values = Map.ofList values; Train = None; Seed = 0 }

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), $"mofo-dsl-{Guid.NewGuid():N}")
    Directory.CreateDirectory d |> ignore
    d

/// Runs f with MOFO_CACHE pointing at a fresh folder (serialized: the variable is process-wide).
let private cacheGate = obj ()
let private withCache (f: string -> 'a) =
    lock cacheGate (fun () ->
        let dir = tempDir ()
        let old = Environment.GetEnvironmentVariable "MOFO_CACHE"
        Environment.SetEnvironmentVariable("MOFO_CACHE", dir)
        try f dir
        finally
            Environment.SetEnvironmentVariable("MOFO_CACHE", old)
            try Directory.Delete(dir, true) with _ -> ())

let private smokeExperiment (steps: int) (measures: Measure list) =
    let recipe = { Recipe.Paper with Lr = 1e-3; Steps = Some steps; BatchSize = 4; MicroBatchSize = 4; MaxLength = 96; Schedule = MoFO.Training.Schedule.Constant }
    let settings = { Settings.Tiny with Samples = 12; SampleTokens = 100; TaskLimit = Some 8; Cache = tempDir () }
    { Experiment.create ModelSource.Stories260K Dataset.Dpr (Method.MoFO 0.15) recipe measures Scale.Tiny 0 with Settings = settings }

[<Tests>]
let tests =
    testList "Dsl" [
        test "Dsl.Frontier.interpolate: linear between the neighbours in x, None outside the range" {
            let curve = [ 3.0, 30.0; 1.0, 10.0; 2.0, 40.0 ]
            Expect.equal (Frontier.interpolate curve 1.5) (Some 25.0) "halfway between (1, 10) and (2, 40)"
            Expect.equal (Frontier.interpolate curve 2.5) (Some 35.0) "halfway between (2, 40) and (3, 30)"
            Expect.equal (Frontier.interpolate curve 0.5) None "left of the range"
            Expect.equal (Frontier.interpolate curve 3.5) None "right of the range"
        }

        test "Dsl.Frontier.pareto: keeps the points no other point beats on both loss and forgetting, sorted by loss" {
            let pts = [ 1.8, 2.0; 1.7, 0.6; 1.77, 4.9; 1.9, 0.3; 2.0, 0.5 ]
            Expect.equal (Frontier.pareto pts) [ 1.7, 0.6; 1.9, 0.3 ] "(1.77, 4.9), (1.8, 2.0) and (2.0, 0.5) are dominated"
            Expect.equal (Frontier.pareto [ 1.0, nan; 2.0, 1.0 ]) [ 2.0, 1.0 ] "a diverged point is not on the frontier"
        }

        test "Dsl.Frontier.advantage: the mean gap over the overlap of the ranges; None without overlap" {
            let reference = [ 1.0, 4.0; 3.0, 2.0 ]      // y = 5 − x
            let curve = [ 2.0, 1.0; 4.0, 0.5 ]          // y = 1.5 − x/4
            match Frontier.advantage reference curve 3 with
            | Some (d, r, (lo, hi)) ->
                Expect.equal (lo, hi) (2.0, 3.0) "overlap [2, 3]"
                // reference at 2, 2.5, 3: 3, 2.5, 2; curve: 1, 0.875, 0.75 → gaps 2, 1.625, 1.25 → mean 1.625; reference mean 2.5
                Expect.floatClose Accuracy.high d 1.625 "mean gap"
                Expect.floatClose Accuracy.high r 2.5 "reference's mean"
            | None -> failtest "the ranges overlap"
            Expect.isNone (Frontier.advantage reference [ 5.0, 1.0; 6.0, 1.0 ] 3) "disjoint ranges"
        }

        test "Dsl.Frontier.matched: per seed, the mean over seeds and a band" {
            let p m seed lr x y : Frontier.Point = { Method = m; Lr = lr; Seed = seed; Learn = x; Forget = y; Run = run "" None [] }
            let pts =
                [ for s, off in [ 0, 0.0; 1, 0.2 ] do
                    yield p Method.FullFT s 1.0 1.0 (3.0 + off)
                    yield p Method.FullFT s 2.0 2.0 (1.0 + off)
                    yield p Method.FullFT s 3.0 1.5 (5.0 + off)      // dominated: off the frontier
                    yield p (Method.MoFO 0.15) s 1.0 1.0 (2.0 + off)
                    yield p (Method.MoFO 0.15) s 2.0 2.0 (0.5 + off) ]
            let m = Frontier.matched Method.FullFT pts (Method.MoFO 0.15)
            // per seed: gaps 1 at x = 1 and 0.5 at x = 2, linear in between → mean 0.75 for both seeds
            Expect.floatClose Accuracy.high m.Mean 0.75 "mean advantage"
            Expect.floatClose Accuracy.high m.BandLow 0.75 "no spread over seeds"
            Expect.equal (m.PerSeed |> List.length) 2 "two seeds"
        }

        test "Dsl.Frontier.dominatedBy: a point is beaten when one of the same seed has both a lower loss and less forgetting" {
            let p m seed x y : Frontier.Point = { Method = m; Lr = 1.0; Seed = seed; Learn = x; Forget = y; Run = run "" None [] }
            let lora = Method.LoRA (2, None)
            let pts = [ p (Method.MoFO 0.15) 0 1.0 1.0; p lora 0 2.0 2.0; p lora 0 0.5 3.0; p lora 1 2.0 2.0 ]
            let beaten, mine = Frontier.dominatedBy (Method.MoFO 0.15) pts lora
            Expect.equal mine.Length 3 "LoRA's points"
            Expect.equal (beaten |> List.map (fun q -> q.Learn, q.Forget, q.Seed)) [ 2.0, 2.0, 0 ] "only the seed-0 point worse on both axes"
        }

        test "Dsl.Stats.spearman: ranks with ties at their mean rank; ρ by hand; a seeded bootstrap band around it" {
            Expect.equal (Stats.ranks [ 3.0; 1.0; 2.0; 1.0 ]) [ 4.0; 1.5; 3.0; 1.5 ] "ties share the mean rank"
            Expect.floatClose Accuracy.high (Stats.spearman [ 1.0, 10.0; 2.0, 20.0; 3.0, 30.0; 4.0, 40.0 ]) 1.0 "monotone: 1"
            Expect.floatClose Accuracy.high (Stats.spearman [ 1.0, 4.0; 2.0, 3.0; 3.0, 2.0; 4.0, 1.0 ]) -1.0 "reversed: -1"
            // ranks x 1 2 3 4 5, y 2 1 4 3 5: Σd² = 4, ρ = 1 − 6·4 / (5·24) = 0.8
            Expect.floatClose Accuracy.high (Stats.spearman [ 1.0, 0.2; 2.0, 0.1; 3.0, 0.4; 4.0, 0.3; 5.0, 0.5 ]) 0.8 "by hand"
            Expect.floatClose Accuracy.high (Stats.spearman [ 1.0, 0.2; 2.0, nan; 3.0, 0.4 ]) 1.0 "a non-finite pair is left out"
            let pairs = [ for i in 1 .. 30 -> float i, float i + 8.0 * sin (float i) ]
            let rho, lo, hi = Stats.spearmanBand pairs 500 1
            Expect.isTrue (lo <= rho && rho <= hi && lo < hi) $"the band [{lo:F3}, {hi:F3}] holds ρ {rho:F3}"
            Expect.equal (Stats.spearmanBand pairs 500 1) (rho, lo, hi) "seeded: the same band again"
        }

        test "Dsl.Claims.trend: Spearman's ρ over the sweep decides" {
            let runs = [ for a, v in [ 0.05, 1.0; 0.1, 1.2; 0.2, 1.1; 0.4, 1.5; 0.8, 2.0 ] -> a, run "" (Some (Method.MoFO a)) [ Measure.PretrainProxy, v ] ]
            let c = Claims.trend "rises" Measure.PretrainProxy true runs
            Expect.isTrue c.Holds c.Detail      // ρ = 0.9
            Expect.stringContains c.Detail "ρ = 0.90" "the statistic is reported"
            Expect.isFalse (Claims.trend "falls" Measure.PretrainProxy false runs).Holds "the opposite claim fails"
        }

        test "Dsl.Claims: forgetsLess reads the direction of the measure; distanceFraction compares distances" {
            let b = run "base" None [ Measure.PretrainProxy, 1.0; Measure.StoryCloze, 0.6; Measure.Distance, 0.0 ]
            let a = run "MoFO" (Some (Method.MoFO 0.15)) [ Measure.PretrainProxy, 1.5; Measure.StoryCloze, 0.5; Measure.Distance, 2.0 ]
            let f = run "Full FT" (Some Method.FullFT) [ Measure.PretrainProxy, 2.0; Measure.StoryCloze, 0.55; Measure.Distance, 10.0 ]
            Expect.isTrue (Claims.forgetsLess Measure.PretrainProxy b a f).Holds "lower NLL rise is less forgetting"
            Expect.isFalse (Claims.forgetsLess Measure.StoryCloze b a f).Holds "a larger accuracy drop is more forgetting"
            Expect.isTrue (Claims.distanceFraction a f 0.25).Holds "20 % ≤ 25 %"
            Expect.isFalse (Claims.distanceFraction a f 0.1).Holds "20 % > 10 %"
        }

        test "Dsl.Table: the paper's layout with deltas to the base; a mean column skips unavailable measures" {
            let b = run "base" None [ Measure.ArcEasy, 0.25; Measure.ArcChallenge, 0.20; Measure.HellaSwag, nan ]
            let r = run "MoFO" (Some (Method.MoFO 0.15)) [ Measure.ArcEasy, 0.30; Measure.ArcChallenge, 0.20; Measure.HellaSwag, nan ]
            let t = { Title = "t"; Columns = [ Column.Of Measure.ArcEasy; Columns.commonsense ]; Base = Some b; Rows = [ r ] }
            let md = Table.markdown t
            Expect.stringContains md "| base | 25.0 | 22.5 |" "base row in % (commonsense = mean of the two ARC columns)"
            Expect.stringContains md "| MoFO | 30.0 (+5.00) | 25.0 (+2.50) |" "deltas to the base (changes in points with 2 decimals, as the paper prints them)"
            let rows = Table.rows t
            let row = rows |> List.find (fun x -> x.Method = "MoFO")
            let mofo = Map.ofList row.Metrics
            Expect.floatClose Accuracy.high mofo["delta_commonsense"] 2.5 "the JSON rows carry the deltas, under machine keys"
            Expect.equal ((Map.ofList row.Names).["delta_commonsense"]) "Δ Commonsense" "with their display names beside them"
            Expect.equal row.Key "test:MoFO" "keyed by the run"
        }

        test "Dsl.Study.config: a missing config, an unknown field, a missing key and a missing path each name what is wrong" {
            let dir = tempDir ()
            let o = { Results.Options.defaults () with Scale = "paper"; Config = Some (Path.Combine(dir, "nope.json")) }
            let e = throwsWith<MoFO.MissingAssetException> (fun () -> Study.context o |> ignore)
            Expect.stringContains e.Message "nope.json" "names the config file"
            Expect.stringContains e.Message "llama2_7b" "lists the keys"
            let cfg = Path.Combine(dir, "paper.json")
            File.WriteAllText(cfg, """{ "llama2": "x" }""")
            let e2 = throwsWith<MoFO.Data.DataFormatException> (fun () -> Study.context { o with Config = Some cfg } |> ignore)
            Expect.stringContains e2.Message "llama2" "names the unknown field"
            File.WriteAllText(cfg, """{ "pythia160m": "missing-folder" }""")
            let c = Study.context { o with Config = Some cfg }
            let e3 = throwsWith<MoFO.MissingAssetException> (fun () -> Study.model c Study.Llama2_7b |> ignore)
            Expect.stringContains e3.Message "'llama2_7b'" "names the key the config lacks"
            Expect.stringContains e3.Message cfg "and the config file"
            let e4 = throwsWith<MoFO.MissingAssetException> (fun () -> Study.model c Study.Pythia160m |> ignore)
            Expect.stringContains e4.Message (Path.Combine(dir, "missing-folder")) "names the missing path (relative to the config)"
        }

        test "Dsl.Repro: paper scale without a config exits 3 naming the file; an unknown script argument exits 2" {
            let dir = tempDir ()
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "repro"; "table3"; "--scale"; "paper"; "--config"; Path.Combine(dir, "paper.json"); "--out"; dir |])
            Expect.equal code 3 "missing asset"
            Expect.stringContains err "paper.json" "names the config file"
            let code2, _, err2 = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "repro"; "table2"; "--steps"; "3" |])
            Expect.equal code2 2 "bad argument"
            Expect.stringContains err2 "--steps" "names the argument"
            let code3, _, err3 = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "repro"; "table9" |])
            Expect.equal code3 2 "unknown reproduction"
            Expect.stringContains err3 "table9" "names it"
        }

        test "Dsl.Repro: every paper-repro script names a reproduction the CLI knows, and every reproduction has a script" {
            let scripts = Directory.GetFiles(Path.Combine(repoRoot, "paper-repro"), "*.fsx") |> Array.map Path.GetFileNameWithoutExtension |> Set.ofArray
            for n in MoFO.Dsl.Repro.All.names do
                Expect.isTrue (scripts.Contains n) $"paper-repro/{n}.fsx exists"
                let text = File.ReadAllText(Path.Combine(repoRoot, "paper-repro", n + ".fsx"))
                Expect.isTrue (text.Contains $"\"{n}\"" && text.Contains "#load \"../scripts/MoFO.fsx\"") $"{n}.fsx runs reproduction {n}"
            Expect.isTrue (scripts.Contains "all") "all.fsx"
            // each script spells out its pipeline (it is the definition `mofo repro` runs), not a call into compiled code
            for n in MoFO.Dsl.Repro.All.names do
                let text = File.ReadAllText(Path.Combine(repoRoot, "paper-repro", n + ".fsx"))
                Expect.isTrue (text.Contains "Cli.Main.study" && text.Contains "finish c") $"{n}.fsx runs its own study"
                Expect.isFalse (text.Contains "Cli.Main.script") $"{n}.fsx does not delegate to compiled code"
            let table3 = File.ReadAllText(Path.Combine(repoRoot, "paper-repro", "table3.fsx"))
            Expect.stringContains table3 "let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.15 ]" "Table 3 names the methods it compares"
        }

        testSequenced <| test "Dsl.Experiment: a run is cached; an interrupted run resumes to the same weights as an uninterrupted one" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let e = smokeExperiment 6 [ Measure.TaskLoss; Measure.Distance ]
            let weights (dir: string) = File.ReadAllBytes(Path.Combine(dir, "model", "model.safetensors"))
            let straight =
                withCache (fun _ ->
                    let r = Experiment.run e
                    let stamp = File.GetLastWriteTimeUtc(Path.Combine(r.Dir, "train_summary.json"))
                    let again = Experiment.run e
                    Expect.equal (File.GetLastWriteTimeUtc(Path.Combine(again.Dir, "train_summary.json"))) stamp "the second run comes from the cache"
                    Expect.equal again.Values r.Values "same values"
                    Expect.isTrue (r[Measure.Distance] > 0.0) "the model moved"
                    // the run's measures also in lm-evaluation-harness's format (the distance is not a harness task)
                    use h = JsonDocument.Parse(File.ReadAllText(Path.Combine(r.Dir, "lm_eval_results.json")))
                    Expect.equal (h.RootElement.GetProperty("results").GetProperty("task_loss").GetProperty("task_loss,none").GetDouble()) r[Measure.TaskLoss] "the task loss"
                    weights r.Dir)
            let resumed =
                withCache (fun _ ->
                    // interrupt the same experiment after 3 steps, as a Ctrl-C would
                    let dir = Experiment.runDir e
                    let trainSet, task = Experiment.load e.Data e.Recipe.MaxLength
                    use cts = new Threading.CancellationTokenSource()
                    (use model = MoFO.Models.ModelLoader.Load(e.Model.Path)
                     let trainer = MoFO.Training.Trainer(model, ResizeArray trainSet, ResizeArray task.HeldOut, Experiment.options e false, dir)
                     trainer.OnStep <- Action<_>(fun m -> if m.Step = 3 then cts.Cancel())
                     let r = trainer.Run(false, cts.Token)
                     Expect.isTrue r.Interrupted "interrupted after step 3")
                    let r = Experiment.run e
                    Expect.equal r.Train.Value.Steps 6 "finished all steps"
                    weights r.Dir)
            Expect.isTrue (straight = resumed) "bit-identical weights after resume"
        }

        testSequenced <| test "Dsl.Experiment.merged: two fine-tunes merged by TIES and measured like a run, cached in the first run's folder; weights that do not match and another base are refused" {
            let stories = requireAsset MoFO.DataRoot.Assets.Stories260K
            let e = smokeExperiment 3 [ Measure.Distance ]
            let other = Experiment.withMethod Method.FullFT e
            withCache (fun cache ->
                let r = Experiment.merged (Merge.Ties 0.5) [ other ] e
                let first = Experiment.runWith false e
                Expect.stringStarts r.Dir (Path.Combine(first.Dir, "merge-ties-d0.5-")) "kept in the experiment's run folder"
                Expect.isTrue (File.Exists(Path.Combine(r.ModelPath, "config.json"))) "an HF folder"
                Expect.stringEnds r.Label " · TIES d=0.5" "the label names the rule"
                Expect.stringContains r.Label $"{first.Label} + " "and the runs, the experiment's first"
                Expect.notEqual r.Key first.Key "its own key"
                Expect.isGreaterThan r[Measure.Distance] 0.0 "the merged model moved from the base"
                let stamp = File.GetLastWriteTimeUtc(Path.Combine(r.ModelPath, "model.safetensors"))
                let again = Experiment.merged (Merge.Ties 0.5) [ other ] e
                Expect.equal (File.GetLastWriteTimeUtc(Path.Combine(again.ModelPath, "model.safetensors"))) stamp "the merge comes from the cache"
                Expect.equal again.Values r.Values "the same measures"
                let dare = Experiment.merged (Merge.Dare (0.5, 0)) [ other ] e
                Expect.notEqual dare.Dir r.Dir "another rule, another folder"
                let err = throwsWith<ArgumentException> (fun () -> Experiment.merged (Merge.TaskArithmetic [ 1.0 ]) [ other ] e |> ignore)
                Expect.stringContains err.Message "1 weight for 2 fine-tuned models" "one weight per fine-tune"
                let copy = Path.Combine(cache, "copy.bin")
                File.Copy(stories, copy)
                let err = throwsWith<ArgumentException> (fun () -> Experiment.merged (Merge.Ties 0.2) [ { other with Model = ModelSource.Llama2c copy } ] e |> ignore)
                Expect.stringContains err.Message "copy.bin is not stories260K" "another base model is named")
        }

        testSequenced <| test "Dsl.Experiment.baseline: the base model's task measures are cached per task, not shared between tasks" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let e = smokeExperiment 3 [ Measure.TaskLoss ]
            withCache (fun _ ->
                let dpr = Experiment.baseline e
                let math = Experiment.baseline { e with Data = Dataset.MetaMathQA None }
                let dprAgain = Experiment.baseline e
                Expect.notEqual math[Measure.TaskLoss] dpr[Measure.TaskLoss] "two tasks, two held-out losses"
                Expect.equal dprAgain[Measure.TaskLoss] dpr[Measure.TaskLoss] "the cache returns each task's own")
        }

        testSequenced <| test "Dsl.Experiment.runAll: parallel points equal sequential ones" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let e = smokeExperiment 3 [ Measure.TaskLoss ]
            let es = e |> Experiment.compare [ Method.FullFT; Method.MoFO 0.15 ]
            let par =
                withCache (fun _ ->
                    Environment.SetEnvironmentVariable("MOFO_PARALLEL", "2")
                    try Experiment.runAll es |> List.map (fun r -> r.Label, r[Measure.TaskLoss])
                    finally Environment.SetEnvironmentVariable("MOFO_PARALLEL", null))
            let seq' =
                withCache (fun _ ->
                    Environment.SetEnvironmentVariable("MOFO_PARALLEL", "1")
                    try Experiment.runAll es |> List.map (fun r -> r.Label, r[Measure.TaskLoss])
                    finally Environment.SetEnvironmentVariable("MOFO_PARALLEL", null))
            Expect.equal (par |> List.map fst) [ "Full FT"; "MoFO (α=15%)" ] "in order"
            for (_, a), (_, b) in List.zip par seq' do
                Expect.floatClose { absolute = 1e-5; relative = 1e-5 } a b "same held-out loss with one intra-op thread"
        }
    ]

/// The CI configuration of every reproduction: a few steps and tiny evaluation subsets (--smoke), so that a broken
/// pipeline fails the tests. Each writes the three result files of the output contract.
[<Tests>]
let smoke =
    testSequenced <| testList "Repro.Smoke" [
        yield testCase "Repro.Smoke.edited: a researcher adds LoRA to the methods of table3.fsx (the definition mofo repro runs) and runs it: a LoRA row appears" <| fun () ->
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let original = Path.Combine(repoRoot, "paper-repro", "table3.fsx")
            let text = File.ReadAllText original
            let methods = "let methods = [ Method.FullFT; Method.HFT; Method.L1 1e-6; Method.L2 1e-3; Method.MoFO 0.15 ]"
            Expect.stringContains text methods "the methods line"
            let edited = Path.Combine(repoRoot, "paper-repro", $".edited-{Guid.NewGuid():N}.fsx")
            File.WriteAllText(edited, text.Replace(methods, methods.Replace("Method.MoFO 0.15 ]", "Method.MoFO 0.15; Method.LoRA (8, None) ]")))
            try
                withCache (fun cache ->
                    let out = Path.Combine(cache, "results")
                    let psi = Diagnostics.ProcessStartInfo("dotnet", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
                    for a in [ "fsi"; "--quiet"; edited; "--smoke"; "--out"; out ] do psi.ArgumentList.Add a
                    use p = Diagnostics.Process.Start psi
                    let err = p.StandardError.ReadToEndAsync()
                    let stdout = p.StandardOutput.ReadToEnd()
                    p.WaitForExit()
                    Expect.equal p.ExitCode 0 $"exit code; {err.Result}"
                    use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "table3.json")))
                    let labels = [ for r in doc.RootElement.GetProperty("rows").EnumerateArray() -> r.GetProperty("method").GetString() ]
                    Expect.equal labels.Length 7 $"base + 6 methods: {labels}"
                    Expect.isTrue (labels |> List.exists (fun l -> l.StartsWith "LoRA")) $"a LoRA row: {labels}; {stdout}")
            finally File.Delete edited
        for name in MoFO.Dsl.Repro.All.names |> List.filter (fun n -> n <> "table3") do
          yield
            test $"Repro.Smoke.{name}: runs with --smoke and writes results/{name}.json, .md and .html" {
                requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
                withCache (fun cache ->
                    let out = Path.Combine(cache, "results")
                    let code, stdout, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "repro"; name; "--smoke"; "--out"; out |])
                    Expect.equal code 0 $"exit code; stderr: {err}"
                    for ext in [ ".json"; ".md"; ".html" ] do
                        Expect.isTrue (File.Exists(Path.Combine(out, name + ext))) $"{name}{ext} written"
                    use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, name + ".json")))
                    let root = doc.RootElement
                    Expect.equal (root.GetProperty("name").GetString()) name "name"
                    Expect.equal (root.GetProperty("scale").GetString()) "tiny" "scale"
                    Expect.isGreaterThan (root.GetProperty("rows").GetArrayLength()) 0 "rows"
                    Expect.isGreaterThan (root.GetProperty("checks").GetArrayLength()) 0 "checks"
                    Expect.stringContains stdout "wrote" "prints where it wrote")
            }
        yield test "Repro.Smoke.fsi: dotnet fsi paper-repro/table2.fsx --smoke runs the same pipeline from a script (building MoFO.NET first when needed)" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            withCache (fun cache ->
                let out = Path.Combine(cache, "results")
                let code, stdout, err = runProcess "dotnet" [ "fsi"; "--quiet"; "paper-repro/table2.fsx"; "--smoke"; "--out"; out ] repoRoot (TimeSpan.FromMinutes 10.0)
                Expect.equal code 0 $"exit code; stderr: {err}"
                Expect.stringContains stdout "table2" "prints the table"
                Expect.isTrue (File.Exists(Path.Combine(out, "table2.json"))) "writes the JSON")
        }
    ]

/// A run's identity is what differs: labels name what tells runs apart, results are keyed by run, and two rows with
/// one label are an error.
[<Tests>]
let identity =
    testList "Dsl.identity" [
        test "Dsl.identity.labels: a 2 × 2 sweep over learning rates and methods is labelled by method and rate; seeds and LoRA's effective rate show where they differ; withLabel overrides" {
            let e = smokeExperiment 3 []
            let sweep = [ for lr in [ 3e-4; 1e-3 ] do for m in [ Method.FullFT; Method.MoFO 0.15 ] -> e |> Experiment.withLr lr |> Experiment.withMethod m ]
            Expect.equal (Labels.distinguish sweep)
                [ "Full FT · lr 0.0003"; "MoFO (α=15%) · lr 0.0003"; "Full FT · lr 0.001"; "MoFO (α=15%) · lr 0.001" ] "method and rate"
            Expect.equal (Labels.distinguish (Experiment.compare [ Method.FullFT; Method.MoFO 0.15 ] e)) [ "Full FT"; "MoFO (α=15%)" ] "nothing else differs: the method alone"
            Expect.equal (Labels.distinguish ([ e; e ] |> Experiment.seeds [ 0; 1 ] |> List.distinct)) [ "MoFO (α=15%) · seed 0"; "MoFO (α=15%) · seed 1" ] "seeds"
            let lora = Method.LoRA (8, None)
            let loras = [ 1e-4; 1e-3 ] |> List.map (fun lr -> e |> Experiment.withMethod lora |> Experiment.withLr lr)
            Expect.equal (Labels.distinguish loras) [ $"{lora.Label} · lr 0.001"; $"{lora.Label} · lr 0.01" ] "LoRA at its effective rate (10× the recipe's)"
            Expect.stringContains (Experiment.runDir loras[1]) "-lr0.01-" "and its run folder is named by it"
            Expect.equal (Labels.distinguish [ Experiment.withLabel "mine" sweep[0]; sweep[1] ]) [ "mine"; "MoFO (α=15%)" ] "an own label stays; the rest are told apart among themselves"
        }

        test "Dsl.identity.duplicate: two rows with one label are an error naming both runs; the same run twice is one row" {
            let a = Results.rowOf "runs/a-123" "Full FT" [ "task_loss", "Task loss", 1.0 ]
            let b = Results.rowOf "runs/b-456" "Full FT" [ "task_loss", "Task loss", 2.0 ]
            let ex = try Results.distinctRows [ a; b ] |> ignore; "" with :? ArgumentException as x -> x.Message
            Expect.stringContains ex "runs/a-123" "names the first run"
            Expect.stringContains ex "runs/b-456" "and the second"
            Expect.stringContains ex "Experiment.withLabel" "and how to tell them apart"
            Expect.equal (Results.distinctRows [ a; a ]) [ a ] "one run twice: one row"
        }

        test "Dsl.identity.scriptErrors: errors in a script name the script's words (Recipe.Lr), not a flag; a missing data file is named by its full path" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let dir = tempDir ()
            let runScript (body: string) =
                let path = Path.Combine(dir, $"s{Guid.NewGuid():N}.fsx")
                let mofo = Path.Combine(repoRoot, "scripts", "MoFO.fsx").Replace("\\", "/")
                File.WriteAllText(path, $"#load \"{mofo}\"\nopen MoFO.Dsl\nexit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->\n{body}\n    0))\n")
                let psi = Diagnostics.ProcessStartInfo("dotnet", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir)
                for a in [ "fsi"; "--quiet"; path ] do psi.ArgumentList.Add a
                use p = Diagnostics.Process.Start psi
                let out = p.StandardOutput.ReadToEndAsync()
                let err = p.StandardError.ReadToEnd()
                p.WaitForExit()
                p.ExitCode, err + out.Result
            let code, err =
                runScript "    let r = { Recipe.Default with Lr = -1e-3; Steps = Some 1 }\n    Experiment.run (Experiment.create ModelSource.Stories260K Dataset.Dpr Method.FullFT r [ Measure.TaskLoss ] Scale.Tiny 0) |> ignore"
            Expect.equal code 2 $"a usage error; {err}"
            Expect.stringContains err "mofo: Recipe.Lr -0.001: must be" "the recipe's field, as the script spells it"
            Expect.isFalse (err.Contains "--lr") "not the command line's flag"
            let code, err =
                runScript "    let d = Dataset.File(\"mine\", \"no/such.jsonl\", MoFO.Data.DataFormat.Jsonl, None)\n    Experiment.run (Experiment.create ModelSource.Stories260K d Method.FullFT { Recipe.Default with Steps = Some 1 } [ Measure.TaskLoss ] Scale.Tiny 0) |> ignore"
            Expect.equal code 3 $"a missing file; {err}"
            Expect.stringContains err (Path.Combine(dir, "no", "such.jsonl")) "its full path"
        }

        testSequenced <| test "Dsl.identity.sweep: a newcomer's 2 × 2 sweep, without relabelling, writes five rows (base + 4) with distinct labels that show the learning rate" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let e = smokeExperiment 2 [ Measure.TaskLoss ]
            withCache (fun cache ->
                let runs = [ for lr in [ 3e-4; 1e-3 ] do for m in [ Method.FullFT; Method.MoFO 0.15 ] -> e |> Experiment.withLr lr |> Experiment.withMethod m ] |> Experiment.runAll
                let table = { Title = "2 × 2"; Columns = [ Column.Of Measure.TaskLoss ]; Base = Some (Experiment.baseline e); Rows = runs }
                let out = Path.Combine(cache, "results")
                let o = { Results.Options.defaults () with OutDir = out }
                let c = Study.context o
                let code = Study.finish c { Study.output "sweep" "A 2 × 2 sweep" with Tables = [ table ] }
                Expect.equal code 0 "written"
                use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "sweep.json")))
                let rows = [ for r in doc.RootElement.GetProperty("rows").EnumerateArray() -> r.GetProperty("method").GetString(), r.GetProperty("key").GetString() ]
                Expect.equal rows.Length 5 "base + 4 rows"
                Expect.equal (rows |> List.map fst |> List.distinct |> List.length) 5 $"distinct labels: {rows}"
                Expect.equal (rows |> List.map snd |> List.distinct |> List.length) 5 "distinct keys"
                for label, _ in rows |> List.tail do Expect.stringContains label "lr " $"{label} shows its learning rate"
                let metrics = doc.RootElement.GetProperty("rows").[1].GetProperty("metrics")
                Expect.isTrue (metrics.TryGetProperty "task_loss" |> fst) "metrics under the measure's key"
                Expect.equal (doc.RootElement.GetProperty("metricNames").GetProperty("task_loss").GetString()) Measure.TaskLoss.Name "its name beside it")
        }
    ]
