/// lm-evaluation-harness's formats from `mofo eval --output … --log-samples`, checked against the harness's schema as
/// written down here (v0.4: `lm_eval/evaluator.py` builds the results dict, `lm_eval/loggers/evaluation_tracker.py`
/// writes it and the per-task `samples_<task>_<date>.jsonl`; the per-sample fields come from
/// `lm_eval/evaluator.py`'s `example` dict: doc_id, doc, target, arguments, resps, filtered_resps, filter, metrics,
/// doc_hash, prompt_hash, target_hash, and one key per metric).
module MoFO.Tests.LmEval

open System
open System.IO
open System.Text.Json
open Expecto
open MoFO
open MoFO.Dsl
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

/// The top-level keys of a harness results file.
let private topLevel = [ "results"; "group_subtasks"; "configs"; "versions"; "n-shot"; "higher_is_better"; "n-samples"; "config"; "date"; "total_evaluation_time_seconds" ]
/// The keys of every line of a samples file.
let private sampleKeys = [ "doc_id"; "doc"; "target"; "arguments"; "resps"; "filtered_resps"; "filter"; "metrics"; "doc_hash"; "prompt_hash"; "target_hash" ]

let private has (o: JsonElement) (keys: string list) (what: string) =
    for k in keys do Expect.isTrue (o.TryGetProperty(k) |> fst) $"{what} has \"{k}\""

let private samplesOf (dir: string) (task: string) =
    let files = Directory.GetFiles(dir, $"samples_{task}_*.jsonl")
    Expect.equal files.Length 1 $"one samples file for {task}"
    File.ReadAllLines files[0] |> Array.map (fun l -> JsonDocument.Parse(l).RootElement)

