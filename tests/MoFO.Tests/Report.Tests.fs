/// `mofo train --report`: one real 8-step MoFO fine-tune of stories260K on DPR with the report, whose numbers must be
/// the numbers `mofo eval` gives for the same measures, run separately.
module MoFO.Tests.Report

open System
open System.IO
open System.Text.Json
open Expecto
open MoFO
open MoFO.Tests.Fixtures

let private stories () = requireAsset DataRoot.Assets.Stories260K
let private dprTrain () = requireAsset DataRoot.Assets.DprTrain

/// The run (once for all tests): its folder and its console output.
let private run =
    lazy (
        let dir = Directory.CreateTempSubdirectory("mofo-report-").FullName
        let output = Path.Combine(dir, "run")
        let argv =
            [| "train"; "--model"; stories (); "--data"; dprTrain (); "--format"; "dpr"; "--method"; "mofo"; "--lr"; "1e-3"
               "--steps"; "8"; "--batch-size"; "8"; "--output"; output; "--report"; "--cache"; Path.Combine(dir, "report-cache") |]
        let code, stdout, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run argv)
        if code <> 0 then failtestf "mofo train --report exited %d; stderr: %s" code err
        dir, output, stdout)

let private reportJson () =
    let _, output, _ = run.Force()
    using (JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "report.json")))) (fun d -> d.RootElement.Clone())

let private row (root: JsonElement) (key: string) =
    root.GetProperty("measures").EnumerateArray() |> Seq.tryFind (fun m -> m.GetProperty("key").GetString() = key)
    |> Option.defaultWith (fun () -> failtestf "report.json has no measure %s" key)

/// `mofo eval` with these arguments (plus --output); returns the metrics of its JSON.
let private evalCli (args: string list) =
    let out = Path.Combine(Directory.CreateTempSubdirectory("mofo-report-eval-").FullName, "eval.json")
    let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (Array.ofList ("eval" :: args @ [ "--output"; out ])))
    Expect.equal code 0 $"""mofo eval {String.Join(" ", args)}: exit code; stderr: {err}"""
    let root = using (JsonDocument.Parse(File.ReadAllText out)) (fun d -> d.RootElement.Clone())
    fun (k: string) -> root.GetProperty("metrics").GetProperty(k).GetDouble()

let private same (what: string) (report: float) (eval: float) =
    Expect.isTrue (report = eval || abs (report - eval) <= 1e-9) $"{what}: report {report:R} vs mofo eval {eval:R}"

