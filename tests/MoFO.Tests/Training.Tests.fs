module MoFO.Tests.Training.Trainer.Tests

open System
open System.IO
open System.Collections.Generic
open Expecto
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures

/// A character-level tokenizer: BOS = 1, EOS = 2, a character c is id (int c + 3) — so expected sequences can be
/// written by hand.
type CharTokenizer() =
    interface MoFO.Tokenization.ITextTokenizer with
        member _.SourceFile = "chars"
        member _.VocabSize = 300
        member _.BosId = Nullable 1
        member _.EosId = Nullable 2
        member _.AddsBosByDefault = true
        member _.Encode(text, addBos) =
            [| if addBos then yield 1
               for c in text do yield int c + 3 |] :> IReadOnlyList<int>
        member _.Decode ids = String [| for i in ids do if i > 2 then char (i - 3) |]

let private ids (s: string) = [ for c in s -> int c + 3 ]
let private ign n = List.replicate n Tokenized.Ignore

let private tempDir () = Directory.CreateTempSubdirectory("mofo-train-").FullName
let private write (name: string) (text: string) =
    let p = Path.Combine(tempDir (), name)
    File.WriteAllText(p, text)
    p

[<Tests>]
let data =
    testList "Training.Data" [
        test "Tulu template and label masking against a hand-built sequence" {
            let ex = TuluTemplate.Render([ ChatMessage("user", " Hi "); ChatMessage("assistant", "Yo") ], "t")
            Expect.equal ex.Text "<|user|>\nHi\n<|assistant|>\nYo" "template text (EOS is a token)"
            let t = Tokenized.Encode(ex, CharTokenizer(), 512)
            let prompt = "<|user|>\nHi\n<|assistant|>\n"
            Expect.equal (List.ofArray t.InputIds) ([ 1 ] @ ids prompt @ ids "Yo" @ [ 2 ]) "ids: BOS, prompt, answer, EOS"
            Expect.equal (List.ofArray t.Labels) (ign (1 + prompt.Length) @ ids "Yo" @ [ 2 ]) "labels: only the answer and its EOS"
        }

        test "multi-turn: every assistant turn is trained, user turns masked" {
            let ex = TuluTemplate.Render([ ChatMessage("system", "S"); ChatMessage("user", "a"); ChatMessage("assistant", "b"); ChatMessage("user", "c"); ChatMessage("assistant", "d") ], "t")
            let t = Tokenized.Encode(ex, CharTokenizer(), 512)
            let p1 = "<|system|>\nS\n<|user|>\na\n<|assistant|>\n"
            let p2 = "\n<|user|>\nc\n<|assistant|>\n"
            Expect.equal (List.ofArray t.InputIds) ([ 1 ] @ ids p1 @ ids "b" @ [ 2 ] @ ids p2 @ ids "d" @ [ 2 ]) "ids"
            Expect.equal (List.ofArray t.Labels) (ign (1 + p1.Length) @ ids "b" @ [ 2 ] @ ign p2.Length @ ids "d" @ [ 2 ]) "labels"
        }

        test "truncation keeps the first max-length tokens" {
            let t = Tokenized.Encode(TrainingExample.PromptCompletion("abc", "def", "t"), CharTokenizer(), 5)
            Expect.equal (List.ofArray t.InputIds) ([ 1 ] @ ids "abcd") "ids"
            Expect.equal (List.ofArray t.Labels) (ign 4 @ ids "d") "labels"
        }

        test "packing puts whole examples in rows (an example longer than a row is cut), with example numbers" {
            // (packing used to split examples across rows, attending across them; it now keeps boundaries: Packing.Tests)
            let a = TokenizedExample([| 1; 10; 11; 2 |], [| -100; -100; 11; 2 |], "a")
            let b = TokenizedExample([| 1; 20; 2 |], [| -100; 20; 2 |], "b")
            let rows = Tokenized.Pack([ a; b ], 3)
            Expect.equal [ for r in rows -> List.ofArray r.InputIds ] [ [ 1; 10; 11 ]; [ 1; 20; 2 ] ] "a cut to the row, b in the next"
            Expect.equal [ for r in rows -> List.ofArray r.Labels ] [ [ -100; -100; 11 ]; [ -100; 20; 2 ] ] "labels"
            let rows = Tokenized.Pack([ b; b ], 7)
            Expect.equal [ for r in rows -> List.ofArray r.Segments ] [ [ 1; 1; 1; 2; 2; 2 ] ] "two examples in one row, numbered"
        }

        test "padding: right-padded ids, ignored labels and a zero mask" {
            use b = Tokenized.Pad([ TokenizedExample([| 1; 5; 6 |], [| -100; 5; 6 |], "a"); TokenizedExample([| 1; 7 |], [| -100; 7 |], "b") ], 2)
            Expect.equal (b.InputIds.data<int64>().ToArray()) [| 1L; 5L; 6L; 1L; 7L; 2L |] "ids"
            Expect.equal (b.Labels.data<int64>().ToArray()) [| -100L; 5L; 6L; -100L; 7L; -100L |] "labels"
            Expect.equal (b.AttentionMask.data<int64>().ToArray()) [| 1L; 1L; 1L; 1L; 1L; 0L |] "mask"
        }

        test "data order: a seeded permutation per epoch; sub-sampling keeps floor(f·n) in order" {
            let e0 = DataOrder.Epoch(100, 7L, 0)
            Expect.equal (Array.sort (Array.copy e0)) [| 0 .. 99 |] "a permutation"
            Expect.equal (DataOrder.Epoch(100, 7L, 0)) e0 "reproducible"
            Expect.notEqual (DataOrder.Epoch(100, 7L, 1)) e0 "another epoch, another order"
            let s = DataOrder.Subsample([ 0 .. 999 ], 0.1, 3L)
            Expect.equal s.Count 100 "10 %"
            Expect.equal (List.ofSeq s) (List.sort (List.ofSeq s)) "original order"
        }

        test "the real fine-tuning sets load: MetaMathQA (Tulu), Code-Alpaca, DPR, GSM8K" {
            let mm = InstructionData.Read(requireAsset DataRoot.Assets.MetaMathQA, DataFormat.Tulu)
            Expect.equal mm.Count 1024 "MetaMathQA subset"
            Expect.stringStarts mm[0].Prompt "<|user|>\n" "Tulu prompt"
            let e = throwsWith<DataFormatException> (fun () -> InstructionData.Read(requireAsset DataRoot.Assets.CodeAlpaca, DataFormat.Alpaca) |> ignore)
            Expect.stringContains e.Message "record 237: empty \"output\"" "Code-Alpaca has empty answers"
            let ca = InstructionData.Read(requireAsset DataRoot.Assets.CodeAlpaca, DataFormat.Alpaca, skipEmpty = true)
            Expect.equal ca.Count 2015 "Code-Alpaca 2k less the two records without an output"
            let dpr = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr)
            Expect.equal dpr.Count 1322 "DPR train records"
            Expect.equal (Dpr.Read(requireAsset DataRoot.Assets.DprTest)).Count 564 "DPR test records"
            Expect.stringStarts dpr[0].Prompt "Sentence: The bee landed on the flower because it had pollen." "template 0"
            Expect.equal dpr[0].Completion " the flower" "answer"
            let records = Dpr.Read(requireAsset DataRoot.Assets.DprTrain)
            for t in 0 .. Dpr.Templates.Count - 1 do
                Expect.equal dpr[t].Prompt (Dpr.Prompt(records[t], t)) $"example {t} uses template {t}"
            let g = InstructionData.Read(requireAsset DataRoot.Assets.Gsm8kTrain, DataFormat.Gsm8k)
            Expect.equal g.Count 7473 "GSM8K train"
        }

        test "malformed data: bad JSON line, missing field, empty answer — each names file and line" {
            let bad1 = write "a.jsonl" "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n{oops\n"
            let e1 = throwsWith<DataFormatException> (fun () -> InstructionData.Read(bad1, DataFormat.Tulu) |> ignore)
            Expect.stringContains e1.Message (bad1 + ":2") "bad JSON"
            let bad2 = write "b.jsonl" "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"p\"}\n"
            let e2 = throwsWith<DataFormatException> (fun () -> InstructionData.Read(bad2, DataFormat.Jsonl) |> ignore)
            Expect.stringContains e2.Message (bad2 + ":2") "missing field"
            Expect.stringContains e2.Message "completion" "names the field"
            let bad3 = write "c.jsonl" "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"  \"}]}\n"
            let e3 = throwsWith<DataFormatException> (fun () -> InstructionData.Read(bad3, DataFormat.Tulu) |> ignore)
            Expect.stringContains e3.Message (bad3 + ":1") "empty answer"
            let bad4 = write "train.c.txt" "S.\nit\nA,B\nA\n\nS2.\nit\nA,B\nC\n"
            let e4 = throwsWith<DataFormatException> (fun () -> InstructionData.Read(bad4, DataFormat.Dpr) |> ignore)
            Expect.stringContains e4.Message (bad4 + ":9") "DPR answer line"
        }

        test "TRACE task folders: train/eval splits of {prompt, answer}" {
            let dir = tempDir ()
            File.WriteAllText(Path.Combine(dir, "train.json"), """[{"prompt":"1+1=","answer":"2"},{"prompt":"2+2=","answer":"4"}]""")
            File.WriteAllText(Path.Combine(dir, "eval.json"), """[{"prompt":"3+3=","answer":"6"}]""")
            let train = InstructionData.Read(dir, DataFormat.Trace)
            Expect.equal [ for e in train -> e.Prompt, e.Completion ] [ "1+1=", "2"; "2+2=", "4" ] "train"
            Expect.equal (InstructionData.Read(dir, DataFormat.Trace, "eval")).Count 1 "eval"
            let e = throwsWith<FileNotFoundException> (fun () -> InstructionData.Read(dir, DataFormat.Trace, "test") |> ignore)
            Expect.stringContains e.Message "test.json" "names the missing split"
        }

        test "LR schedules as HuggingFace's: warmup, then constant, linear or cosine to zero" {
            Expect.equal (LrSchedule.At(Schedule.Cosine, 1.0, 0, 10, 2)) 0.0 "warmup starts at 0"
            Expect.equal (LrSchedule.At(Schedule.Cosine, 1.0, 1, 10, 2)) 0.5 "warmup half way"
            Expect.equal (LrSchedule.At(Schedule.Cosine, 1.0, 2, 10, 2)) 1.0 "peak after warmup"
            Expect.floatClose Accuracy.veryHigh (LrSchedule.At(Schedule.Cosine, 1.0, 6, 10, 2)) 0.5 "cosine half way"
            Expect.floatClose Accuracy.veryHigh (LrSchedule.At(Schedule.Linear, 1.0, 6, 10, 2)) 0.5 "linear half way"
            Expect.equal (LrSchedule.At(Schedule.Constant, 1.0, 9, 10, 0)) 1.0 "constant"
        }
    ]

