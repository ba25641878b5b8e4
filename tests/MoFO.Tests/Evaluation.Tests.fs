module MoFO.Tests.Evaluation.Harness

open System
open System.IO
open Expecto
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Tests.Fixtures
open MoFO.Tests.Evaluation.Fakes

let private tempFile (name: string) (content: string) =
    let dir = Directory.CreateTempSubdirectory("mofo-test-").FullName
    let p = Path.Combine(dir, name)
    File.WriteAllText(p, content)
    p

[<Tests>]
let multipleChoice =
    testList "Evaluation.MultipleChoice" [
        test "acc takes the argmax log-likelihood, acc_norm divides by the choice's length in characters" {
            // Choice " bb" has the larger raw LL, "aaaaaaaa" the larger LL per character.
            let model = byContinuation [ " aaaaaaaa", -8.0; " bb", -6.0 ]
            let item = McItem("q1", "Q:", [| "aaaaaaaa"; "bb" |], 0)
            let s = MultipleChoiceEvaluator().Evaluate(model, "t", [| item |])
            Expect.equal s.Items[0].Predicted 1 "acc picks the larger raw LL"
            Expect.equal s.Items[0].PredictedNorm 0 "acc_norm: -8/8 = -1 beats -6/2 = -3"
            Expect.equal s.Acc 0.0 "acc"
            Expect.equal s.AccNorm 1.0 "acc_norm"
            Expect.equal s.Chance 0.5 "chance with two choices"
        }

        test "requests go to the model longest first and results map back to their items" {
            let items = [| for i in 0 .. 9 -> McItem($"q{i}", String('x', i + 1), [| "yes"; "no" |], i % 2) |]
            // Scores favour the gold choice, keyed by context length, so a mix-up would lower the accuracy.
            let model =
                FakeModel((fun ctx cont ->
                    let i = ctx.Length - 1
                    if (cont = " yes") = (i % 2 = 0) then 0.0 else -1.0), (fun _ _ -> ""))
            let s = MultipleChoiceEvaluator(ChunkSize = 3).Evaluate(model, "t", items)
            Expect.equal s.Acc 1.0 "every item scored against its own requests"
            let lengths = model.Calls |> Seq.concat |> Seq.map (fun r -> r.Context.Length + r.Continuation.Length) |> Seq.toList
            Expect.equal lengths (List.sortDescending lengths) "longest first"
            Expect.equal model.Calls.Count 7 "20 requests in chunks of 3"
        }

        test "the few-shot context follows the harness: description, shots with target and delimiters, question" {
            let shot1 = McItem("d1", "Q1?\nAnswer:", [| "A"; "B" |], 1, "Desc.\n\n", "g")
            let shot2 = McItem("d2", "Q2?\nAnswer:", [| "A"; "B" |], 0, "Desc.\n\n", "g")
            let item = McItem("t1", "Q3?\nAnswer:", [| "A"; "B" |], 0, "Desc.\n\n", "g")
            let ev = MultipleChoiceEvaluator(Shots = 2, Sampler = FewShotSampler.FirstN)
            let ctx = ev.BuildContext(item, ev.ShotsFor(item, [| shot1; shot2 |]))
            Expect.equal ctx "Desc.\n\nQ1?\nAnswer: B\n\nQ2?\nAnswer: A\n\nQ3?\nAnswer:" "context"
        }

        test "seeded shots never include the item and are reproducible" {
            let pool = [| for i in 0 .. 19 -> McItem($"p{i}", $"c{i}", [| "a"; "b" |], 0) |]
            let ev = MultipleChoiceEvaluator(Shots = 5)
            let a = ev.ShotsFor(pool[3], pool) |> Seq.map (fun i -> i.Id) |> Seq.toList
            let b = ev.ShotsFor(pool[3], pool) |> Seq.map (fun i -> i.Id) |> Seq.toList
            Expect.equal a b "same seed, same shots"
            Expect.isFalse (List.contains "p3" a) "not the item itself"
            Expect.equal (List.length (List.distinct a)) 5 "five distinct shots"
            // the same in every process: a golden draw (a per-process hash in the seed once made --shots N differ per run)
            Expect.equal a [ "p11"; "p19"; "p14"; "p6"; "p0" ] "seed 1234, item p3: the recorded shots"
            let seven = MultipleChoiceEvaluator(Shots = 3, Seed = 7).ShotsFor(pool[11], pool) |> Seq.map (fun i -> i.Id) |> Seq.toList
            Expect.equal seven [ "p6"; "p2"; "p9" ] "seed 7, item p11: the recorded shots"
        }

        test "a gold index outside the choices is an error naming the item" {
            let e = throwsWith<ArgumentException> (fun () ->
                MultipleChoiceEvaluator().Evaluate(byContinuation [], "t", [| McItem("bad", "c", [| "a" |], 3) |]) |> ignore)
            Expect.stringContains e.Message "bad" "names the item"
        }
    ]

