/// Forgetting watched while training (ForgettingWatch): the measures in metrics.jsonl and TensorBoard, the KL against
/// the base's cached log-probabilities equal to the two-model KL, and the forgetting budget (its stop, the kept model
/// within the budget measured independently, resume).
module MoFO.Tests.TrainingWatch

open System
open System.IO
open Expecto
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private stories () = requireAsset DataRoot.Assets.Stories260K
let private dpr () = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr) |> Seq.truncate 400 |> Seq.toArray
let private heldOut () = InstructionData.Read(requireAsset DataRoot.Assets.DprTest, DataFormat.Dpr, dprTemplate = 0) |> Seq.truncate 32 |> Seq.toArray

let private options (steps: int) (lr: float) =
    TrainingOptions(Method = Methods.Parse "mofo", LearningRate = lr, Steps = Nullable steps, BatchSize = 8, MaxLength = 96,
                    Schedule = Schedule.Constant, ShowProgress = false)

/// The base value of the pretrain proxy and a model's, on the samples the watch wrote (measured here, apart from it).
let private proxyOf (lm: CausalLM) (runDir: string) =
    let texts = Forgetting.ReadSamples(Path.Combine(runDir, "watch", "base_samples.jsonl"))
    Forgetting.Loss(lm, texts).MeanTokenNll

