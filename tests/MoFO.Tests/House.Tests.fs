/// The house: one method vocabulary, typed run folders, Core errors that name fields (the CLI names flags), one
/// measure table, one exit-code table across commands, and sweeps whose points survive a killed process.
module MoFO.Tests.House

open System
open System.IO
open System.Threading
open Expecto
open MoFO
open MoFO.Training
open MoFO.Dsl
open MoFO.Tests.Fixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

let private tempDir () = Directory.CreateTempSubdirectory("mofo-house-").FullName

let private stories () = requireAsset DataRoot.Assets.Stories260K

/// A llama2.c checkpoint cut in the middle of a tensor, with its tokenizer beside it.
let private truncatedCheckpoint (dir: string) =
    let src = stories ()
    let bin = Path.Combine(dir, "cut.bin")
    let bytes = File.ReadAllBytes src
    File.WriteAllBytes(bin, bytes[.. 199_999])
    File.Copy(Path.Combine(Path.GetDirectoryName src, "tok512.model"), Path.Combine(dir, "tok512.model"))
    bin

[<Tests>]
let vocabulary =
    testSequenced <| testList "House.vocabulary" [
        test "House.vocabulary.parse: every name builds its member, presets add their loss term, a λ adds a term to any member" {
            for m in Methods.Members do
                let spec = Methods.Parse m.Name
                Expect.equal spec.Optimizer m.Name $"{m.Name}: the member"
                Expect.isEmpty spec.Terms $"{m.Name}: no loss term"
            let l2 = Methods.Parse "l2"
            Expect.equal (l2.Optimizer, l2.Terms |> Seq.map (fun t -> t.Term, t.Lambda) |> List.ofSeq) ("adamw", [ "l2", Defaults.L2Lambda ]) "l2 = AdamW + L2(1e-3)"
            let both = Methods.Parse("mofo", 0.1, l2Lambda = Nullable 0.5)
            Expect.equal (both.Optimizer, both.Alpha, both.Terms.Count) ("mofo", 0.1, 1) "MoFO + L2"
            Expect.equal (string both) "mofo(α=0.1) + l2(λ=0.5)" "described"
            Expect.equal (Methods.Parse "full-ft").Optimizer "adamw" "alias"
            let e = throwsWith<OptionException> (fun () -> Methods.Parse "sgd" |> ignore)
            Expect.equal e.Field "Method" "names the field"
            for name in [ "mofo"; "adamw"; "lion"; "hft"; "grad-bcd"; "random-bcd"; "gd-mofo"; "lora"; "l1"; "l2" ] do
                Expect.contains Methods.Names name $"{name} is in the vocabulary"
        }

        test "House.vocabulary.factory: the one factory builds each member and its terms for a model" {
            use lm = MoFO.Models.ModelLoader.Load(stories ())
            let classes =
                dict [ "mofo", "MoFOOptimizer"; "adamw", "AdamW"; "lion", "Lion"; "hft", "HFT"; "grad-bcd", "GradientFilteredBCD"
                       "random-bcd", "RandomizedBCD"; "gd-mofo", "GDMoFO"; "lora", "AdamW"; "dora", "AdamW"; "pissa", "AdamW"; "l1", "AdamW"; "l2", "AdamW"
                       "lisa", "LISA"; "badam", "BAdam"; "spectrum", "Spectrum" ]
            for name in Methods.Names do
                let o = TrainingOptions(Method = Methods.Parse name, LearningRate = 1e-3)
                use trained = TrainedSet.Attach(lm, o.Method, o.Seed)
                let struct (opt, terms) = Methods.Create(trained, o)
                Expect.equal (opt.GetType().Name) classes[name] $"{name}: the member's class"
                Expect.equal terms.Count (if name = "l1" || name = "l2" then 1 else 0) $"{name}: loss terms"
                opt.Dispose()
                for t in terms do (box t :?> IDisposable).Dispose()
                // LoRA attached adapters to the model (and froze it); disposing the trained set takes them off for the next name
                match MoFO.Models.LoraAdapters.Of lm.Module with
                | null -> ()
                | _ ->
                    Expect.contains [ "lora"; "dora"; "pissa" ] name "only the adapter methods attach adapters"
                    Expect.equal opt.Blocks.Count ((if name = "dora" then 3 else 2) * 5 * 7) $"{name}: the optimizer holds A and B (DoRA: and m) of 7 projections × 5 layers"
        }

        test "House.vocabulary.gdMoFO: a method added in one line of the vocabulary trains from the CLI" {
            let dir = tempDir ()
            let data = Path.Combine(dir, "d.jsonl")
            File.WriteAllLines(data, [ for i in 1 .. 8 -> $"{{\"prompt\":\"Tom has {i} cats.\",\"completion\":\" He is happy.\"}}" ])
            let out = Path.Combine(dir, "run")
            let code, outText, err = mofo [ "train"; "--model"; stories (); "--data"; data; "--format"; "jsonl"; "--output"; out; "--method"; "gd-mofo"; "--lr"; "0.05"; "--steps"; "2"; "--batch-size"; "4" ]
            Expect.equal code 0 $"trains; {err}"
            let s = RunFolder(out).ReadSummary()
            Expect.equal s.Method "gd-mofo(α=0.15)" "the method of the summary"
            Expect.isGreaterThan s.Distance 0.0 "it moved"
            Expect.equal (Method.GDMoFO 0.15).Spec (Methods.Parse("gd-mofo", 0.15)) "and the F# case maps onto it"
        }

        test "House.vocabulary.dsl: every F# method maps onto the Core description in one place" {
            Expect.equal (Method.MoFO 0.05).Spec (Methods.Parse("mofo", 0.05)) "MoFO α"
            Expect.equal (Method.L1 1e-6).Spec (Methods.Parse("l1", l1Lambda = Nullable 1e-6)) "L1"
            Expect.equal (Method.Replay(16, Method.MoFO 0.05)).Spec (Methods.Parse("mofo", 0.05)) "Replay keeps the inner method"
            Expect.equal (Recipe.lrFor Method.Lion { Recipe.Default with Lr = 1e-3 }) (1e-3 * 0.2) "Lion at its factor"
            Expect.equal (Recipe.lrFor Method.FullFT { Recipe.Default with Lr = 1e-3 }) 1e-3 "Adam at the recipe's rate"
        }

        test "House.vocabulary.cli: mofo methods lists every member and term with the defaults" {
            let code, out, _ = mofo [ "methods" ]
            Expect.equal code 0 "exit 0"
            for name in Methods.Names do Expect.stringContains out name $"lists {name}"
            Expect.stringContains out (sprintf "lr %g" Defaults.LearningRate) "the default learning rate"
        }
    ]