[<Tests>]
let tasks =
    testList "Evaluation.Tasks" [
        test "MMLU: the original layout (no header, answer letter) with quoted commas and newlines" {
            let p = tempFile "college_physics_test.csv" "\"What is 1,000 + 1?\nThink.\",1001,\"1,000\",2,3,A\nSecond?,a,b,c,d,D\n"
            let items = Mmlu.ReadFile p
            Expect.equal items.Count 2 "two items"
            Expect.equal items[0].Context "What is 1,000 + 1?\nThink.\nA. 1001\nB. 1,000\nC. 2\nD. 3\nAnswer:" "template"
            Expect.equal items[0].Description "The following are multiple choice questions (with answers) about college physics.\n\n" "subject line"
            Expect.equal (List.ofSeq items[0].Choices) [ "A"; "B"; "C"; "D" ] "letter choices"
            Expect.equal items[1].Gold 3 "D → 3"
            Expect.equal items[0].Group "college_physics" "subject"
        }

        test "MMLU: the header layout with a 0-based answer index; a bad answer names file and line" {
            let p = tempFile "anatomy_dev.csv" "question,choice0,choice1,choice2,choice3,answer\nQ?,a,b,c,d,2\nQ2?,a,b,c,d,7\n"
            let e = throwsWith<DataFormatException> (fun () -> Mmlu.ReadFile p |> ignore)
            Expect.stringContains e.Message (p + ":3") "file and line"
            Expect.stringContains e.Message "0..3" "expected form"
        }

        test "MMLU: the real test and dev splits load (57 subjects, 14,042 test questions)" {
            let test = Mmlu.ReadSplit(requireAsset DataRoot.Assets.MmluTest)
            let dev = Mmlu.ReadSplit(requireAsset DataRoot.Assets.MmluDev)
            Expect.equal test.Count 14042 "test questions"
            Expect.equal (test |> Seq.map (fun i -> i.Group) |> Seq.distinct |> Seq.length) 57 "subjects"
            Expect.equal dev.Count (57 * 5) "five dev questions per subject"
        }

        test "ARC: the real files load with gold among the labels (2,376 easy, 1,170 challenge)" {
            let easy = Arc.Read(requireAsset DataRoot.Assets.ArcEasy)
            let challenge = Arc.Read(requireAsset DataRoot.Assets.ArcChallenge)
            Expect.equal easy.Count 2376 "ARC-Easy"
            Expect.equal challenge.Count 1170 "ARC-Challenge"
            Expect.stringStarts easy[0].Context "Question: " "template"
            Expect.stringEnds easy[0].Context "\nAnswer:" "template"
        }

        test "ARC: an answerKey that names no label is an error with file and line" {
            let p = tempFile "arc.jsonl" "{\"id\":\"x\",\"question\":{\"stem\":\"s\",\"choices\":[{\"text\":\"a\",\"label\":\"1\"},{\"text\":\"b\",\"label\":\"2\"}]},\"answerKey\":\"2\"}\n{\"id\":\"y\",\"question\":{\"stem\":\"s\",\"choices\":[{\"text\":\"a\",\"label\":\"A\"}]},\"answerKey\":\"C\"}\n"
            let e = throwsWith<DataFormatException> (fun () -> Arc.Read p |> ignore)
            Expect.stringContains e.Message (p + ":2") "file and line"
        }

        test "HellaSwag: the harness's preprocessing of the public format" {
            let line = """{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "HE IS", "label": 3, "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off. [title] Hi", "is holding a rubik's cube.", "starts pulling up  roofing on a roof."]}"""
            let items = HellaSwag.Read(tempFile "hs.jsonl" (line + "\n"))
            Expect.equal items[0].Context "Roof shingle removal: A man is sitting on a roof. He is" "query: label, ctx_a, capitalized ctx_b"
            Expect.equal items[0].Choices[1] "is ripping level tiles off.. Hi" "[title] → '. ', brackets dropped"
            Expect.equal items[0].Choices[3] "starts pulling up roofing on a roof." "double space collapsed"
            Expect.equal items[0].Gold 3 "label"
            Expect.equal (HellaSwag.Preprocess "  a [header] b  ") "a b" "bracket removal then one double-space collapse"
        }

        test "user MC jsonl: index, letter and text answers; a malformed line names file and line" {
            let p = tempFile "mc.jsonl" "{\"question\":\"2+2=\",\"choices\":[\"3\",\"4\"],\"answer\":1}\n{\"context\":\"c\",\"choices\":[\"x\",\"y\"],\"label\":\"B\"}\n{\"query\":\"q\",\"choices\":[\"x\",\"y\"],\"gold\":\"x\"}\n"
            let items = McJsonl.Read p
            Expect.equal [ for i in items -> i.Gold ] [ 1; 1; 0 ] "golds"
            let bad = tempFile "bad.jsonl" "{\"question\":\"q\",\"choices\":[\"x\",\"y\"],\"answer\":0}\n{not json\n"
            let e = throwsWith<DataFormatException> (fun () -> McJsonl.Read bad |> ignore)
            Expect.stringContains e.Message (bad + ":2") "file and line"
        }
    ]

