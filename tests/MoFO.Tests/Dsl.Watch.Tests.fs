/// Forgetting watched from the DSL: `Experiment.withWatch` / `withBudget`, the curve and the budget as run fields, the
/// frontier's best task loss within a budget (against a hand computation), the watch curve in the run's report.
module MoFO.Tests.DslWatch

open System
open System.IO
open Expecto
open MoFO.Dsl
open MoFO.Training
open MoFO.Tests.Fixtures

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), $"mofo-dslwatch-{Guid.NewGuid():N}")
    Directory.CreateDirectory d |> ignore
    d

let private withCache (f: unit -> 'a) =
    let dir = tempDir ()
    let old = Environment.GetEnvironmentVariable "MOFO_CACHE"
    Environment.SetEnvironmentVariable("MOFO_CACHE", dir)
    try f ()
    finally
        Environment.SetEnvironmentVariable("MOFO_CACHE", old)
        try Directory.Delete(dir, true) with _ -> ()

/// A run folder as a watched run leaves it: watch/base.json and metrics.jsonl with a watch at each given step
/// (step, training loss, held-out loss, pretrain-proxy value).
let private watchedDir (baseProxy: float) (baseHeldOut: float) (watches: (int * float * float * float) list) =
    let dir = tempDir ()
    Directory.CreateDirectory(Path.Combine(dir, "watch")) |> ignore
    File.WriteAllText(Path.Combine(dir, "watch", "base.json"), $"""{{"pretrain-proxy": {baseProxy}, "{ForgettingWatch.HeldOutKey}": {baseHeldOut}}}""")
    let lines =
        [ for step, train, held, proxy in watches ->
            RunFolder.MetricsLine(StepMetrics(step, 0, train, 1e-3, 1.0, Nullable(), 0.1, 100L, 1.0, false, Nullable(),
                                              readOnlyDict [ "pretrain-proxy", proxy; ForgettingWatch.HeldOutKey, held ], Nullable 0.5)) ]
    File.WriteAllLines(Path.Combine(dir, "metrics.jsonl"), lines)
    dir

let private run (dir: string) (m: Method) : Run =
    { Label = m.Label; Key = "test:" + dir; Method = Some m; ModelPath = ""; BasePath = ""; Dir = dir; Values = Map.empty; Train = None; Seed = 0 }

[<Tests>]
let tests =
    testList "Dsl.watch" [
        test "Dsl.watch.curve: Run.Watch reads the base at step 0 and every watch, with the rise over the base" {
            let dir = watchedDir 1.5 2.0 [ 10, 1.9, 1.8, 1.6; 20, 1.7, 1.6, 1.9 ]
            let r = run dir Method.FullFT
            let w = r.Watch
            Expect.equal (w |> List.map (fun p -> p.Step)) [ 0; 10; 20 ] "the base, then each watch"
            Expect.equal (w |> List.map (fun p -> p.HeldOutLoss.Value)) [ 2.0; 1.8; 1.6 ] "the held-out loss at each"
            Expect.floatClose Accuracy.veryHigh w[2].Rise["pretrain-proxy"] 0.4 "the rise over the base"
            Expect.equal w[0].Rise["pretrain-proxy"] 0.0 "none at the base"
            Expect.isFalse (w |> List.exists (fun p -> p.Values.ContainsKey ForgettingWatch.HeldOutKey || p.Rise.ContainsKey ForgettingWatch.HeldOutKey)) "the held-out loss is not a watched measure"
            Expect.isEmpty (run (tempDir ()) Method.FullFT).Watch "a run that watched nothing has no curve"
            Expect.isNone r.Budget "no budget stopped it"
        }

        test "Dsl.watch.frontier: the best task loss within a forgetting budget per seed, over learning rates and watches, equals a hand computation" {
            // two learning rates of one method and seed: the low rate forgets slowly, the high one fast
            let slow = watchedDir 1.0 3.0 [ 10, 2.5, 2.6, 1.02; 20, 2.2, 2.3, 1.06; 30, 2.0, 2.1, 1.12 ]
            let fast = watchedDir 1.0 3.0 [ 10, 2.0, 2.0, 1.08; 20, 1.5, 1.7, 1.25; 30, 1.2, 1.5, 1.40 ]
            let m = Method.MoFO 0.15
            let point lr seed dir learn forget : Frontier.Point = { Method = m; Lr = lr; Seed = seed; Learn = learn; Forget = forget; Run = run dir m }
            // seed 1 was not watched: its final models alone are candidates
            let unwatched = tempDir ()
            let points =
                [ point 1e-4 0 slow 2.1 0.12; point 1e-3 0 fast 1.5 0.40
                  point 1e-4 1 unwatched 2.2 0.09; point 1e-3 1 unwatched 1.4 0.5 ]
            // budget 0.1: seed 0 — slow@20 (2.3, rise 0.06), fast@10 (2.0, rise 0.08) → 2.0 at lr 1e-3 step 10; seed 1 — 2.2 (0.09)
            // (the rates are the recipe's times MoFO's factor, 1)
            let b = Frontier.withinBudget 0.1 points m
            Expect.equal b.PerSeed [ 0, Some (2.0, 1e-3, 10); 1, Some (2.2, 1e-4, 0) ] "per seed: the loss, the rate and the step"
            Expect.floatClose Accuracy.veryHigh b.Mean 2.1 "the mean over seeds"
            // budget 0.01: seed 0 keeps only the base (step 0, held-out 3.0); seed 1 has none
            let tight = Frontier.withinBudget 0.01 points m
            Expect.equal tight.PerSeed [ 0, Some (3.0, 1e-4, 0); 1, None ] "the base is what a tight budget keeps"
            Expect.equal tight.Mean 3.0 "the mean over the seeds that have one"
            let md = FrontierReport.budgetTable [ b; tight ]
            Expect.stringContains md "Δ proxy ≤ 0.1" "a column per budget"
            Expect.stringContains md "2.1000" "the mean in its cell"
            Expect.stringContains md "s0: the base" "step 0 is the base"
            // an adapter's rate is the one it ran at (10× the recipe's)
            let lora = Method.LoRA (8, None)
            let adapter = Frontier.withinBudget 0.1 [ { point 1e-4 0 slow 2.1 0.12 with Method = lora; Run = run slow lora } ] lora
            Expect.equal adapter.PerSeed [ 0, Some (2.3, 1e-3, 20) ] "LoRA at 10× the recipe's rate"
        }

        testSequenced <| test "Dsl.watch.budget: Experiment.withBudget stops the run and keeps the model within it; the budget is part of the run's identity and label" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let recipe = { Recipe.Paper with Lr = 1e-3; Steps = Some 40; BatchSize = 4; MicroBatchSize = 4; MaxLength = 96; Schedule = MoFO.Training.Schedule.Constant }
            let settings = { Settings.Tiny with Samples = 12; SampleTokens = 100; TaskLimit = Some 8; Cache = tempDir () }
            let e = { Experiment.create ModelSource.Stories260K Dataset.Dpr (Method.MoFO 0.15) recipe [ Measure.TaskLoss ] Scale.Tiny 0 with Settings = settings }
            let budgeted = e |> Experiment.withWatch [ Watch.Distance ] 4 |> Experiment.withBudget Watch.PretrainProxy 0.3
            Expect.equal budgeted.Watch.Measures [ Watch.Distance; Watch.PretrainProxy ] "the budget's measure is watched too"
            Expect.notEqual (Experiment.runDir budgeted) (Experiment.runDir e) "a budget is part of the run's identity"
            Expect.notEqual (Experiment.runDir (e |> Experiment.withWatch [ Watch.Distance ] 4)) (Experiment.runDir e) "so is a watch (its curve is in the folder)"
            let labels = Labels.distinguish [ e; budgeted ]
            Expect.stringContains labels[1] "budget pretrain-proxy 0.3" "the label shows the budget"
            withCache (fun () ->
                let r = Experiment.run budgeted
                let stop = Expect.wantSome r.Budget "the budget stopped the run"
                Expect.equal stop.Measure "pretrain-proxy" "its measure"
                Expect.isLessThan r.Train.Value.Steps 40 "before the last step"
                Expect.equal (r.Watch |> List.map (fun w -> w.Step)) [ 0 .. 4 .. stop.Step ] "the curve: the base and each watch up to the stop"
                let kept = r.Watch |> List.find (fun w -> w.Step = stop.KeptStep)
                Expect.isGreaterThan stop.KeptStep 0 "a trained model is kept"
                Expect.isLessThanOrEqual kept.Rise["pretrain-proxy"] 0.3 "the kept model is within the budget"
                Expect.isGreaterThan (r.Watch |> List.last).Rise["pretrain-proxy"] 0.3 "the last watch is over it"
                Expect.isTrue (r.Watch |> List.forall (fun w -> w.HeldOutLoss.HasValue && w.Values.ContainsKey "distance")) "the held-out loss and every measure at each watch"
                let again = Experiment.run budgeted
                Expect.equal again.Budget r.Budget "the cached run reads the same budget stop")
        }

        test "Dsl.watch.report: the run's report draws the watch curve (forgetting over steps, learning against forgetting) and writes it to report.json" {
            let dir = watchedDir 1.5 2.0 [ 10, 1.9, 1.8, 1.6; 20, 1.7, 1.6, 1.9 ]
            let report : Report.ForgettingReport =
                { BaseModel = "base"; FineTunedModel = "tuned"; Suite = Report.Suite.Tiny; Parameters = 1L; Task = None; Rows = []
                  PerTensorL2 = [ "w", 1.0 ]; PerLayerL2 = [ "layer 0", 1.0 ]; Steps = RunFolder.ReadMetrics(Path.Combine(dir, "metrics.jsonl")) |> List.ofSeq
                  MetricsFile = Some (Path.Combine(dir, "metrics.jsonl")); Watch = ForgettingWatch.Curve dir |> List.ofSeq; ElapsedSeconds = 0.0; JsonPath = ""; HtmlPath = "" }
            let html = Report.toHtml report
            Expect.stringContains html "Forgetting watched while training" "the rise over steps"
            Expect.stringContains html "Learning against forgetting over steps" "learning against forgetting"
            let json = Report.toJson report
            Expect.stringContains json "\"heldOutLoss\": 1.6" "the curve in report.json"
        }
    ]
