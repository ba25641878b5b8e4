module MoFO.Tests.Models

open System
open System.IO
open Expecto
open TorchSharp
open MoFO
open MoFO.Checkpoints
open MoFO.Models
open MoFO.Tokenization
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private expectedStory = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park"

let private stories () = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)

let private randomConfigs : (string * ModelConfig) list =
    [ "llama untied", tinyLlama false; "llama tied", tinyLlama true
      "gpt_neox parallel", tinyNeoX true; "gpt_neox sequential", tinyNeoX false ]

/// Greedy decoding by full recomputation (no cache): the reference for the cached path.
let private greedyNoCache (m: CausalLMModule) (prompt: int list) (n: int) =
    use _ = torch.no_grad()
    let mutable seq = prompt |> List.map int64
    for _ in 1 .. n do
        use scope = torch.NewDisposeScope()
        let logits = m.Forward(ids seq)
        let next = logits[0, -1].argmax().item<int64>()
        seq <- seq @ [ next ]
    seq |> List.skip prompt.Length |> List.map int

[<Tests>]
let tests =
    testList "Models" [
        test "Models.names: state_dict keys are HF's, one to one (Llama untied/tied, GPT-NeoX)" {
            let keys (c: ModelConfig) = (ModelLoader.Create c).StateDict().Keys |> Set.ofSeq
            let llama = keys (tinyLlama false)
            for k in [ "model.embed_tokens.weight"; "model.layers.1.self_attn.q_proj.weight"; "model.layers.1.self_attn.k_proj.weight"
                       "model.layers.1.self_attn.v_proj.weight"; "model.layers.1.self_attn.o_proj.weight"; "model.layers.0.mlp.gate_proj.weight"
                       "model.layers.0.mlp.up_proj.weight"; "model.layers.0.mlp.down_proj.weight"; "model.layers.0.input_layernorm.weight"
                       "model.layers.0.post_attention_layernorm.weight"; "model.norm.weight"; "lm_head.weight" ] do
                Expect.contains llama k k
            Expect.equal llama.Count (1 + 2 * 9 + 1 + 1) "no other keys"
            Expect.isFalse ((keys (tinyLlama true)).Contains "lm_head.weight") "tied: no lm_head (as in HF checkpoints)"
            let neox = keys (tinyNeoX true)
            for k in [ "gpt_neox.embed_in.weight"; "gpt_neox.layers.0.input_layernorm.weight"; "gpt_neox.layers.0.input_layernorm.bias"
                       "gpt_neox.layers.0.post_attention_layernorm.bias"; "gpt_neox.layers.1.attention.query_key_value.weight"
                       "gpt_neox.layers.1.attention.query_key_value.bias"; "gpt_neox.layers.1.attention.dense.weight"
                       "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"; "gpt_neox.layers.1.mlp.dense_4h_to_h.bias"
                       "gpt_neox.final_layer_norm.weight"; "gpt_neox.final_layer_norm.bias"; "embed_out.weight" ] do
                Expect.contains neox k k
            Expect.equal neox.Count (1 + 2 * 12 + 2 + 1) "no other keys"
        }

        testList "Models.saveReload" [
            for name, config in randomConfigs ->
                test $"Models.saveReload.{name}: a random model saved as an HF folder reloads with identical logits" {
                    use dir = new TempDir()
                    let m = randomModel config 11L
                    saveModule m dir.Path
                    let struct (back, _) = ModelLoader.LoadModule dir.Path
                    let x = randomIds 64 3 17 5L
                    use _ = torch.no_grad()
                    let a, b = m.Forward x, back.Forward x
                    Expect.isGreaterThan (a.std().item<float32>()) 0.05f "non-trivial logits"
                    Expect.isTrue (identical a b) "identical logits"
                }
        ]

        testList "Models.kvCache" [
            for name, config in randomConfigs ->
                test $"Models.kvCache.{name}: decoding with the KV cache gives the logits of full recomputation" {
                    let m = randomModel config 21L
                    use _ = torch.no_grad()
                    let x = randomIds 64 2 12 9L
                    let full = m.Forward x
                    use cache = m.CreateCache(2L, 12L)
                    let first = m.Forward(x.narrow(1, 0L, 5L), cache = cache)
                    Expect.isLessThan (maxAbsDiff first (full.narrow(1, 0L, 5L))) 1e-5 "prompt pass"
                    for t in 5L .. 11L do
                        let step = m.Forward(x.narrow(1, t, 1L), cache = cache)
                        Expect.isLessThan (maxAbsDiff step (full.narrow(1, t, 1L))) 1e-5 $"step {t}"
                    Expect.equal cache.Length 12L "cache length"
                }
        ]

        test "Models.leftPadding: a left-padded row with its attention mask gives the logits of the unpadded sequence" {
            for name, config in randomConfigs do
                let m = randomModel config 31L
                use _ = torch.no_grad()
                let x = randomIds 64 1 8 3L
                let alone = m.Forward x
                let padded = torch.cat([| torch.zeros([| 1L; 3L |], dtype = torch.int64); x |], 1L)
                let mask = torch.cat([| torch.zeros([| 1L; 3L |], dtype = torch.int64); torch.ones([| 1L; 8L |], dtype = torch.int64) |], 1L)
                let out = m.Forward(padded, mask)
                Expect.isLessThan (maxAbsDiff (out.narrow(1, 3L, 8L)) alone) 1e-5 name
        }

        test "Models.stories260K.cli: `mofo generate` on stories260K.bin prints the known greedy story" {
            let path = requireAsset DataRoot.Assets.Stories260K
            let code, out, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "generate"; "--model"; path; "--max-new-tokens"; "30" |])
            Expect.equal code 0 $"exit code (stderr: {err})"
            Expect.stringStarts out expectedStory "greedy story from BOS"
        }

        test "Models.stories260K.cacheGreedy: generation with the cache equals greedy full recomputation, token for token" {
            use lm = stories ()
            let prompt = lm.Tokenizer.Encode("Once upon a time, Tom", true) |> List.ofSeq
            let cached = lm.GenerateTokens([| List.toArray prompt |], GenerationOptions(MaxNewTokens = 40))[0] |> List.ofSeq
            let reference = greedyNoCache lm.Module prompt 40
            let stop = reference |> List.tryFindIndex (fun t -> lm.StopTokenIds.Contains t)
            let expected = match stop with Some i -> List.take i reference | None -> reference
            Expect.equal cached expected "same tokens"
            Expect.isGreaterThan cached.Length 10 "a real continuation"
        }

        test "Models.stories260K.batch: a batch of prompts of different lengths generates what each prompt does alone" {
            use lm = stories ()
            let prompts = [| "Once upon a time"; "Tom and Lily went to the big park with their mom" ; "" |]
            let o = GenerationOptions(MaxNewTokens = 30)
            let together = lm.Generate(prompts, o)
            for i in 0 .. prompts.Length - 1 do
                Expect.equal together[i] (lm.Generate([| prompts[i] |], o)[0]) $"prompt {i}"
            Expect.stringStarts (prompts[2] + together[2]) expectedStory "BOS-only prompt in a batch"
        }

        test "Models.stories260K.sampling: seeded sampling repeats; other seeds differ; a tiny top-p is greedy" {
            use lm = stories ()
            let s seed = lm.Generate([| "Once upon a time" |], GenerationOptions(MaxNewTokens = 30, Temperature = 1.0, Seed = seed))[0]
            Expect.equal (s 1L) (s 1L) "same seed, same text"
            Expect.notEqual (s 1L) (s 2L) "another seed, another text"
            let greedy = lm.Generate([| "Once upon a time" |], GenerationOptions(MaxNewTokens = 30))[0]
            let nucleus = lm.Generate([| "Once upon a time" |], GenerationOptions(MaxNewTokens = 30, Temperature = 1.0, TopP = 1e-6, Seed = 5L))[0]
            Expect.equal nucleus greedy "top-p keeps only the most likely token"
        }

        test "Models.stories260K.stop: a stop string cuts the output before it" {
            use lm = stories ()
            let full = lm.Generate([| "" |], GenerationOptions(MaxNewTokens = 30))[0]
            let cut = lm.Generate([| "" |], GenerationOptions(MaxNewTokens = 30, StopStrings = [| "Lily"; "zzz" |]))[0]
            Expect.equal cut (full.Substring(0, full.IndexOf "Lily")) "cut at the first stop string"
            let max3 = lm.GenerateTokens([| [| 1 |] |], GenerationOptions(MaxNewTokens = 3))[0]
            Expect.equal max3.Count 3 "max new tokens"
        }

        test "Models.stories260K.loss: masked loss equals the mean NLL of the unmasked tokens and ignores the rest" {
            use lm = stories ()
            let tokens = lm.Tokenizer.Encode("Lily saw a big dog. The dog was happy and ran to her.", true) |> Seq.map int64 |> List.ofSeq
            let x = ids tokens
            use _ = torch.no_grad()
            let logits = lm.Logits x
            let labels = x.clone()
            labels.narrow(1, 0L, 6L).fill_(-100L) |> ignore
            let loss = CausalLM.Loss(logits, labels).item<float32>() |> float
            let logp = logits[0].log_softmax(-1)
            let nll = [ for t in 6 .. tokens.Length - 1 -> -(logp[int64 (t - 1), tokens[t]].item<float32>() |> float) ]
            Expect.floatClose Accuracy.medium loss (List.average nll) "mean NLL of the tokens from position 6 (0-5 are masked)"
            let changed = logits.clone()
            changed.narrow(1, 0L, 4L).fill_(3.0f) |> ignore
            Expect.floatClose Accuracy.high (CausalLM.Loss(changed, labels).item<float32>() |> float) loss "logits of ignored positions do not matter"
            let all = lm.TextLogLikelihoods([| "Lily saw a big dog. The dog was happy and ran to her." |])[0]
            let lossAll = CausalLM.Loss(logits, x).item<float32>() |> float
            Expect.floatClose Accuracy.medium lossAll (-all.LogLikelihood / float all.TokenCount) "loss agrees with the rolling log-likelihood"
        }

        test "Models.stories260K.logLikelihoods: batched, consistent with rolling scores, greedy flags, left truncation" {
            use lm = stories ()
            let story = lm.Generate([| "" |], GenerationOptions(MaxNewTokens = 20))[0]
            let reqs = [| LogLikelihoodRequest("", story); LogLikelihoodRequest("Once upon a time,", " there was a little girl")
                          LogLikelihoodRequest("Once upon a time, ", "there was a little girl"); LogLikelihoodRequest("The cat", " sat on the mat.") |]
            lm.BatchSize <- 16
            let batched = lm.LogLikelihoods reqs
            lm.BatchSize <- 1
            let single = lm.LogLikelihoods reqs
            for i in 0 .. reqs.Length - 1 do
                Expect.floatClose Accuracy.medium batched[i].LogLikelihood single[i].LogLikelihood $"batch invariance {i}"
                Expect.equal batched[i].TokenCount single[i].TokenCount $"count {i}"
            let rolling = lm.TextLogLikelihoods([| story |])[0]
            Expect.floatClose Accuracy.medium batched[0].LogLikelihood rolling.LogLikelihood "empty context = rolling score"
            Expect.equal batched[0].TokenCount rolling.TokenCount "same tokens"
            Expect.isTrue batched[0].IsGreedy "the greedy story is greedy"
            Expect.floatClose Accuracy.medium batched[1].LogLikelihood batched[2].LogLikelihood "trailing context space moves to the continuation"
            Expect.isLessThan batched[3].LogLikelihood 0.0 "a log-probability"
            lm.MaxSequenceLength <- 8
            let short = lm.TextLogLikelihoods([| story |])[0]
            Expect.equal short.TokenCount rolling.TokenCount "rolling windows still predict every token"
            Expect.isLessThan short.LogLikelihood rolling.LogLikelihood "less context, lower likelihood"
            let truncated = lm.LogLikelihoods([| LogLikelihoodRequest(String.replicate 20 "Once upon a time. ", " The end.") |])[0]
            Expect.isTrue (Double.IsFinite truncated.LogLikelihood && truncated.TokenCount > 0) "left-truncated context scores"
        }

        test "Models.stories260K.convert: `mofo convert --to-hf` gives a folder with the same text and logits within 1e-5" {
            let path = requireAsset DataRoot.Assets.Stories260K
            use dir = new TempDir()
            let out = Path.Combine(dir.Path, "hf")
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "convert"; "--model"; path; "--to-hf"; out |])
            Expect.equal code 0 $"exit code (stderr: {err})"
            for f in [ "config.json"; "model.safetensors"; "tokenizer.model"; "tokenizer_config.json"; "generation_config.json" ] do
                Expect.isTrue (File.Exists(Path.Combine(out, f))) f
            use a = stories ()
            use b = ModelLoader.Load out
            let x = a.Tokenizer.Encode(expectedStory, true) |> Seq.map int64 |> List.ofSeq |> ids
            use _ = torch.no_grad()
            Expect.isLessThan (maxAbsDiff (a.Logits x) (b.Logits x)) 1e-5 "logits"
            let o = GenerationOptions(MaxNewTokens = 60)
            Expect.equal (b.Generate([| "" |], o)) (a.Generate([| "" |], o)) "same text"
            Expect.equal (Set.ofSeq b.StopTokenIds) (Set.ofSeq a.StopTokenIds) "same stop tokens"
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "generate"; "--model"; out; "--max-new-tokens"; "30" |])
            Expect.equal code 0 err
        }

        test "Models.gptNeoX.textApi: a GPT-NeoX folder with tokenizer.json scores without BOS, generates, converts" {
            use dir = new TempDir()
            let m = randomModel (tinyNeoX true) 51L
            saveModule m dir.Path
            File.WriteAllText(dir.File "tokenizer.json", MoFO.Tests.Tokenization.tinyTokenizerJson "null")
            use lm = ModelLoader.Load dir.Path
            let hello, world = 13, 18   // ids of "hello" and "Ġworld" in the tiny vocabulary
            let r = lm.LogLikelihoods([| LogLikelihoodRequest("hello", " world") |])[0]
            Expect.equal r.TokenCount 1 "one continuation token"
            use _ = torch.no_grad()
            let logits1 = lm.Module.Forward(ids [ int64 hello ])
            let lastRow = logits1[0, -1].log_softmax(-1)
            let expected = lastRow[int64 world].item<float32>() |> float
            Expect.floatClose Accuracy.medium r.LogLikelihood expected "context without BOS, as GPT-NeoX's tokenizer"
            let rolling = lm.TextLogLikelihoods([| "hello world" |])[0]
            Expect.equal rolling.TokenCount 2 "both tokens predicted after <|endoftext|>"
            let generated = lm.GenerateTokens([| [| hello |] |], GenerationOptions(MaxNewTokens = 6))[0] |> List.ofSeq
            let reference = greedyNoCache lm.Module [ hello ] 6
            let stop = reference |> List.tryFindIndex (fun t -> lm.StopTokenIds.Contains t)
            Expect.equal generated (match stop with Some i -> List.take i reference | None -> reference) "cached greedy = recomputed greedy"
            let out = Path.Combine(dir.Path, "copy")
            HfFolder.Save(lm, out) |> ignore
            Expect.isTrue (File.Exists(Path.Combine(out, "tokenizer.json"))) "tokenizer.json copied"
            use back = ModelLoader.Load out
            let x = randomIds 64 2 7 4L
            Expect.isTrue (identical (back.Logits x) (lm.Logits x)) "identical logits after convert"
        }

        test "Models.bfloat16: the model runs in bfloat16 (RMSNorm in float32) and agrees with float32 on the next token" {
            let path = requireAsset DataRoot.Assets.Stories260K
            let struct (f32, _) = ModelLoader.LoadModule path
            let struct (bf16, _) = ModelLoader.LoadModule(path, dtype = Nullable torch.bfloat16)
            use _ = torch.no_grad()
            let tok = TextTokenizer.Load(requireAsset DataRoot.Assets.Tok512)
            let x = tok.Encode(expectedStory, true) |> Seq.map int64 |> List.ofSeq |> ids
            let a, b = f32.Forward x, bf16.Forward x
            Expect.equal b.dtype torch.bfloat16 "bf16 logits"
            let agree = a.argmax(-1).eq(b.argmax(-1)).``to``(torch.float32).mean().item<float32>()
            Expect.isGreaterThan agree 0.85f "top-1 agreement"
        }

        test "Models.loader.errors: a missing config.json, weights or tokenizer names the missing file" {
            use dir = new TempDir()
            let e = throwsWith<CheckpointException> (fun () -> ModelLoader.Load dir.Path |> ignore)
            Expect.stringContains e.Message (dir.File "config.json") "config.json"
            (tinyLlama true).Save(dir.File "config.json")
            let e = throwsWith<CheckpointException> (fun () -> ModelLoader.Load dir.Path |> ignore)
            Expect.stringContains e.Message "model.safetensors" "weights"
            saveModule (randomModel (tinyLlama true) 1L) dir.Path
            let e = throwsWith<FileNotFoundException> (fun () -> ModelLoader.Load dir.Path |> ignore)
            Expect.stringContains e.Message (dir.File "tokenizer.model") "tokenizer"
            let code, _, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "generate"; "--model"; dir.Path |])
            Expect.equal code 3 "a missing file (the exit-code table)"
            Expect.stringContains err "tokenizer.model" "one line naming the file"
        }

        test "Models.bench.cli: `mofo bench model` prints tokens/s for stories260K and the ~20M random Llama" {
            let code, out, err = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run [| "bench"; "model"; "--batch"; "1"; "--seq-len"; "8"; "--repetitions"; "1"; "--warmup"; "0" |])
            Expect.equal code 0 err
            Expect.stringContains out "tokens/s" "header"
            Expect.stringContains out "random Llama ~20M" "the 20M row"
            let row = out.Split('\n') |> Array.find (fun l -> l.StartsWith "random Llama ~20M")
            let parameters = int64 (row.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3])
            Expect.isTrue (parameters > 19_000_000L && parameters < 21_000_000L) $"about 20M parameters ({parameters})"
            if DataRoot.Assets.Stories260K.Present then Expect.stringContains out "stories260K" "the stories260K row"
        }

        test "Models.rope: linear, dynamic and llama3 scaling change the frequencies as HF defines; rotation is relative" {
            let baseFreq = Rotary(8, 10000.0, null, 16).InverseFrequencies 0L
            let lin = Rotary(8, 10000.0, RopeScaling("linear", 4.0), 16).InverseFrequencies 0L
            Expect.sequenceEqual lin (baseFreq |> Array.map (fun f -> f / 4.0)) "linear divides by factor"
            let dyn = Rotary(8, 10000.0, RopeScaling("dynamic", 2.0), 16)
            Expect.sequenceEqual (dyn.InverseFrequencies 15L) baseFreq "dynamic: unchanged within max positions"
            let b = 10000.0 * Math.Pow(2.0 * 32.0 / 16.0 - 1.0, 8.0 / 6.0)
            Expect.floatClose Accuracy.high (dyn.InverseFrequencies(31L)[1]) (1.0 / Math.Pow(b, 2.0 / 8.0)) "dynamic: NTK base for 32 positions"
            let l3 = Rotary(128, 500000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), 131072)
            let f0 = Rotary(128, 500000.0, null, 131072).InverseFrequencies 0L
            let f = l3.InverseFrequencies 0L
            Expect.equal f[0] f0[0] "high frequency unchanged"
            Expect.floatClose Accuracy.high f[63] (f0[63] / 8.0) "low frequency divided by the factor"
            Expect.isTrue (f |> Array.mapi (fun i x -> x <= f0[i] && x >= f0[i] / 8.0) |> Array.forall id) "medium frequencies in between"
            // q·k after rotation depends only on the distance of the positions.
            let r = Rotary(8, 10000.0, null, 64)
            let g = new torch.Generator(3UL)
            let q, k = torch.randn([| 1L; 1L; 1L; 8L |], generator = g), torch.randn([| 1L; 1L; 1L; 8L |], generator = g)
            let dot (m: int64) (n: int64) =
                let cm, sm = r.Tables(torch.tensor([| m |]).view(1L, 1L), torch.float32).ToTuple()
                let cn, sn = r.Tables(torch.tensor([| n |]).view(1L, 1L), torch.float32).ToTuple()
                (Rotary.Apply(q, cm, sm) * Rotary.Apply(k, cn, sn)).sum().item<float32>() |> float
            Expect.floatClose Accuracy.medium (dot 7L 3L) (dot 24L 20L) "relative"
            Expect.isGreaterThan (abs (dot 7L 3L - dot 7L 4L)) 1e-4 "depends on the distance"
        }
    ]