[<Tests>]
let gsm8k =
    testList "Evaluation.Gsm8k" [
        test "strict extraction takes the first '#### number'" {
            Expect.equal (Gsm8k.ExtractStrict "so 5+5=10\n#### 1,234.\nQuestion") "1,234." "first match, with commas and period"
            Expect.equal (Gsm8k.ExtractStrict "#### -7 then #### 8") "-7" "negative, first"
            Expect.equal (Gsm8k.ExtractStrict "The answer is 42") "[invalid]" "no ####"
        }

        test "flexible extraction takes the last number-like match" {
            Expect.equal (Gsm8k.ExtractFlexible "She pays $1,200 and gets 3 back, so $1,197.") "$1,197." "last, with $ and period"
            Expect.equal (Gsm8k.ExtractFlexible "It is -5") "-5" "negative single digit via the second group"
            Expect.equal (Gsm8k.ExtractFlexible "no numbers here") "[invalid]" "no answer"
        }

        test "exact match after the harness's normalization" {
            Expect.isTrue (Gsm8k.Matches("$1,197.", "1197")) "commas, $ and trailing period removed"
            Expect.isTrue (Gsm8k.Matches("18", "Janet sells 9 eggs.\n#### 18")) "the reference keeps only what follows ####"
            Expect.isFalse (Gsm8k.Matches("[invalid]", "18")) "invalid never matches"
            Expect.isFalse (Gsm8k.Matches("-18", "18")) "sign matters"
            Expect.isFalse (Gsm8k.Matches("18.5", "18")) "not a prefix match"
        }

        test "prompt: five shots 'Question: …\\nAnswer: …' separated by blank lines, then the question" {
            let train = [ for i in 1 .. 10 -> Gsm8kItem($"t{i}", $"q{i}", $"a{i}\n#### {i}") ]
            let shots = Gsm8k.Shots(train, 2)
            let prompt = Gsm8k.Prompt(Gsm8kItem("x", "What?", "#### 1"), shots)
            let expected = String.Join("", [ for s in shots -> $"Question: {s.Question}\nAnswer: {s.Answer}\n\n" ]) + "Question: What?\nAnswer:"
            Expect.equal prompt expected "prompt"
            Expect.equal [ for s in Gsm8k.Shots(train, 2) -> s.Id ] [ for s in shots -> s.Id ] "fixed seed"
        }

        test "scoring a scripted model: greedy, stop strings passed, both filters" {
            let model = FakeModel((fun _ _ -> 0.0), (fun prompt options ->
                Expect.equal options.Temperature 0.0 "greedy"
                Expect.containsAll options.StopStrings [ "Question:"; "</s>"; "<|im_end|>" ] "stop strings"
                if prompt.EndsWith "Question: A?\nAnswer:" then " 2 + 2 = 4\n#### 4" else " it is 7 maybe 9"))
            let test = [ Gsm8kItem("a", "A?", "#### 4"); Gsm8kItem("b", "B?", "#### 9") ]
            let s = Gsm8k.Evaluate(model, test, [ for i in 1 .. 6 -> Gsm8kItem($"t{i}", "q", "a #### 1") ])
            Expect.equal s.StrictMatch 0.5 "only the first has ####"
            Expect.equal s.FlexibleMatch 1.0 "the last number is right in both"
        }

        test "the real GSM8K files load (1,319 test, 7,473 train) with numeric targets" {
            let test = Gsm8kData.Read(requireAsset DataRoot.Assets.Gsm8kTest)
            let train = Gsm8kData.Read(requireAsset DataRoot.Assets.Gsm8kTrain)
            Expect.equal test.Count 1319 "test"
            Expect.equal train.Count 7473 "train"
            Expect.equal (Gsm8k.Normalize test[0].Answer) "18" "Janet's ducks: the normalized target"
        }
    ]