let private stories () = requireAsset DataRoot.Assets.Stories260K

let private dprTrain () = InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr)
let private dprHeldOut () =
    InstructionData.Read(requireAsset DataRoot.Assets.DprTest, DataFormat.Dpr, dprTemplate = 0) |> Seq.truncate 48 |> Seq.toArray :> IReadOnlyList<_>

let private quiet () = ConsoleProgress.Enabled <- false

let private weights (lm: CausalLM) =
    lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.data<float32>().ToArray()) |> Map.ofSeq

[<Tests>]
let trainer =
    testSequenced <| testList "Training.Trainer" [
        test "fine-tuning stories260K on DPR lowers the held-out loss with every method; MoFO moves less than AdamW" {
            quiet ()
            let train = dprTrain ()
            let heldOut = dprHeldOut ()
            let results = Dictionary<string, float * float * float>()
            for m in [ "adamw"; "mofo"; "lion"; "hft"; "l1"; "l2"; "grad-bcd"; "random-bcd" ] do
                use lm = ModelLoader.Load(stories ())
                let lr = if m = "lion" then 2e-4 else 1e-3
                let o = TrainingOptions(Method = Methods.Parse m, LearningRate = lr, Steps = Nullable 12, BatchSize = 8, MicroBatchSize = 8, MaxLength = 128, ShowProgress = false, Schedule = Schedule.Constant)
                let t = Trainer(lm, train, heldOut, o, Path.Combine(tempDir (), "run"))
                let before = t.EvalLoss()
                let r = t.Run()
                results[m] <- (before, r.EvalLoss.Value, r.Distance)
                Expect.isLessThan r.EvalLoss.Value before $"{m}: held-out loss {before:F4} → {r.EvalLoss.Value:F4}"
            let _, _, dAdam = results["adamw"]
            let _, _, dMoFO = results["mofo"]
            Expect.isLessThan dMoFO dAdam $"distance: MoFO {dMoFO:F4} < AdamW {dAdam:F4}"
        }

        test "a run killed mid-way and resumed ends with the same weights as an uninterrupted run" {
            quiet ()
            let train = dprTrain () |> Seq.truncate 64 |> Seq.toArray
            let options = TrainingOptions(Method = Methods.Parse "random-bcd", LearningRate = 1e-3, Steps = Nullable 6, BatchSize = 8, MicroBatchSize = 4, MaxLength = 96, SaveEvery = 2, ShowProgress = false)
            let full =
                use lm = ModelLoader.Load(stories ())
                Trainer(lm, train, null, options, Path.Combine(tempDir (), "full")).Run() |> ignore
                weights lm
            let dir = Path.Combine(tempDir (), "killed")
            let crash () =
                use lm = ModelLoader.Load(stories ())
                let t = Trainer(lm, train, null, options, dir)
                t.OnStep <- fun m -> if m.Step = 5 then failwith "simulated crash"
                throwsWith<Exception> (fun () -> t.Run() |> ignore) |> ignore
            crash ()
            let resumed =
                use lm = ModelLoader.Load(stories ())
                let r = Trainer(lm, train, null, options, dir).Run(resume = true)
                Expect.equal r.Steps 6 "finished"
                weights lm
            for KeyValue (name, w) in full do
                Expect.equal resumed[name] w $"{name} bit-identical"
            let lines = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
            Expect.equal lines.Length 6 "one metrics line per step after the resume rewrote steps 5-6"
        }

        test "Ctrl-C (cancellation) saves a checkpoint that --resume continues" {
            quiet ()
            let train = dprTrain () |> Seq.truncate 32 |> Seq.toArray
            let options = TrainingOptions(Method = Methods.Parse "mofo", LearningRate = 1e-3, Steps = Nullable 4, BatchSize = 8, MaxLength = 96, ShowProgress = false)
            let dir = Path.Combine(tempDir (), "cancel")
            use cts = new Threading.CancellationTokenSource()
            let interrupt () =
                use lm = ModelLoader.Load(stories ())
                let t = Trainer(lm, train, null, options, dir)
                t.OnStep <- fun m -> if m.Step = 2 then cts.Cancel()
                let r = t.Run(false, cts.Token)
                Expect.isTrue r.Interrupted "interrupted"
                Expect.equal r.Steps 2 "after step 2"
            interrupt ()
            use lm = ModelLoader.Load(stories ())
            let r = Trainer(lm, train, null, options, dir).Run(resume = true)
            Expect.equal r.Steps 4 "resumed to the end"
            Expect.isTrue (File.Exists(Path.Combine(dir, "model", "model.safetensors"))) "final model written"
            // mofo eval --task distance measures the same distance from the base weights as the trainer logged.
            let json = Path.Combine(dir, "distance.json")
            let code, _, err = captureConsole (fun () ->
                MoFO.Dsl.Cli.Main.run [| "eval"; "--task"; "distance"; "--model"; Path.Combine(dir, "model"); "--base"; stories (); "--output"; json |])
            Expect.equal code 0 $"distance eval; stderr: {err}"
            let l2 = using (Text.Json.JsonDocument.Parse(File.ReadAllText json)) (fun d -> d.RootElement.GetProperty("metrics").GetProperty("l2").GetDouble())
            Expect.floatClose Accuracy.high l2 r.Distance "same L2 distance"
        }

        test "non-finite losses skip steps and stop the run after several in a row" {
            quiet ()
            use lm = ModelLoader.Load(stories ())
            let poison () =
                use _ = TorchSharp.torch.no_grad()
                (lm.Module.parameters() |> Seq.head).fill_(Double.NaN) |> ignore
            poison ()
            let o = TrainingOptions(Method = Methods.Parse "adamw", Steps = Nullable 10, BatchSize = 4, MaxLength = 64, MaxBadSteps = 3, ShowProgress = false)
            let dir = Path.Combine(tempDir (), "nan")
            let t = Trainer(lm, dprTrain () |> Seq.truncate 16 |> Seq.toArray, null, o, dir)
            let e = throwsWith<TrainingDivergedException> (fun () -> t.Run() |> ignore)
            Expect.stringContains e.Message "3 consecutive steps" "says why it stopped"
            let lines = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
            Expect.equal lines.Length 3 "three skipped steps logged"
            Expect.stringContains lines[0] "\"skipped\":true" "marked skipped"
        }

        test "mofo train with malformed data fails naming file and line and writes nothing" {
            let bad = write "bad.jsonl" "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"p\",\"completion\":\"\"}\n"
            let out = Path.Combine(tempDir (), "never")
            let code, _, err = captureConsole (fun () ->
                MoFO.Dsl.Cli.Main.run [| "train"; "--model"; stories (); "--data"; bad; "--format"; "jsonl"; "--output"; out |])
            Expect.notEqual code 0 "fails"
            Expect.stringContains err (bad + ":2") "file and line"
            Expect.isFalse (Directory.Exists out) "no output folder"
        }

        test "bad options are clear errors" {
            let e = throwsWith<ArgumentException> (fun () -> TrainingOptions(BatchSize = 16, MicroBatchSize = 5).Validate())
            Expect.stringContains e.Message "MicroBatchSize 5" "names the field and the value"
            let e2 = throwsWith<ArgumentException> (fun () -> Methods.Parse "sgd" |> ignore)
            Expect.stringContains e2.Message "sgd" "names the method"
        }
    ]