[<Tests>]
let tests =
    testSequenced <| testList "Training.watch" [
        test "Training.watch.metrics: every watch writes each measure with its step and cost to metrics.jsonl and TensorBoard; the base is at step 0" {
            ConsoleProgress.Enabled <- false
            use lm = ModelLoader.Load(stories ())
            use dir = new TempDir()
            use board = new TempDir()
            let o = (options 30 1e-3).WithWatch([ "pretrain-proxy"; "kl-to-base"; "distance"; "arc-easy:20" ], 10, Collections.Generic.Dictionary<string, float>())
            let t = Trainer(lm, dpr (), heldOut (), o, dir.Path)
            t.TensorBoardDir <- board.Path
            let result = t.Run()
            let lines = RunFolder(dir.Path).ReadMetrics()
            let watched = lines |> Seq.filter (fun m -> not (isNull m.Forgetting)) |> Seq.toList
            Expect.equal (watched |> List.map (fun m -> m.Step)) [ 10; 20; 30 ] "a watch every 10 steps and at the end"
            for m in watched do
                Expect.equal (m.Forgetting.Keys |> Set.ofSeq) (Set.ofList [ "pretrain-proxy"; "kl-to-base"; "distance"; "arc-easy:20"; ForgettingWatch.HeldOutKey ]) $"step {m.Step}: every measure, and the held-out loss"
                Expect.isTrue (m.Forgetting["arc-easy:20"] >= 0.0 && m.Forgetting["arc-easy:20"] <= 100.0) $"step {m.Step}: an accuracy in points"
                Expect.isTrue (m.WatchSeconds.HasValue && m.WatchSeconds.Value > 0.0) $"step {m.Step}: the watch's cost"
                Expect.isGreaterThan m.Forgetting["kl-to-base"] 0.0 $"step {m.Step}: the model has moved from the base"
                Expect.floatClose Accuracy.high m.Forgetting["distance"] m.Distance.Value $"step {m.Step}: the distance the run logs"
            let baseValues = Text.Json.JsonSerializer.Deserialize<Collections.Generic.Dictionary<string, float>>(File.ReadAllText(Path.Combine(dir.Path, "watch", "base.json")))
            Expect.equal baseValues["kl-to-base"] 0.0 "the base's KL to itself"
            use b = ModelLoader.Load(stories ())
            Expect.floatClose Accuracy.high baseValues["pretrain-proxy"] (proxyOf b dir.Path) "the base's proxy, measured apart"
            let arc = Arc.Read(requireAsset DataRoot.Assets.ArcEasy) |> Seq.truncate 20 |> Seq.toList
            let acc = MultipleChoiceEvaluator().Evaluate(b, "arc_easy", arc).AccNorm
            Expect.floatClose Accuracy.veryHigh baseValues["arc-easy:20"] (100.0 * acc) "the base's ARC-Easy acc_norm on its first 20 items, in points"
            // the curve: the base at step 0 and each watch, with the held-out loss on the probe set (here all 32 held-out
            // examples: the base's, measured apart; the last watch's, the run's final held-out loss)
            let curve = ForgettingWatch.Curve dir.Path |> Seq.toList
            Expect.equal (curve |> List.map (fun w -> w.Step)) [ 0; 10; 20; 30 ] "the curve's steps"
            Expect.floatClose Accuracy.high curve[0].HeldOutLoss.Value (Trainer(b, dpr (), heldOut (), o, Path.Combine(dir.Path, "apart")).EvalLoss()) "the base's held-out loss"
            Expect.floatClose Accuracy.high (List.last curve).HeldOutLoss.Value result.EvalLoss.Value "the last watch's held-out loss is the run's"
            for w in curve.Tail do
                Expect.floatClose Accuracy.veryHigh w.Rise["pretrain-proxy"] (w.Values["pretrain-proxy"] - baseValues["pretrain-proxy"]) $"step {w.Step}: the rise"
            let events = Directory.GetFiles(board.Path) |> Array.map File.ReadAllBytes |> Array.map Text.Encoding.Latin1.GetString |> String.concat ""
            for tag in [ "forgetting/pretrain-proxy"; "forgetting/kl-to-base"; "forgetting/distance"; "forgetting/watch_seconds" ] do
                Expect.stringContains events tag $"TensorBoard scalar {tag}"
        }

        test "Training.watch.kl: the KL against the base's saved log-probabilities equals the KL with both models in memory" {
            ConsoleProgress.Enabled <- false
            use baseModel = ModelLoader.Load(stories ())
            use lm = ModelLoader.Load(stories ())
            use dir = new TempDir()
            Trainer(lm, dpr (), null, options 20 3e-3, dir.Path).Run() |> ignore
            let examples = heldOut ()
            let window = min 512 lm.MaxSequenceLength
            let rows = examples |> Array.map (fun e -> Tokenized.Encode(e, lm.Tokenizer, window)) |> Array.filter (fun r -> r.TrainedTokens > 0) |> Array.toList
            let file = Path.Combine(dir.Path, "kl_base.safetensors")
            KlToBase.SaveBase(baseModel, rows, file)
            let cached = KlToBase.AgainstSaved(lm, rows, file)
            let both = KlToBase.OnTask(lm, baseModel, examples)
            Expect.equal cached.Tokens both.Tokens "the same answer positions"
            Expect.isGreaterThan both.MeanTokenKl 0.01 "the model has moved"
            Expect.floatClose { absolute = 0.0; relative = 1e-6 } cached.MeanTokenKl both.MeanTokenKl "equal within float rounding"
        }

        test "Training.watch.budget: a run over its forgetting budget stops at the watch that finds it, says so, and keeps the last model within the budget (measured apart); a resume stops the same" {
            ConsoleProgress.Enabled <- false
            let budgeted (lr: float) (every: int) (limit: float) (saveEvery: int) =
                TrainingOptions(Method = Methods.Parse "mofo", LearningRate = lr, Steps = Nullable 300, BatchSize = 8, MaxLength = 96,
                                Schedule = Schedule.Constant, ShowProgress = false, SaveEvery = saveEvery)
                    .WithWatch([ "pretrain-proxy" ], every, Collections.Generic.Dictionary<string, float>(dict [ "pretrain-proxy", limit ]))
            use b = ModelLoader.Load(stories ())
            let check (o: TrainingOptions) (dir: string) (r: TrainResult) =
                let limit = o.ForgettingBudget["pretrain-proxy"]
                Expect.equal r.StoppedBy "forgetting budget" "the budget stopped the run"
                Expect.isLessThan r.Steps 300 "before its last step"
                Expect.equal (r.Budget.Measure, r.Budget.Step) ("pretrain-proxy", r.Steps) "the measure, at the step of the watch"
                Expect.isGreaterThan r.Budget.Rise limit "the rise found"
                Expect.isLessThan r.Budget.KeptStep r.Budget.Step "an earlier model is kept"
                Expect.stringContains (File.ReadAllText(Path.Combine(dir, "train_summary.json"))) "\"stoppedBy\": \"forgetting budget\"" "train_summary.json says why"
                // the kept model, measured apart from the watch: within the budget
                use kept = ModelLoader.Load(Path.Combine(dir, "model"))
                let rise = proxyOf kept dir - proxyOf b dir
                Expect.isLessThanOrEqual rise limit $"model/ (step {r.Budget.KeptStep}) rose by {rise:G4}: within the budget"
                rise
            // the acceptance's run: lr 3e-3, budget 0.05 — the first watch is over it, the base is kept
            use first = new TempDir()
            let o = budgeted 3e-3 2 0.05 0
            let r = (use lm = ModelLoader.Load(stories ()) in Trainer(lm, dpr (), heldOut (), o, first.Path).Run())
            check o first.Path r |> ignore
            // a looser budget keeps a trained model; a run killed before the stop and resumed stops the same
            use dir = new TempDir()
            let o = budgeted 1e-3 3 0.3 2
            let r = (use lm = ModelLoader.Load(stories ()) in Trainer(lm, dpr (), heldOut (), o, dir.Path).Run())
            let rise = check o dir.Path r
            Expect.isGreaterThan r.Budget.KeptStep 0 "a trained model is kept"
            Expect.isGreaterThan rise 0.0 "it has moved from the base"
            use dir2 = new TempDir()
            let crash () =
                use lm = ModelLoader.Load(stories ())
                let t = Trainer(lm, dpr (), heldOut (), o, dir2.Path)
                t.OnStep <- fun m -> if m.Step = r.Steps - 1 then failwith "simulated crash"
                throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
            crash ()
            let r2 = (use lm = ModelLoader.Load(stories ()) in Trainer(lm, dpr (), heldOut (), o, dir2.Path).Run(resume = true))
            Expect.equal (r2.StoppedBy, r2.Steps, r2.Budget.KeptStep) (r.StoppedBy, r.Steps, r.Budget.KeptStep) "the resumed run stops at the same watch and keeps the same step"
            let w1 = MoFO.Checkpoints.SafeTensors.Load(Path.Combine(dir.Path, "model", "model.safetensors"))
            let w2 = MoFO.Checkpoints.SafeTensors.Load(Path.Combine(dir2.Path, "model", "model.safetensors"))
            for KeyValue (k, v) in w1 do
                Expect.equal (w2[k].data<float32>().ToArray()) (v.data<float32>().ToArray()) $"the kept model: {k}"
        }

        test "Training.watch.errors: an unknown measure, a budget on a measure not watched, a KL watch without held-out data are refused naming the field" {
            let bad (o: TrainingOptions) = throwsWith<OptionException> (fun () -> o.Validate())
            let e = bad ((options 10 1e-3).WithWatch([ "mmlu" ], 5, Collections.Generic.Dictionary<string, float>()))
            Expect.stringContains e.Message "WatchForgetting mmlu" "unknown measure"
            let e = bad ((options 10 1e-3).WithWatch([ "distance" ], 5, Collections.Generic.Dictionary<string, float>(dict [ "pretrain-proxy", 0.1 ])))
            Expect.stringContains e.Message "not watched" "budget on an unwatched measure"
            let e = bad ((options 10 1e-3).WithWatch([ "arc-easy:50" ], 5, Collections.Generic.Dictionary<string, float>(dict [ "arc-easy:50", 2.0 ])))
            Expect.stringContains e.Message "drop allowed" "an accuracy's budget is a drop (≤ 0)"
            let e = bad ((options 10 1e-3).WithWatch([ "arc-easy:0" ], 5, Collections.Generic.Dictionary<string, float>()))
            Expect.stringContains e.Message "arc-easy:N" "a benchmark needs N ≥ 1"
            ConsoleProgress.Enabled <- false
            use lm = ModelLoader.Load(stories ())
            use dir = new TempDir()
            let e = throwsWith<OptionException> (fun () -> Trainer(lm, dpr (), null, (options 4 1e-3).WithWatch([ "kl-to-base" ], 2, Collections.Generic.Dictionary<string, float>()), dir.Path).Run() |> ignore)
            Expect.stringContains e.Message "held-out" "the KL probe set needs held-out examples"
        }
    ]