[<Tests>]
let passAtK =
    testList "Evaluation.PassAtK" [
        test "the closed form on hand cases" {
            Expect.floatClose Accuracy.veryHigh (PassAtK.Estimate(5, 1, 1)) 0.2 "1 of 5, k=1"
            Expect.floatClose Accuracy.veryHigh (PassAtK.Estimate(4, 2, 2)) (1.0 - 1.0 / 6.0) "1 - C(2,2)/C(4,2)"
            Expect.floatClose Accuracy.veryHigh (PassAtK.Estimate(10, 3, 5)) (1.0 - 21.0 / 252.0) "1 - C(7,5)/C(10,5)"
            Expect.equal (PassAtK.Estimate(10, 0, 10)) 0.0 "none pass"
            Expect.equal (PassAtK.Estimate(10, 1, 10)) 1.0 "n - c < k"
        }

        test "matches the binomial formula for many n, c, k" {
            let choose (n: int) (k: int) = if k > n then 0.0 else Seq.fold (fun acc i -> acc * float (n - k + i) / float i) 1.0 (seq { 1 .. k })
            for n in 1 .. 20 do
                for c in 0 .. n do
                    for k in 1 .. n do
                        let expected = 1.0 - choose (n - c) k / choose n k
                        Expect.floatClose Accuracy.high (PassAtK.Estimate(n, c, k)) expected $"n={n} c={c} k={k}"
        }

        test "bad arguments are rejected with the values" {
            let e = throwsWith<ArgumentException> (fun () -> PassAtK.Estimate(5, 1, 6) |> ignore)
            Expect.stringContains e.Message "k = 6" "names k"
            throwsWith<ArgumentException> (fun () -> PassAtK.Estimate(5, 6, 1) |> ignore) |> ignore
        }
    ]

[<Tests>]
let forgetting =
    testList "Evaluation.Forgetting" [
        test "story cloze: context without the last sentence, the true ending among others' endings" {
            let samples =
                [ for i in 0 .. 5 -> $"Tom{i} went out. He saw a dog{i}. The dog{i} ran. Tom{i} was happy. And then" ]
            let items = Forgetting.StoryCloze(samples, 3)
            Expect.equal items.Count 6 "one item per sample"
            for i, it in List.indexed (List.ofSeq items) do
                Expect.equal it.Context $"Tom{i} went out. He saw a dog{i}. The dog{i} ran." "context: all complete sentences but the last"
                Expect.equal it.Choices[it.Gold] $"Tom{i} was happy." "gold is the true ending"
                Expect.equal it.Choices.Count 4 "three distractors"
                Expect.equal (Seq.distinct it.Choices |> Seq.length) 4 "distinct"
        }

        test "loss: token-weighted mean NLL and perplexity" {
            let model = FakeModel((fun _ _ -> 0.0), (fun _ _ -> ""))
            let l = Forgetting.Loss(model, [ "ab"; "cdef" ])
            Expect.floatClose Accuracy.veryHigh l.MeanTokenNll 1.0 "each char costs 1 nat"
            Expect.equal l.Tokens 6L "tokens"
            Expect.floatClose Accuracy.veryHigh l.Perplexity (exp 1.0) "ppl"
        }

        test "parameter distance: L2, relative and per tensor; mismatches are clear errors" {
            let t (xs: float32[]) = TorchSharp.torch.tensor xs
            let a = dict [ "w", t [| 3.0f; 0.0f |]; "b", t [| 4.0f |] ]
            let b = dict [ "w", t [| 3.0f; 1.0f |]; "b", t [| 6.0f |] ]
            let d = ParameterDistance.Compute(Collections.Generic.Dictionary a, Collections.Generic.Dictionary b)
            Expect.floatClose Accuracy.veryHigh d.L2 (sqrt 5.0) "sqrt(1 + 4)"
            Expect.floatClose Accuracy.veryHigh d.Relative (sqrt 5.0 / 5.0) "relative to ||base|| = 5"
            Expect.floatClose Accuracy.veryHigh d.PerTensorL2["b"] 2.0 "per tensor"
            let c = dict [ "w", t [| 3.0f |]; "b", t [| 4.0f |] ]
            let e = throwsWith<ArgumentException> (fun () -> ParameterDistance.Compute(Collections.Generic.Dictionary a, Collections.Generic.Dictionary c) |> ignore)
            Expect.stringContains e.Message "tensor w" "names the tensor"
        }
    ]
