/// The comparisons users run beside MoFO: weight averaging with the base (WiSE-FT, `mofo average`) and the KL
/// divergence of a fine-tuned model from its base (`kl-to-base`).
module MoFO.Tests.Comparisons

open System
open System.IO
open Expecto
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Evaluation
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private mofo (args: string list) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run (List.toArray args))

let private perturbed (dir: string) (scale: float) = perturbedStories dir 7UL scale
let private weights = weightsOf

[<Tests>]
let tests =
    testSequenced <| testList "Comparisons" [
        test "Comparisons.average: t = 0 and t = 1 give the base and the tuned weights exactly; t = 0.5 the midpoint" {
            use dir = new TempDir()
            let basePath = requireAsset DataRoot.Assets.Stories260K
            let tuned = perturbed (dir.File "tuned") 0.01
            let w0, w1 = weights basePath, weights tuned
            for t, expect in [ 0.0, w0; 1.0, w1 ] do
                let out = dir.File $"avg-{t}"
                let code, _, err = mofo [ "average"; "--base"; basePath; "--tuned"; tuned; "--t"; string t; "--output"; out ]
                Expect.equal code 0 err
                let w = weights out
                for KeyValue (k, v) in expect do Expect.equal w[k] v $"t = {t}: {k} exactly"
            let out = dir.File "avg-half"
            let code, _, err = mofo [ "average"; "--base"; basePath; "--tuned"; tuned; "--output"; out ]
            Expect.equal code 0 err
            let w = weights out
            for KeyValue (k, v) in w do
                let a, b = w0[k], w1[k]
                // float32 arithmetic: within two units in the last place of the exact midpoint
                let worst = Array.init v.Length (fun i -> let mid = 0.5 * (float a[i] + float b[i]) in abs (float v[i] - mid) / max (abs mid) 1e-30) |> Array.max
                Expect.isLessThanOrEqual worst (2.0 ** -22.0) $"{k}: the midpoint of the segment (largest relative deviation {worst:G3})"
        }

        test "Comparisons.average: models of another shape, and a non-empty output folder, are refused with their exit codes" {
            use dir = new TempDir()
            let basePath = requireAsset DataRoot.Assets.Stories260K
            let other = dir.File "other"
            let c = LlamaConfig(VocabSize = 512, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 4,
                                NumKeyValueHeads = 4, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5)
            RandomCheckpoint.Write(other, c, torch.ScalarType.Float32, 0L, requireAsset DataRoot.Assets.Tok512) |> ignore
            let code, _, err = mofo [ "average"; "--base"; basePath; "--tuned"; other; "--output"; dir.File "x" ]
            Expect.equal code 4 $"a checkpoint error: {err}"
            Expect.stringContains err "model.layers.1" "the tensors that differ are named"
            Directory.CreateDirectory(dir.File "full") |> ignore
            File.WriteAllText(dir.File "full/keep.txt", "x")
            let code, _, err = mofo [ "average"; "--base"; basePath; "--tuned"; basePath; "--output"; dir.File "full" ]
            Expect.equal code 2 $"a usage error: {err}"
            Expect.stringContains err "--output" "the flag is named"
        }

        test "Comparisons.kl: 0 for the base model against itself; equal to a hand computation at the answer positions" {
            use dir = new TempDir()
            use baseModel = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            use tuned = ModelLoader.Load(perturbed (dir.File "tuned") 0.02)
            let examples = [ MoFO.Data.TrainingExample.PromptCompletion("Once upon a time", " there was a cat.", "a")
                             MoFO.Data.TrainingExample.PromptCompletion("Lily went to the park", " and played with her ball.", "b") ]
            let self = KlToBase.OnTask(baseModel, baseModel, ResizeArray examples)
            Expect.equal self.MeanTokenKl 0.0 "KL(base ‖ base) = 0"
            let r = KlToBase.OnTask(tuned, baseModel, ResizeArray examples)
            // by hand: each example alone, softmax in float64, the positions whose next token is an answer token
            let mutable sum, count = 0.0, 0
            for e in examples do
                let t = MoFO.Data.Tokenized.Encode(e, tuned.Tokenizer, 512)
                use _ = torch.no_grad()
                let ids = torch.tensor(t.InputIds |> Array.map int64).unsqueeze(0L)
                let probs (lm: CausalLM) =
                    let l = lm.Logits(ids).select(0, 0L).``to``(torch.ScalarType.Float64)
                    let rows = l.shape[0]
                    [| for p in 0L .. rows - 1L -> let x = l[p].data<float>().ToArray() in let m = Array.max x in let z = x |> Array.sumBy (fun v -> exp (v - m)) in x |> Array.map (fun v -> exp (v - m) / z) |]
                let pm, pb = probs tuned, probs baseModel
                for j in 0 .. t.InputIds.Length - 2 do
                    if t.Labels[j + 1] <> MoFO.Data.Tokenized.Ignore then
                        sum <- sum + Array.fold2 (fun acc a b -> if a > 0.0 then acc + a * (log a - log b) else acc) 0.0 pm[j] pb[j]
                        count <- count + 1
            Expect.equal r.Tokens (int64 count) "the same answer positions"
            Expect.isGreaterThan r.MeanTokenKl 0.0 "a moved model diverges"
            Expect.floatClose { absolute = 1e-5; relative = 1e-4 } r.MeanTokenKl (sum / float count) "the hand computation"
        }

        test "Comparisons.kl: mofo eval --task kl-to-base and kl-to-base-samples" {
            use dir = new TempDir()
            let tuned = perturbed (dir.File "tuned") 0.02
            let data = dir.File "held.jsonl"
            File.WriteAllLines(data, [ """{"prompt": "Once upon a time", "completion": " there was a cat."}""" ])
            let code, out, err = mofo [ "eval"; "--model"; tuned; "--base"; requireAsset DataRoot.Assets.Stories260K; "--task"; "kl-to-base"; "--data"; data ]
            Expect.equal code 0 err
            Expect.stringContains out "kl_to_base" "the measure is printed"
            let code, out, err = mofo [ "eval"; "--model"; tuned; "--base"; requireAsset DataRoot.Assets.Stories260K; "--task"; "kl-to-base-samples"; "--samples"; "4"; "--max-new-tokens"; "24"; "--cache"; dir.File "cache" ]
            Expect.equal code 0 err
            Expect.stringContains out "kl_to_base_samples" "the measure is printed"
        }
    ]