[<Tests>]
let tests =
    testSequenced <| testList "Report" [
        test "per-layer distance groups HF tensor names by layer (root of summed squares), in model order" {
            let perTensor =
                [ "model.embed_tokens.weight", 3.0; "model.layers.10.mlp.up_proj.weight", 1.0; "model.layers.2.self_attn.q_proj.weight", 3.0
                  "model.layers.2.mlp.down_proj.weight", 4.0; "model.norm.weight", 0.5; "lm_head.weight", 2.0
                  "gpt_neox.layers.0.attention.dense.bias", 1.0 ]
            let groups = MoFO.Dsl.Report.perLayer perTensor
            Expect.equal (List.map fst groups) [ "embeddings"; "layer 0"; "layer 2"; "layer 10"; "final norm"; "head" ] "groups and order"
            Expect.equal (groups |> List.find (fun (g, _) -> g = "layer 2") |> snd) 5.0 "sqrt(3² + 4²)"
            Expect.equal (MoFO.Dsl.Report.layerOf "gpt_neox.final_layer_norm.bias") "final norm" "GPT-NeoX final norm"
            Expect.equal (MoFO.Dsl.Report.layerOf "embed_out.weight") "head" "GPT-NeoX head"
        }

        test "a bad --report-suite value exits 2 naming the flag, before any training" {
            let out = Path.Combine(Directory.CreateTempSubdirectory("mofo-report-bad-").FullName, "run")
            let argv = [| "train"; "--model"; stories (); "--data"; dprTrain (); "--format"; "dpr"; "--output"; out; "--report"; "--report-suite"; "huge" |]
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run argv)
            Expect.equal code 2 "exit code"
            Expect.stringContains err "--report-suite: 'huge'" "names the flag and the value"
            Expect.stringContains err "is not one of tiny, paper, auto" "says what is expected"
            Expect.isFalse (Directory.Exists out) "nothing written"
        }

        test "--report-suite without --report is an error naming both flags" {
            let out = Path.Combine(Directory.CreateTempSubdirectory("mofo-report-bad-").FullName, "run")
            let argv = [| "train"; "--model"; stories (); "--data"; dprTrain (); "--format"; "dpr"; "--output"; out; "--report-suite"; "tiny" |]
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run argv)
            Expect.equal code 2 "exit code"
            Expect.stringContains err "--report-suite configures the report: add --report" "message"
        }

        test "the report's numbers equal mofo eval's on the base and the fine-tuned model (pretrain-proxy, story-cloze, distance)" {
            let dir, output, stdout = run.Force()
            let root = reportJson ()
            let tuned = Path.Combine(output, "model")
            let evalCache = Path.Combine(dir, "eval-cache")   // a separate cache: the samples are regenerated by mofo eval
            let check (key: string) (task: string) (metric: string) =
                let r = row root key
                for who, model in [ "base", stories (); "fineTuned", tuned ] do
                    let args = [ "--model"; model; "--task"; task; "--base"; stories (); "--samples"; "64"; "--max-new-tokens"; "100" ]
                    let command = r.GetProperty(if who = "base" then "baseCommand" else "command").GetString()
                    Expect.equal command ("mofo eval " + String.Join(" ", args)) $"{key}: the {who} command is the one run here"
                    let get = evalCli (args @ [ "--cache"; evalCache ])
                    same $"{key} ({who})" (r.GetProperty(who).GetDouble()) (get metric)
            check "pretrain_proxy_nll" "pretrain-proxy" "pretrain_proxy_nll"
            check "story_cloze" "story-cloze" "acc_norm"
            let d = row root "distance_l2"
            Expect.equal (d.GetProperty("command").GetString()) $"mofo eval --model {tuned} --task distance --base {stories ()}" "distance command"
            let get = evalCli [ "--model"; tuned; "--task"; "distance"; "--base"; stories () ]
            same "distance_l2" (d.GetProperty("fineTuned").GetDouble()) (get "l2")
            Expect.equal (d.GetProperty("base").ValueKind) JsonValueKind.Null "no distance on the base model"
            Expect.stringContains stdout "pretrain-proxy NLL" "the table is printed"
            Expect.stringContains stdout "report.html" "the files are named"
        }

        test "report.json has every measure of the tiny suite with DPR's task measures, deltas and distances" {
            let _, output, _ = run.Force()
            let root = reportJson ()
            Expect.equal (root.GetProperty("suite").GetString()) "tiny" "260K parameters: the tiny suite"
            let keys = [ for m in root.GetProperty("measures").EnumerateArray() -> m.GetProperty("key").GetString() ]
            Expect.equal keys [ "pretrain_proxy_nll"; "story_cloze"; "greedy_intact"; "distance_l2"; "task_loss"; "task_token_acc"; "task_acc" ] "measures"
            // the same numbers in lm-evaluation-harness's results format, one file per model
            for file in [ "lm_eval_results_base.json"; "lm_eval_results_tuned.json" ] do
                use h = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, file)))
                let story = h.RootElement.GetProperty("results").GetProperty("story_cloze")
                Expect.isTrue (story.TryGetProperty("acc_norm,none") |> fst) $"{file}: story_cloze acc_norm"
            use tuned = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "lm_eval_results_tuned.json")))
            Expect.equal (tuned.RootElement.GetProperty("results").GetProperty("story_cloze").GetProperty("acc_norm,none").GetDouble())
                ((row root "story_cloze").GetProperty("fineTuned").GetDouble()) "the report's story cloze"
            for m in root.GetProperty("measures").EnumerateArray() do
                let key = m.GetProperty("key").GetString()
                let ft = m.GetProperty("fineTuned").GetDouble()
                Expect.isFalse (Double.IsNaN ft) $"{key}: a fine-tuned value"
                if key <> "distance_l2" then
                    let b = m.GetProperty("base").GetDouble()
                    same $"{key} delta" (m.GetProperty("delta").GetDouble()) (ft - b)
            Expect.equal ((row root "greedy_intact").GetProperty("base").GetDouble()) 1.0 "the base model agrees with itself"
            Expect.isFalse ((row root "task_loss").GetProperty("higherIsBetter").GetBoolean()) "lower loss is better"
            // the task loss is the trainer's held-out loss (same examples, same masking)
            let summary = using (JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "train_summary.json")))) (fun d -> d.RootElement.Clone())
            let heldOut = summary.GetProperty("evalLoss").GetDouble()
            Expect.floatClose Accuracy.medium ((row root "task_loss").GetProperty("fineTuned").GetDouble()) heldOut "task loss = trainer's held-out loss"
            let l2 = (row root "distance_l2").GetProperty("fineTuned").GetDouble()
            let layers = [ for p in root.GetProperty("perLayerL2").EnumerateObject() -> p.Name, p.Value.GetDouble() ]
            Expect.equal (List.map fst layers) [ "embeddings"; "layer 0"; "layer 1"; "layer 2"; "layer 3"; "layer 4"; "final norm" ] "stories260K's layers (tied head)"
            Expect.floatClose Accuracy.high (sqrt (layers |> List.sumBy (fun (_, d) -> d * d))) l2 "per-layer distances add up (in squares) to the total"
            let tensors = [ for p in root.GetProperty("perTensorL2").EnumerateObject() -> p.Value.GetDouble() ]
            Expect.floatClose Accuracy.high (sqrt (tensors |> List.sumBy (fun d -> d * d))) l2 "per-tensor distances add up to the total"
        }

        test "report.html is self-contained: plotly.js embedded, the table, curves and distance charts" {
            let _, output, _ = run.Force()
            let html = File.ReadAllText(Path.Combine(output, "report.html"))
            Expect.stringContains html "plotly.js v" "plotly.js is embedded"
            Expect.isFalse (Text.RegularExpressions.Regex.IsMatch(html, "<script[^>]*src=")) "no external script (opens offline)"
            Expect.stringContains html "<table id=\"forgetting-table\">" "the table"
            for name in [ "pretrain-proxy NLL"; "story-cloze"; "greedy intact"; "L2 from base"; "task loss"; "task acc" ] do
                Expect.stringContains html name $"row {name}"
            for m in (reportJson ()).GetProperty("measures").EnumerateArray() do
                match m.GetProperty("verdict").GetString() with
                | "better" | "worse" as v -> Expect.stringContains html $"class=\"{v}\"" $"a {v} delta is coloured"
                | _ -> ()
            for title in [ "Training loss"; "Distance from the base weights"; "Fraction of entries updated per step"; "per layer"; "per tensor" ] do
                Expect.stringContains html title $"chart {title}"
            Expect.equal (html.Split("<!-- Plotly chart will be drawn").Length - 1) 5 "five charts (three curves, two distance bars)"
        }
    ]