[<Tests>]
let tests =
    testSequenced <| testList "LmEval" [
        test "LmEval.arc: results.arc_easy holds acc, acc_stderr, acc_norm (filter none), n-samples and n-shot; one sample line per document" {
            use dir = new TempDir()
            let out = dir.File "r.json"
            let code, text, err = mofo [ "eval"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--task"; "arc-easy"; "--limit"; "50"; "--output"; out; "--log-samples" ]
            Expect.equal code 0 err
            let r = JsonDocument.Parse(File.ReadAllText out).RootElement
            has r topLevel "the results file"
            let arc = r.GetProperty("results").GetProperty("arc_easy")
            has arc [ "alias"; "acc,none"; "acc_stderr,none"; "acc_norm,none"; "acc_norm_stderr,none" ] "results.arc_easy"
            let own = r.GetProperty("metrics")
            Expect.equal (arc.GetProperty("acc,none").GetDouble()) (own.GetProperty("acc").GetDouble()) "the same acc as mofo's own record"
            Expect.equal (arc.GetProperty("acc_norm,none").GetDouble()) (own.GetProperty("acc_norm").GetDouble()) "the same acc_norm"
            Expect.equal (r.GetProperty("n-samples").GetProperty("arc_easy").GetProperty("effective").GetInt32()) 50 "effective"
            Expect.equal (r.GetProperty("n-samples").GetProperty("arc_easy").GetProperty("original").GetInt32()) 2376 "original: ARC-Easy's test split"
            Expect.equal (r.GetProperty("n-shot").GetProperty("arc_easy").GetInt32()) 0 "0-shot"
            Expect.isTrue (r.GetProperty("higher_is_better").GetProperty("arc_easy").GetProperty("acc").GetBoolean()) "higher is better"
            let lines = samplesOf dir.Path "arc_easy"
            Expect.equal lines.Length 50 "one line per document"
            for l in lines do has l (sampleKeys @ [ "acc"; "acc_norm" ]) "a sample line"
            let first = lines[0]
            Expect.equal (first.GetProperty("filter").GetString()) "none" "filter"
            Expect.equal (first.GetProperty("resps").GetArrayLength()) (first.GetProperty("doc").GetProperty("choices").GetArrayLength()) "one response per choice"
            Expect.equal (first.GetProperty("prompt_hash").GetString()) (LmEval.sha256 (first.GetProperty("arguments").GetProperty("gen_args_0").GetProperty("arg_0").GetString())) "prompt_hash is the context's SHA-256"
            let meanAcc = lines |> Array.averageBy (fun l -> l.GetProperty("acc").GetDouble())
            Expect.floatClose Accuracy.veryHigh meanAcc (arc.GetProperty("acc,none").GetDouble()) "the samples' acc average to the result"
        }

        test "LmEval.gsm8k: exact_match under the strict-match and flexible-extract filters; a sample line per document and filter" {
            use dir = new TempDir()
            let out = dir.File "r.json"
            let code, _, err = mofo [ "eval"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--task"; "gsm8k"; "--limit"; "3"; "--max-new-tokens"; "16"; "--output"; out; "--log-samples" ]
            Expect.equal code 0 err
            let r = JsonDocument.Parse(File.ReadAllText out).RootElement
            has (r.GetProperty("results").GetProperty("gsm8k"))
                [ "alias"; "exact_match,strict-match"; "exact_match_stderr,strict-match"; "exact_match,flexible-extract"; "exact_match_stderr,flexible-extract" ] "results.gsm8k"
            Expect.equal (r.GetProperty("n-shot").GetProperty("gsm8k").GetInt32()) 5 "5-shot"
            let lines = samplesOf dir.Path "gsm8k"
            Expect.equal lines.Length 6 "3 documents × 2 filters"
            for l in lines do has l (sampleKeys @ [ "exact_match" ]) "a sample line"
            Expect.equal (lines |> Array.map (fun l -> l.GetProperty("filter").GetString()) |> Array.distinct |> Array.sort) [| "flexible-extract"; "strict-match" |] "both filters"
        }

        test "LmEval.humaneval: pass@1 under the create_test filter; a sample line per problem with its completions" {
            use dir = new TempDir()
            let out = dir.File "r.json"
            let code, _, err = mofo [ "eval"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--task"; "humaneval"; "--limit"; "2"; "--samples"; "2"; "--k"; "1"
                                      "--max-new-tokens"; "16"; "--output"; out; "--log-samples" ]
            Expect.equal code 0 err
            let r = JsonDocument.Parse(File.ReadAllText out).RootElement
            has (r.GetProperty("results").GetProperty("humaneval")) [ "alias"; "pass@1,create_test"; "pass@1_stderr,create_test" ] "results.humaneval"
            let lines = samplesOf dir.Path "humaneval"
            Expect.equal lines.Length 2 "one line per problem"
            for l in lines do
                has l (sampleKeys @ [ "pass@1" ]) "a sample line"
                Expect.equal (l.GetProperty("resps").[0].GetArrayLength()) 2 "two completions"
                Expect.equal (l.GetProperty("filter").GetString()) "create_test" "filter"
        }

        test "LmEval.read: a harness results file becomes a row of measures in the DSL; --log-samples without --output is refused" {
            use dir = new TempDir()
            let file = dir.File "harness.json"
            // the shape the harness writes (abridged)
            File.WriteAllText(file, """{"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.01, "acc_norm,none": 0.45, "acc_norm_stderr,none": 0.01},
                                         "mmlu": {"alias": "mmlu", "acc,none": 0.3, "acc_stderr,none": 0.004},
                                         "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.12}},
                                         "n-shot": {"arc_easy": 0}, "config": {"model": "hf"}}""")
            let run = Experiment.fromLmEval "a model" file
            Expect.equal run[Measure.ArcEasy] 0.45 "ARC-easy: acc_norm, as MoFO.NET reports it"
            Expect.equal run[Measure.Mmlu] 0.3 "MMLU: acc"
            Expect.equal run[Measure.Gsm8k] 0.1 "GSM8K: strict match"
            Expect.isTrue (Double.IsNaN run[Measure.HumanEval]) "absent: NaN"
            let code, _, err = mofo [ "eval"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--task"; "arc-easy"; "--log-samples" ]
            Expect.equal code 2 err
            Expect.stringContains err "--output" "the flag to add"
        }
    ]
