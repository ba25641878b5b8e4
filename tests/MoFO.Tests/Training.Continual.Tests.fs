module MoFO.Tests.Training.Continual.Tests

open System
open System.IO
open Expecto
open TorchSharp
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures

let private nan = Double.NaN

/// Two tiny synthetic tasks: answer a fixed word after a task-specific cue.
let private task name (cue: string) (answer: string) n =
    let ex i = TrainingExample.PromptCompletion($"{cue} {i}:", " " + answer, $"{name}/{i}")
    ContinualTask(name, [ for i in 0 .. n - 1 -> ex i ], [ for i in n .. n + 7 -> ex i ], 1)

[<Tests>]
let tests =
    testList "Training.Continual" <| [
        test "OP and BWT on a hand-checked matrix" {
            let r = [| [| 0.8; nan; nan |]; [| 0.6; 0.9; nan |]; [| 0.5; 0.7; 0.95 |] |]
            Expect.floatClose Accuracy.veryHigh (ContinualMetrics.OP r) ((0.5 + 0.7 + 0.95) / 3.0) "OP = mean of the last row"
            Expect.floatClose Accuracy.veryHigh (ContinualMetrics.BWT r) (((0.5 - 0.8) + (0.7 - 0.9)) / 2.0) "BWT = -0.25"
            Expect.equal (ContinualMetrics.BWT [| [| 0.7 |] |]) 0.0 "one task: no backward transfer"
        }

        test "GEM, one constraint: the closed-form projection" {
            let g = torch.tensor([| 1.0; -2.0 |])
            let s = torch.tensor([| 0.0; 1.0 |])
            let p, _ = GemProjection.ProjectVector(g, [| s |])
            Expect.sequenceEqual (p.data<float>().ToArray()) [| 1.0; 0.0 |] "the violating component removed"
        }

        test "GEM, several constraints: the projected gradient has a non-negative inner product with every stored one" {
            torch.manual_seed 3L |> ignore
            for trial in 1 .. 20 do
                let n = 50
                let stored = [| for _ in 1 .. 4 -> torch.randn([| int64 n |], dtype = torch.float64) |]
                let g = torch.randn([| int64 n |], dtype = torch.float64) - stored[0] * 2.0
                let p, changed = GemProjection.ProjectVector(g, stored)
                Expect.isTrue changed $"trial {trial}: the constructed gradient violates a constraint"
                for s in stored do
                    Expect.isGreaterThanOrEqual (p.dot(s).item<float>()) -1e-8 $"trial {trial}: p·g_k ≥ 0"
                // GEM's projection is the closest such vector: it moves less than the trivial feasible answer 0.
                Expect.isLessThanOrEqual ((p - g).norm().item<float>()) (g.norm().item<float>() + 1e-9) $"trial {trial}: closer than 0"
            let g = torch.tensor([| 1.0; 1.0 |])
            let same, changed = GemProjection.ProjectVector(g, [| torch.tensor([| 1.0; 0.0 |]) |])
            Expect.isFalse changed "no violation, no change"
            Expect.equal (same.data<float>().ToArray()) [| 1.0; 1.0 |] "unchanged"
        }

        test "replay mixes N seeded samples of every earlier task into later tasks" {
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            let tasks = [ task "a" "cue-a" "red" 20; task "b" "cue-b" "blue" 20; task "c" "cue-c" "green" 20 ]
            let runner = ContinualRunner(Model = lm, Tasks = tasks, Options = TrainingOptions(), OutputDir = "unused", ReplayPerTask = 5)
            Expect.equal (runner.TrainingSetFor 0).Count 20 "first task: its own data"
            let third = runner.TrainingSetFor 2
            Expect.equal third.Count 30 "20 + 5 + 5"
            Expect.equal (third |> Seq.filter (fun e -> e.Source.StartsWith "a/") |> Seq.length) 5 "5 from task a"
            Expect.equal (third |> Seq.filter (fun e -> e.Source.StartsWith "b/") |> Seq.length) 5 "5 from task b"
            Expect.equal [ for e in runner.TrainingSetFor 2 -> e.Source ] [ for e in third -> e.Source ] "seeded"
        }

      ] @ [
        for name, spec, lr in [ "MoFO", Methods.Parse "mofo", 2e-3; "LoRA", Methods.Parse("lora", lora = MoFO.Models.LoraSpec(Rank = 4)), 2e-2 ] ->
        test $"a two-task stream with {name} + GEM: R is filled, GEM's applied gradients respect every memory" {
            ConsoleProgress.Enabled <- false
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            let out = Directory.CreateTempSubdirectory("mofo-cl-").FullName
            let tasks = [ task "a" "cue-a" "red" 16; task "b" "cue-b" "blue" 16 ]
            let o = TrainingOptions(Method = spec, LearningRate = lr, BatchSize = 8, MaxLength = 32, ShowProgress = false, Schedule = Schedule.Constant)
            let runner = ContinualRunner(Model = lm, Tasks = tasks, Options = o, OutputDir = out, Metric = TaskMetric.AnswerLikelihood, GemMemoryPerTask = 4)
            let r = runner.Run()
            Expect.isFalse (Double.IsNaN(r.R[0][0])) "R[0,0]"
            Expect.isTrue (Double.IsNaN(r.R[0][1])) "R[0,1] is not defined"
            Expect.isFalse (Double.IsNaN(r.R[1][0]) || Double.IsNaN(r.R[1][1])) "last row"
            Expect.floatClose Accuracy.veryHigh r.OP ((r.R[1][0] + r.R[1][1]) / 2.0) "OP"
            Expect.floatClose Accuracy.veryHigh r.BWT (r.R[1][0] - r.R[0][0]) "BWT"
            let gem = runner.LastGem
            Expect.isNotNull (box gem) "GEM ran on the second task"
            Expect.equal gem.Steps 2 "one projection check per step (16 examples / batch 8)"
            Expect.isGreaterThanOrEqual gem.MinCosine -1e-6 "every applied gradient has a non-negative inner product with the memory gradient"
            Expect.isTrue (File.Exists(Path.Combine(out, "continual.json"))) "written"
        }
    ]