[<Tests>]
let runFolder =
    testSequenced <| testList "House.runFolder" [
        test "House.runFolder: the trainer's summary and metrics read back as the records it wrote; a bad line names file and line" {
            ConsoleProgress.Enabled <- false
            let dir = tempDir ()
            use lm = MoFO.Models.ModelLoader.Load(stories ())
            let train = MoFO.Data.InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, MoFO.Data.DataFormat.Dpr) |> Seq.truncate 32 |> Seq.toArray
            let o = TrainingOptions(Method = Methods.Parse "mofo", LearningRate = 1e-3, Steps = Nullable 3, BatchSize = 4, MaxLength = 64, ShowProgress = false)
            let r = Trainer(lm, train, null, o, dir).Run()
            let folder = RunFolder dir
            let back = folder.ReadSummary()
            Expect.equal back.Steps r.Steps "steps"
            Expect.equal back.FinalLoss r.FinalLoss "final loss"
            Expect.equal back.Options.Method r.Options.Method "the method"
            Expect.equal back.Method "mofo(α=0.15)" "described"
            Expect.isNotNull (folder.FinishedSummary()) "finished"
            let steps = folder.ReadMetrics()
            Expect.equal (steps |> Seq.map (fun s -> s.Step) |> List.ofSeq) [ 1; 2; 3 ] "one record per step"
            File.AppendAllText(folder.MetricsFile, "{\"step\": \"four\"}\n")
            let e = throwsWith<MoFO.Data.DataFormatException> (fun () -> folder.ReadMetrics() |> ignore)
            Expect.stringContains e.Message (folder.MetricsFile + ":4") "file and line"
        }
    ]