type PromptRow() =
    member val prompt = "" with get, set
    member val completion = "" with get, set

let private writeParquet (path: string) (rows: 'T list) =
    use s = File.Create path
    Parquet.Serialization.ParquetSerializer.SerializeAsync(rows, s).Wait()

[<Tests>]
let parquet =
    testList "Training.Parquet" [
        test "parquet: prompt/completion columns and a Tulu messages column, as HF datasets ship them" {
            let dir = tempDir ()
            let flat = Path.Combine(dir, "train.parquet")
            writeParquet flat [ PromptRow(prompt = "2+2=", completion = " 4"); PromptRow(prompt = "3+3=", completion = " 6") ]
            let ex = InstructionData.Read(flat, DataFormat.Jsonl)
            Expect.equal [ for e in ex -> e.Prompt, e.Completion ] [ "2+2=", " 4"; "3+3=", " 6" ] "rows"
            let chat = Path.Combine(dir, "chat.parquet")
            let row (u: string) (a: string) =
                ParquetData.MessageRow(messages = Collections.Generic.List [ ParquetData.Message(role = "user", content = u); ParquetData.Message(role = "assistant", content = a) ])
            writeParquet chat [ row "Hi" "Yo"; row "Q" "A" ]
            let conv = InstructionData.Read(chat, DataFormat.Tulu)
            Expect.equal conv.Count 2 "two conversations"
            Expect.equal conv[0].Text "<|user|>\nHi\n<|assistant|>\nYo" "Tulu template"
            let e = throwsWith<DataFormatException> (fun () -> InstructionData.Read(flat, DataFormat.Alpaca) |> ignore)
            Expect.stringContains e.Message "\"instruction\"" "names the missing column"
            Expect.stringContains e.Message "prompt, completion" "lists the columns that exist"
        }
    ]
