/// The harness's BOS setting (`CausalLM.BosPolicy`, `mofo eval --add-bos`) on the real stories260K model and real ARC-Easy
/// items: auto is today's scoring (checked against an independent forward pass), false scores the context without BOS as
/// lm-evaluation-harness 0.4.2 does (token ids checked against the tokenizer's own encoding), true equals auto for a
/// tokenizer that adds BOS by default; the results file records the setting and reads back.
module MoFO.Tests.EvaluationBos

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open MoFO
open MoFO.Dsl
open MoFO.Evaluation
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private stories () = requireAsset DataRoot.Assets.Stories260K

/// The first ARC-Easy test items (0-shot: "Question: …\nAnswer:" and " choice").
let private arcItems (n: int) = Arc.Read(requireAsset DataRoot.Assets.ArcEasy) |> Seq.truncate n |> Seq.toList

let private requests (items: Data.McItem list) =
    let mc = MultipleChoiceEvaluator()
    [ for item in items do
        let context = mc.BuildContext(item, [])
        for c in item.Choices -> LogLikelihoodRequest(context, mc.TargetDelimiter + c) ]

/// Per-choice log-likelihoods of the items under a policy (None: the model as loaded, the default path).
let private scores (policy: BosPolicy option) (items: Data.McItem list) =
    use model = ModelLoader.Load(stories ())
    policy |> Option.iter (fun p -> model.BosPolicy <- p)
    let summary = MultipleChoiceEvaluator().Evaluate(model, "arc_easy", ResizeArray items)
    [ for r in summary.Items -> Seq.toList r.LogLikelihoods ]

/// Sum of log p(continuation | context) by one unbatched forward pass of the tokens, apart from the scorer.
let private byHand (model: CausalLM) (context: int[]) (continuation: int[]) =
    use _ng = torch.no_grad ()
    use _scope = torch.NewDisposeScope()
    let ids = Array.append context continuation |> Array.map int64
    let lp = model.Logits(torch.tensor(ids).unsqueeze(0L)).select(0, 0L).``to``(torch.float32).log_softmax(-1L)
    continuation |> Array.mapi (fun k t -> float (lp[int64 (context.Length - 1 + k), int64 t].item<float32> ())) |> Array.sum

let private evalJson (args: string list) =
    use dir = new TempDir()
    let out = dir.File "eval.json"
    let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| yield "eval"; yield "--model"; yield stories (); yield "--task"; yield "arc-easy"; yield! args; yield "--output"; yield out |])
    Expect.equal code 0 $"exit code; stderr: {err}"
    let root = using (JsonDocument.Parse(File.ReadAllText out)) (fun doc -> doc.RootElement.Clone())
    let run = Experiment.fromLmEval "stories260K" out
    root, run