[<Tests>]
let fields =
    testSequenced <| testList "House.fields" [
        test "House.fields: Core names the field, the CLI names the flag" {
            let e = throwsWith<OptionException> (fun () -> TrainingOptions(LearningRate = -1.0).Validate())
            Expect.equal e.Field "LearningRate" "field"
            Expect.stringStarts e.Message "LearningRate -1" "Core's message names the field and the value"
            Expect.isFalse (e.Message.Contains "--") "no flag in Core's message"
            let data = Path.Combine(tempDir (), "d.jsonl")
            File.WriteAllText(data, "{\"prompt\":\"p\",\"completion\":\"c\"}\n")
            let code, _, err = mofo [ "train"; "--model"; stories (); "--data"; data; "--format"; "jsonl"; "--output"; tempDir (); "--lr"; "-1" ]
            Expect.equal code 2 "usage"
            Expect.stringContains err "--lr -1" "the CLI names the flag"
            let bad = Path.Combine(tempDir (), "empty.jsonl")
            File.WriteAllText(bad, "{\"prompt\":\"p\",\"completion\":\"\"}\n")
            let e2 = throwsWith<MoFO.Data.DataFormatException> (fun () -> MoFO.Data.InstructionData.Read(bad, MoFO.Data.DataFormat.Jsonl) |> ignore)
            Expect.equal e2.Remedy "skipEmpty" "Core names the remedy's field"
            Expect.isFalse (e2.Message.Contains "--") "no flag in Core's message"
            let code2, _, err2 = mofo [ "train"; "--model"; stories (); "--data"; bad; "--format"; "jsonl"; "--output"; tempDir () ]
            Expect.equal code2 4 "bad data"
            Expect.stringContains err2 "--skip-empty" "the CLI names the flag that applies the remedy"
            let out = tempDir ()
            let args = [ "train"; "--model"; stories (); "--data"; data; "--format"; "jsonl"; "--output"; out; "--steps"; "1"; "--batch-size"; "1" ]
            Expect.equal (let c, _, _ = mofo args in c) 0 "a first run"
            let code3, _, err3 = mofo args
            Expect.equal code3 2 "a folder with a checkpoint is a usage error"
            Expect.stringContains err3 "--resume" "the CLI names --resume"
        }
    ]

[<Tests>]
let measures =
    testSequenced <| testList "House.measures" [
        test "House.measures.table: each measure declared once, with a unique key and task; suites and eval tasks derive from it" {
            let declared = Measure.All
            Expect.equal declared.Length (List.distinct declared).Length "one declaration per measure"
            let named =
                typeof<Measure>.Assembly.GetType("MoFO.Dsl.MeasureModule").GetProperties(Reflection.BindingFlags.Public ||| Reflection.BindingFlags.Static)
                |> Array.filter (fun p -> p.PropertyType = typeof<Measure>) |> Array.map (fun p -> p.GetValue null :?> Measure) |> Array.toList
            Expect.equal named declared "every measure a script can name (Measure.ArcEasy, …) is in Measure.All, in the order declared"
            let keys = declared |> List.map (fun m -> m.Key)
            Expect.equal keys.Length (List.distinct keys).Length "unique keys"
            let tasks = declared |> List.choose (fun m -> m.Task)
            Expect.equal tasks.Length (List.distinct tasks).Length "unique tasks"
            Expect.contains tasks "perplexity" "perplexity is a measure"
            Expect.equal (Report.measures Report.Suite.Tiny None Settings.Tiny) [ Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ] "the tiny suite"
            let paper = Report.measures Report.Suite.Paper None Settings.Paper
            Expect.isFalse (List.contains Measure.HellaSwag paper) "HellaSwag only with its file"
            let withHs = Report.measures Report.Suite.Paper None { Settings.Paper with Data = Map.ofList [ "hellaswag", "h.jsonl" ] }
            Expect.contains withHs Measure.HellaSwag "HellaSwag with its file"
        }

        test "House.measures.perplexity: mofo eval --task perplexity equals Evals.measure with the same settings; the command round-trips" {
            let corpus = Path.Combine(tempDir (), "corpus.txt")
            File.WriteAllText(corpus, "Once upon a time there was a cat.\n\nThe dog ran to the park and played with a ball.\n\nLily was happy.")
            let json = Path.Combine(tempDir (), "ppl.json")
            let code, _, err = mofo [ "eval"; "--model"; stories (); "--task"; "perplexity"; "--data"; corpus; "--output"; json ]
            Expect.equal code 0 $"exit 0; {err}"
            let cli = using (Text.Json.JsonDocument.Parse(File.ReadAllText json)) (fun d -> d.RootElement.GetProperty("metrics").GetProperty("mean_token_nll").GetDouble())
            use lm = MoFO.Models.ModelLoader.Load(stories ())
            let s = { Settings.Paper with Data = Map.ofList [ "perplexity", corpus ] }
            let o, _, _ = captureConsole (fun () -> Evals.measure { Base = lazy lm; Task = None; Settings = s } lm Measure.Perplexity)
            Expect.floatClose Accuracy.veryHigh o.Value cli "the same number"
            Expect.equal (Evals.command "m" "b" s Measure.Perplexity) (Some $"mofo eval --model m --task perplexity --data {corpus}") "the equivalent command"
        }
    ]

/// The exit-code table: the same failure class gives the same code from every command.
[<Tests>]
let exitCodes =
    testSequenced <| testList "House.exitCodes" [
        test "House.exitCodes: a missing model file, a malformed data line and a truncated checkpoint give the same code from generate, train, eval, continual and repro" {
            let dir = tempDir ()
            let missing = Path.Combine(dir, "no-such-model.bin")
            let cut = truncatedCheckpoint dir
            let goodData = Path.Combine(dir, "good.jsonl")
            File.WriteAllText(goodData, "{\"prompt\":\"p\",\"completion\":\"c\"}\n")
            let badData = Path.Combine(dir, "bad.jsonl")
            File.WriteAllText(badData, "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\": oops}\n")
            let goodMc = Path.Combine(dir, "mc.jsonl")
            File.WriteAllText(goodMc, "{\"question\":\"q\",\"choices\":[\"a\",\"b\"],\"answer\":0}\n")
            let badMc = Path.Combine(dir, "badmc.jsonl")
            File.WriteAllText(badMc, "{\"question\":\"q\",\"choices\":[\"a\",\"b\"],\"answer\":0}\n{\"question\":\"q\",\"choices\":\"ab\",\"answer\":0}\n")
            let trace (name: string) (train: string) =
                let d = Path.Combine(dir, name)
                Directory.CreateDirectory d |> ignore
                File.WriteAllText(Path.Combine(d, "train.json"), train)
                File.WriteAllText(Path.Combine(d, "test.json"), "[{\"prompt\":\"p\",\"answer\":\"a\"}]")
                d
            let goodTask = trace "good-task" "[{\"prompt\":\"p\",\"answer\":\"a\"}]"
            let badTask = trace "bad-task" "[{\"prompt\":\"p\",\"answer\":\"a\"}, {\"prompt\":\"p\"}]"
            let tulu = Path.Combine(dir, "math.jsonl")
            File.WriteAllText(tulu, "{\"messages\":[{\"role\":\"user\",\"content\":\"1+1?\"},{\"role\":\"assistant\",\"content\":\"2\"}]}\n")
            let badTulu = Path.Combine(dir, "badmath.jsonl")
            File.WriteAllText(badTulu, "{\"messages\":[{\"role\":\"user\",\"content\":\"1+1?\"},{\"role\":\"assistant\",\"content\":\"2\"}]}\n{\"messages\": 3}\n")
            let config (model: string) (math: string) =
                let f = Path.Combine(dir, $"paper-{Guid.NewGuid():N}.json")
                File.WriteAllText(f, Text.Json.JsonSerializer.Serialize(dict [ "llama2_7b", model; "metamathqa", math ]))
                f
            let out () = Path.Combine(dir, $"out-{Guid.NewGuid():N}")
            let commands (model: string) (data: string) (mc: string) (task: string) (math: string) =
                [ "generate", [ "generate"; "--model"; model; "--max-new-tokens"; "2" ]
                  "train", [ "train"; "--model"; model; "--data"; data; "--format"; "jsonl"; "--output"; out (); "--steps"; "1"; "--batch-size"; "1" ]
                  "eval", [ "eval"; "--model"; model; "--task"; "mc"; "--data"; mc ]
                  "continual", [ "continual"; "--model"; model; "--tasks"; task; "--output"; out (); "--batch-size"; "1" ]
                  "repro", [ "repro"; "table3"; "--scale"; "paper"; "--config"; config model math; "--out"; out () ] ]
            let expectAll (what: string) (code: ExitCode) (cmds: (string * string list) list) =
                for name, args in cmds do
                    let c, _, err = mofo args
                    Expect.equal c (int code) $"{what}: {name} exits {int code} ({ExitCode.describe code}); stderr: {err}"
                    Expect.isFalse (err.Contains "   at ") $"{what}: {name} prints one line, no stack trace"
            // a missing model file: every command
            expectAll "missing model file" ExitCode.MissingFile (commands missing goodData goodMc goodTask tulu)
            // a malformed data line: every command that reads data (generate reads none)
            expectAll "malformed data line" ExitCode.BadInput
                (commands (stories ()) badData badMc badTask badTulu |> List.filter (fun (n, _) -> n <> "generate"))
            // a truncated checkpoint: every command
            expectAll "truncated checkpoint" ExitCode.BadInput (commands cut goodData goodMc goodTask tulu)
        }

        test "House.exitCodes.usage: a bad flag value is a usage error (2) in every command; the table is documented" {
            for args in [ [ "generate"; "--model"; stories (); "--device"; "tpu" ]
                          [ "train"; "--model"; stories (); "--data"; "x"; "--format"; "nope"; "--output"; tempDir () ]
                          [ "eval"; "--model"; stories (); "--task"; "nope" ]
                          [ "continual"; "--model"; stories (); "--tasks"; "x"; "--output"; tempDir (); "--method"; "sgd" ]
                          [ "repro"; "table9" ] ] do
                let c, _, err = mofo args
                Expect.equal c 2 $"{args.Head}: usage error; stderr: {err}"
            let readme = File.ReadAllText(Path.Combine(repoRoot, "README.md"))
            for code in ExitCode.all do
                Expect.stringContains readme $"| {int code} |" $"README documents exit code {int code}"
        }
    ]