[<Tests>]
let tests =
    testSequenced <| testList "Evaluation.Bos" [
        test "auto: the default path is auto, and auto scores BOS + context as today (an independent forward pass agrees)" {
            let items = arcItems 6
            let byDefault = scores None items
            Expect.equal (scores (Some BosPolicy.Auto) items) byDefault "auto set explicitly: exactly the default path's log-likelihoods"
            use model = ModelLoader.Load(stories ())
            Expect.equal model.BosPolicy BosPolicy.Auto "the default"
            let tok = model.Tokenizer
            Expect.isTrue tok.AddsBosByDefault "stories260K's SentencePiece adds BOS by default"
            let expected =
                [ for r in requests items ->
                    // today's tokenization, by hand: encode(context) with BOS; the continuation is what encode(whole) adds
                    let ctx = tok.Encode(r.Context, true) |> Seq.toArray
                    let whole = tok.Encode(r.Context + r.Continuation, true) |> Seq.toArray
                    Expect.equal (model.SplitRequest r) (struct (ctx, whole[ctx.Length..])) $"tokens of {r.Continuation}"
                    Expect.equal ctx[0] tok.BosId.Value "BOS first"
                    byHand model ctx whole[ctx.Length..] ]
            let got = List.concat byDefault
            Expect.equal got.Length expected.Length "one log-likelihood per choice"
            for g, e in List.zip got expected do
                Expect.floatClose { absolute = 1e-4; relative = 1e-5 } g e "the scorer against an unbatched forward pass"
        }

        test "never: false scores the context without BOS (the tokenizer's own encode(text, addBos: false)); the log-likelihoods differ from true" {
            let items = arcItems 6
            use model = ModelLoader.Load(stories ())
            model.BosPolicy <- BosPolicy.Never
            let tok = model.Tokenizer
            for r in requests items do
                let struct (ctx, cont) = model.SplitRequest r
                let ownCtx = tok.Encode(r.Context, addBos = false) |> Seq.toArray
                let ownWhole = tok.Encode(r.Context + r.Continuation, addBos = false) |> Seq.toArray
                Expect.equal ctx ownCtx "the context: the tokenizer's encoding without BOS"
                Expect.equal cont ownWhole[ownCtx.Length..] "the continuation: what encode(whole) adds after it"
                Expect.notEqual ctx[0] tok.BosId.Value "no BOS"
            // lm-evaluation-harness 0.4.2: an empty context is [eot_token_id] (EOS)
            let struct (ctx, _) = model.SplitRequest(LogLikelihoodRequest("", "Once upon a time"))
            Expect.equal ctx [| tok.EosId.Value |] "an empty context starts from EOS, as 0.4.2's loglikelihood"
            let never = scores (Some BosPolicy.Never) items |> List.concat
            let always = scores (Some BosPolicy.Always) items |> List.concat
            let largest = List.map2 (fun a b -> abs (a - b)) never always |> List.max
            Expect.isGreaterThan largest 0.01 "some choice's log-likelihood changes without BOS"
            use _ng = torch.no_grad ()
            let manual = ResizeArray<float>()
            for r in requests (List.truncate 2 items) do
                let struct (c, k) = model.SplitRequest r
                manual.Add(byHand model c k)
            let got = model.LogLikelihoods(ResizeArray(requests (List.truncate 2 items))) |> Seq.map (fun x -> x.LogLikelihood) |> Seq.toList
            for g, e in Seq.zip got manual do
                Expect.floatClose { absolute = 1e-4; relative = 1e-5 } g e "false's scores: the forward pass of the tokens without BOS"
        }

        test "always: true equals auto for a tokenizer that adds BOS by default (requests, empty contexts, rolling texts)" {
            let items = arcItems 6
            Expect.equal (scores (Some BosPolicy.Always) items) (scores (Some BosPolicy.Auto) items) "the same log-likelihoods"
            use auto = ModelLoader.Load(stories ())
            use always = ModelLoader.Load(stories ())
            always.BosPolicy <- BosPolicy.Always
            for r in LogLikelihoodRequest("", "Once upon a time") :: requests items do
                Expect.equal (always.SplitRequest r) (auto.SplitRequest r) $"the tokens of '{r.Context}'"
            let texts = ResizeArray [ "Once upon a time, there was a little girl named Lily."; "The sun is hot." ]
            let lls (m: CausalLM) = m.TextLogLikelihoods texts |> Seq.map (fun x -> x.LogLikelihood) |> Seq.toList
            Expect.equal (lls always) (lls auto) "rolling log-likelihoods"
            // false: 0.4.2's rolling windows start from eot_token_id (EOS) instead of BOS
            use never = ModelLoader.Load(stories ())
            never.BosPolicy <- BosPolicy.Never
            let eosFirst = byHand never [| never.Tokenizer.EosId.Value |] (never.Tokenizer.Encode(texts[1], false) |> Seq.toArray)
            let neverLls, autoLls = lls never, lls auto
            Expect.floatClose { absolute = 1e-4; relative = 1e-5 } neverLls[1] eosFirst "false: rolling from EOS"
            Expect.notEqual neverLls[1] autoLls[1] "and so different from auto's"
        }

        test "config: the results file records add_bos (auto by default) and reads back as a row" {
            let root, run = evalJson [ "--limit"; "5"; "--add-bos"; "false" ]
            Expect.equal (root.GetProperty("config").GetProperty("add_bos").GetString()) "false" "the setting"
            Expect.equal run[Measure.ArcEasy] (root.GetProperty("metrics").GetProperty("acc_norm").GetDouble()) "read back: acc_norm"
            let root, _ = evalJson [ "--limit"; "5" ]
            Expect.equal (root.GetProperty("config").GetProperty("add_bos").GetString()) "auto" "the default"
            Expect.equal (LmEval.bosText BosPolicy.Always) "true" "true's spelling"
        }

        test "cli: --add-bos parses auto/true/false (any case); a bad value is one line, exit 2; --help lists it" {
            let parse (args: string list) =
                let a = Argu.ArgumentParser.Create<MoFO.Dsl.Cli.Eval.EvalArgs>().ParseCommandLine(List.toArray ([ "--model"; "m"; "--task"; "arc-easy" ] @ args))
                MoFO.Dsl.Cli.Flag.getOr MoFO.Dsl.Cli.Flags.addBos BosPolicy.Auto a
            Expect.equal (parse []) BosPolicy.Auto "default"
            Expect.equal (parse [ "--add-bos"; "auto" ]) BosPolicy.Auto "auto"
            Expect.equal (parse [ "--add-bos"; "true" ]) BosPolicy.Always "true"
            Expect.equal (parse [ "--add-bos"; "FALSE" ]) BosPolicy.Never "false"
            let code, out, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "eval"; "--model"; "m"; "--task"; "arc-easy"; "--add-bos"; "maybe" |])
            Expect.equal code 2 "exit 2"
            Expect.equal out "" "nothing on stdout"
            Expect.equal (err.TrimEnd('\n')) "mofo: --add-bos: 'maybe' is not one of auto, true, false" "one line"
            let code, out, _ = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "eval"; "--help" |])
            Expect.equal code 0 "--help"
            Expect.stringContains out "--add-bos" "listed"
        }
    ]