/// A sweep survives one point whose process is killed: the point is retried from its checkpoint and ends as an
/// uninterrupted run would; the other point is untouched.
[<Tests>]
let sweep =
    testSequenced <| testList "House.sweep" [
        test "House.sweep.kill: kill -9 of one point's process mid-run; the sweep retries it from its checkpoint and every result equals an uninterrupted sweep's" {
            requireAsset DataRoot.Assets.DprTrain |> ignore
            let recipe = { Recipe.Paper with Lr = 1e-3; Steps = Some 100; BatchSize = 4; MicroBatchSize = 4; MaxLength = 96; Schedule = Schedule.Constant }
            let settings = { Settings.Tiny with TaskLimit = Some 16 }
            let e = { Experiment.create ModelSource.Stories260K Dataset.Dpr Method.FullFT recipe [ Measure.TaskLoss; Measure.Distance ] Scale.Tiny 0 with Settings = settings }
            let es = e |> Experiment.compare [ Method.FullFT; Method.MoFO 0.15 ]
            let withCache (f: unit -> 'a) =
                let dir = tempDir ()
                let old = Environment.GetEnvironmentVariable "MOFO_CACHE"
                Environment.SetEnvironmentVariable("MOFO_CACHE", dir)
                try f () finally Environment.SetEnvironmentVariable("MOFO_CACHE", old)
            let old = Environment.GetEnvironmentVariable "MOFO_PARALLEL"
            Environment.SetEnvironmentVariable("MOFO_PARALLEL", "2")
            try
                let reference = withCache (fun () -> Experiment.runAll es)
                let killed = ref 0
                let attempts = Collections.Concurrent.ConcurrentBag<string * int>()
                let handler =
                    Handler<Sweep.Started>(fun _ s ->
                        attempts.Add((s.Label, s.Attempt))
                        match s.Job with
                        | Sweep.Job.Train x when x.Method = Method.MoFO 0.15 && s.Attempt = 1 ->
                            // kill it after its checkpoint at step 50, before it finishes
                            let metrics = Path.Combine(Experiment.runDir x, "metrics.jsonl")
                            let t =
                                Thread(fun () ->
                                    let lines () = if File.Exists metrics then (try File.ReadAllLines(metrics).Length with _ -> 0) else 0
                                    let clock = Diagnostics.Stopwatch.StartNew()
                                    while lines () < 60 && clock.Elapsed.TotalSeconds < 120.0 do Thread.Sleep 20
                                    try
                                        use p = Diagnostics.Process.GetProcessById s.Pid
                                        p.Kill()
                                        Interlocked.Increment killed |> ignore
                                    with _ -> ())
                            t.IsBackground <- true
                            t.Start()
                        | _ -> ())
                Sweep.started.Publish.AddHandler handler
                let runs =
                    try withCache (fun () ->
                        let runs = Experiment.runAll es
                        let lines = File.ReadAllLines(Path.Combine(Experiment.runDir es[1], "metrics.jsonl"))
                        Expect.equal lines.Length 100 "the killed point's log has each step once after the resume"
                        runs)
                    finally Sweep.started.Publish.RemoveHandler handler
                Expect.equal killed.Value 1 "one point's process was killed"
                Expect.isTrue (attempts |> Seq.exists (fun (_, n) -> n = 2)) "the killed point was retried"
                for r, ref in List.zip runs reference do
                    Expect.isSome r.Train $"{r.Label} finished"
                    for KeyValue (m, v) in ref.Values do
                        Expect.equal r[m] v $"{r.Label}: {m.Name} equals the uninterrupted sweep's"
            finally Environment.SetEnvironmentVariable("MOFO_PARALLEL", old)
        }
    ]
