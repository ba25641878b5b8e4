/// Loading and writing models leanly: no random initialization and no float32 detour on load, tensors read and written
/// one at a time (over 2 GB included), bfloat16 kept through a save, and `mofo init` folders of the paper's shapes.
module MoFO.Tests.ScaleLoading

open System
open System.IO
open System.Text
open Expecto
open TorchSharp
open MoFO
open MoFO.Checkpoints
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

/// The bytes of TorchSharp's default CPU generator.
let private rngState () =
    use s = torch.random.get_rng_state ()
    s.bytes.ToArray()

let private mofo (args: string[]) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run args)

/// A safetensors file written by hand: the header of `entries` (name, dtype, shape, byte length) laid out in order,
/// the data section left sparse (zeros) at `dataLength` bytes; returns the data section's start.
let private sparseSafetensors (file: string) (entries: (string * string * int64 list * int64) list) =
    let mutable offset = 0L
    let parts =
        [ for name, dtype, shape, length in entries do
            let shapeText = String.Join(",", shape)
            yield $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{shapeText}],\"data_offsets\":[{offset},{offset + length}]}}"
            offset <- offset + length ]
    let json = Encoding.UTF8.GetBytes("{" + String.Join(",", parts) + "}")
    let padded = (json.Length + 7) / 8 * 8
    use fs = new FileStream(file, FileMode.CreateNew)
    let header = Array.concat [ BitConverter.GetBytes(int64 padded); json; Array.create (padded - json.Length) (byte ' ') ]
    fs.Write(header, 0, header.Length)
    let start = 8L + int64 padded
    fs.SetLength(start + offset)   // sparse: no disk blocks for the zeros
    start

/// A write-only stream that keeps nothing but its length, its first 4 KiB and the bytes at some positions: a file of
/// any size written without a disk.
type private CaptureStream(marks: int64 list) =
    inherit Stream()
    let mutable position = 0L
    let head = new MemoryStream()
    member val Seen = Collections.Generic.Dictionary<int64, byte>()
    member _.Head = head.ToArray()
    override _.CanRead = false
    override _.CanSeek = false
    override _.CanWrite = true
    override _.Length = position
    override _.Position with get () = position and set _ = raise (NotSupportedException())
    override _.Flush() = ()
    override _.Read(_: byte[], _: int, _: int) : int = raise (NotSupportedException())
    override _.Seek(_: int64, _: SeekOrigin) : int64 = raise (NotSupportedException())
    override _.SetLength(_: int64) = raise (NotSupportedException())
    override this.Write(buffer: byte[], offset: int, count: int) =
        for m in marks do
            if m >= position && m < position + int64 count then this.Seen[m] <- buffer[offset + int (m - position)]
        if position < 4096L then head.Write(buffer, offset, min count (int (4096L - position)))
        position <- position + int64 count

let private writeAt (file: string) (position: int64) (bytes: byte[]) =
    use fs = new FileStream(file, FileMode.Open, FileAccess.Write)
    fs.Seek(position, SeekOrigin.Begin) |> ignore
    fs.Write(bytes, 0, bytes.Length)

[<Tests>]
let tests =
    testList "Scale.loading" [
        test "Scale.loading.bf16: a float32 checkpoint loads into bfloat16 parameters equal to its values rounded, and a bfloat16 checkpoint loads bit for bit (by default on CPU too)" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 5L
            saveModule m dir.Path
            let struct (b, _) = ModelLoader.LoadModule(dir.Path, dtype = Nullable torch.bfloat16)
            let sd = m.StateDict()
            for KeyValue (n, p) in b.StateDict() do
                Expect.equal p.dtype torch.bfloat16 $"{n} is bfloat16"
                Expect.isTrue (identical p (sd[n].``to`` torch.bfloat16)) $"{n} equals the checkpoint rounded to bfloat16"
                Expect.isTrue p.requires_grad $"{n} is trainable"
            // A bfloat16 checkpoint (config torch_dtype bfloat16) loads as bfloat16 without asking.
            use dir2 = new TempDir()
            let cfg = b.Config.ToJson()
            cfg["torch_dtype"] <- Text.Json.Nodes.JsonValue.Create "bfloat16"
            File.WriteAllText(dir2.File "config.json", cfg.ToJsonString())
            SafeTensors.SaveCheckpoint(dir2.Path, b.StateDict()) |> ignore
            let struct (b2, _) = ModelLoader.LoadModule dir2.Path
            Expect.equal b2.DType torch.bfloat16 "the checkpoint's dtype is kept by default"
            let bsd = b.StateDict()
            for KeyValue (n, p) in b2.StateDict() do
                Expect.isTrue (identical p bsd[n]) $"{n} bit for bit"
            // GPT-NeoX (LayerNorm weights and biases, fused qkv) the same way.
            use dir3 = new TempDir()
            let x = randomModel (tinyNeoX true) 6L
            saveModule x dir3.Path
            let struct (xb, _) = ModelLoader.LoadModule(dir3.Path, dtype = Nullable torch.bfloat16)
            let xsd = x.StateDict()
            for KeyValue (n, p) in xb.StateDict() do
                Expect.isTrue (identical p (xsd[n].``to`` torch.bfloat16)) $"{n} (GPT-NeoX) equals the checkpoint rounded"
        }

        test "Scale.loading.logits: the lean loader gives the logits of the model in memory and of the copying path; every parameter is real memory and the modules read it" {
            for config in [ tinyLlama false :> ModelConfig; tinyLlama true; tinyNeoX true; tinyNeoX false ] do
                use dir = new TempDir()
                let m = randomModel config 7L
                saveModule m dir.Path
                let struct (lean, _) = ModelLoader.LoadModule dir.Path
                use copied = ModelLoader.Create config
                copied.LoadWeights(SafeTensors.LoadCheckpoint dir.Path, dir.Path)
                for KeyValue (n, p) in lean.StateDict() do
                    Expect.isFalse p.is_meta $"{n} materialized"
                    Expect.equal p.device_type DeviceType.CPU $"{n} on CPU"
                let x = randomIds 64 2 9 3L
                use _ = torch.no_grad()
                let y = lean.Forward x
                Expect.isTrue (identical y (m.Forward x)) $"{config.ModelType}: logits of the model in memory"
                Expect.isTrue (identical y (copied.Forward x)) $"{config.ModelType}: logits of the copying path"
                // The fields that forward reads are the registered parameters: changing one through the state dict
                // changes the logits.
                let norm = lean.StateDict() |> Seq.find (fun kv -> kv.Key.EndsWith "norm.weight" || kv.Key.EndsWith "final_layer_norm.weight")
                norm.Value.mul_(torch.tensor 2.0f) |> ignore
                Expect.isFalse (identical (lean.Forward x) y) $"{config.ModelType}: {norm.Key} is the tensor forward uses"
                lean.``to``(torch.float64) |> ignore
                Expect.equal lean.DType torch.float64 "the loaded module still converts"
        }

        test "Scale.loading.errors: strict loading still names the file and the tensor (missing, unexpected, misshapen, index shard)" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 8L
            m.Config.Save(dir.File "config.json")
            let sd = Collections.Generic.Dictionary(m.StateDict())
            sd["model.layers.0.mlp.up_proj.weight"] <- torch.zeros([| 48L; 31L |])
            SafeTensors.SaveCheckpoint(dir.Path, sd, maxShardBytes = 20_000L) |> ignore
            let e = throwsWith<CheckpointException> (fun () -> ModelLoader.LoadModule dir.Path |> ignore)
            Expect.stringContains e.Message "model.layers.0.mlp.up_proj.weight: wrong shape [48, 31], expected [48, 32]" "misshapen"
            Expect.stringContains e.Message ".safetensors" "names the shard"
            use dir2 = new TempDir()
            m.Config.Save(dir2.File "config.json")
            SafeTensors.SaveCheckpoint(dir2.Path, m.StateDict(), maxShardBytes = 20_000L) |> ignore
            let index = dir2.File SafeTensors.IndexFileName
            let text = File.ReadAllText index
            File.WriteAllText(index, text.Replace("\"model.norm.weight\"", "\"model.norm.extra\""))
            let e2 = throwsWith<CheckpointException> (fun () -> ModelLoader.LoadModule dir2.Path |> ignore)
            Expect.stringContains e2.Message "model.norm.extra: listed in model.safetensors.index.json for this shard but absent from it" "index entry without tensor"
        }

        test "Scale.safetensors.chunks: tensors cross chunk boundaries on read and write, converted on the way, and a slice reads alone" {
            let saved = TensorBytes.ChunkBytes
            TensorBytes.ChunkBytes <- 24L   // 6 float32, 12 bfloat16: every tensor below spans several chunks
            try
                use dir = new TempDir()
                let g = new torch.Generator(3UL)
                let tensors =
                    dict [ "a", torch.randn([| 7L; 5L |], generator = g)
                           "b", torch.randn([| 37L |], generator = g).``to`` torch.bfloat16
                           "c", torch.arange(0L, 25L, dtype = torch.int64).view(5L, 5L)
                           "d", torch.randn([| 4L; 6L |], generator = g).t() ]   // not contiguous
                let file = dir.File "x.safetensors"
                SafeTensors.Save(file, Collections.Generic.Dictionary tensors)
                let back = SafeTensors.Load file
                for KeyValue (k, v) in tensors do Expect.isTrue (identical back[k] v) $"{k} round trip"
                use f = SafeTensorFile.Open file
                let a16 = torch.empty([| 7L; 5L |], dtype = torch.bfloat16)
                f.ReadInto("a", a16)
                Expect.isTrue (identical a16 (tensors["a"].``to`` torch.bfloat16)) "float32 read into bfloat16"
                let b32 = torch.empty([| 37L |])
                f.ReadInto("b", b32)
                Expect.isTrue (identical b32 (tensors["b"].``to`` torch.float32)) "bfloat16 read into float32"
                use slice = f.ReadSlice("a", 11L, 13L)
                Expect.isTrue (identical slice (tensors["a"].reshape(-1L).narrow(0L, 11L, 13L))) "elements 11..23 alone"
                Expect.throws (fun () -> f.ReadSlice("a", 30L, 6L) |> ignore) "a slice past the end is refused"
            finally
                TensorBytes.ChunkBytes <- saved
        }

        test "Scale.safetensors.streamed: tensors to write are made one at a time, each disposed before the next is made" {
            use dir = new TempDir()
            let mutable previous : torch.Tensor option = None
            let mutable made = 0
            let make i () =
                match previous with
                | Some p -> Expect.isTrue p.IsInvalid $"tensor {i - 1} was disposed before tensor {i} is made"
                | None -> ()
                made <- made + 1
                let t = (use v = (float i).ToScalar() in torch.full([| 1000L |], v))
                previous <- Some t
                t
            let writes = [ for i in 0 .. 9 -> TensorWrite($"t{i}", torch.float32, [| 1000L |], Func<_> (make i), true) ]
            let files = SafeTensors.SaveCheckpoint(dir.Path, writes, maxShardBytes = 12_000L)
            Expect.equal made 10 "every tensor made once"
            Expect.equal files.Count 5 "4 shards of 3, 3, 3 and 1 tensors and the index"
            let back = SafeTensors.LoadCheckpoint dir.Path
            for i in 0 .. 9 do Expect.equal (back[$"t{i}"].mean().item<float32>()) (float32 i) $"t{i} written"
        }

        test "Scale.init.presets: the three presets have the paper models' exact shapes and parameter counts" {
            let count = ModelPresets.ParameterCount
            Expect.equal (count ModelPresets.TinyLlama11B) 1_100_048_384L "TinyLlama-1.1B"
            Expect.equal (count ModelPresets.Llama2_7B) 6_738_415_616L "Llama-2-7B"
            Expect.equal (count ModelPresets.Pythia160M) 162_322_944L "Pythia-160m"
            let t = ModelPresets.TinyLlama11B
            Expect.equal (t.VocabSize, t.HiddenSize, t.IntermediateSize, t.NumHiddenLayers, t.NumAttentionHeads, t.NumKeyValueHeads, t.MaxPositionEmbeddings)
                         (32000, 2048, 5632, 22, 32, 4, 2048) "TinyLlama dims"
            let l = ModelPresets.Llama2_7B
            Expect.equal (l.HiddenSize, l.IntermediateSize, l.NumHiddenLayers, l.NumKeyValueHeads, l.MaxPositionEmbeddings) (4096, 11008, 32, 32, 4096) "Llama-2-7B dims"
            let p = ModelPresets.Pythia160M
            Expect.equal (p.VocabSize, p.HiddenSize, p.RotaryNdims, p.UseParallelResidual, p.TieWordEmbeddings) (50304, 768, 16, true, false) "Pythia dims"
            Expect.equal (count (ModelPresets.WithLayers(ModelPresets.TinyLlama11B, 6))) (1_100_048_384L - 16L * 44_044_288L) "6 layers of 44,044,288 parameters each"
        }

        test "Scale.init.values: HF's initialization per tensor from (seed, name); a bfloat16 tensor is the float32 one rounded" {
            let w32 = RandomCheckpoint.Make("model.layers.0.mlp.up_proj.weight", [| 300L; 100L |], torch.float32, 0.02, 5L)
            let w16 = RandomCheckpoint.Make("model.layers.0.mlp.up_proj.weight", [| 300L; 100L |], torch.bfloat16, 0.02, 5L)
            Expect.isTrue (identical w16 (w32.``to`` torch.bfloat16)) "bf16 = fp32 rounded"
            Expect.floatClose { absolute = 1e-3; relative = 0.0 } (w32.std().item<float32>() |> float) 0.02 "std 0.02"
            let other = RandomCheckpoint.Make("model.layers.1.mlp.up_proj.weight", [| 300L; 100L |], torch.float32, 0.02, 5L)
            Expect.isFalse (identical w32 other) "another tensor, other values"
            Expect.isTrue (identical w32 (RandomCheckpoint.Make("model.layers.0.mlp.up_proj.weight", [| 300L; 100L |], torch.float32, 0.02, 5L))) "reproducible"
            Expect.equal (RandomCheckpoint.Make("x.bias", [| 4L |], torch.float32, 0.02, 5L).abs().sum().item<float32>()) 0.0f "biases 0"
            Expect.equal (RandomCheckpoint.Make("x.weight", [| 4L |], torch.bfloat16, 0.02, 5L).``to``(torch.float32).sum().item<float32>()) 4.0f "norm weights 1"
        }

        test "Scale.init.atomic: a rehearsal folder appears complete or not at all" {
            use dir = new TempDir()
            let out = Path.Combine(dir.Path, "m")
            let stop = Action<string, int64>(fun name _ -> if name.Contains "layers.1" then failwith "disk full")
            Expect.throws (fun () -> RandomCheckpoint.Write(out, tinyLlama false, torch.bfloat16, 0L, written = stop) |> ignore) "the failure propagates"
            Expect.isFalse (Directory.Exists out) "no partial folder"
            Expect.isEmpty (Directory.GetFileSystemEntries dir.Path) "no temporary folder left"
            let files = RandomCheckpoint.Write(out, tinyLlama false, torch.bfloat16, 0L)
            Expect.isTrue (files |> Seq.forall File.Exists) "the files it lists exist"
            let e = throwsWith<OptionException> (fun () -> RandomCheckpoint.Write(out, tinyLlama false, torch.bfloat16, 0L) |> ignore)
            Expect.stringContains e.Message "not empty" "never writes over a folder"
        }

        testSequenced <| testList "sequenced" [
            test "Scale.loading.noRandomInit: loading draws nothing from the default generator (HF folder, GPT-NeoX, llama2.c), creating a model does" {
                use dir = new TempDir()
                let m = randomModel (tinyLlama false) 9L
                saveModule m dir.Path
                use dir2 = new TempDir()
                saveModule (randomModel (tinyNeoX true) 9L) dir2.Path
                let before = rngState ()
                let struct (a, _) = ModelLoader.LoadModule dir.Path
                let struct (b, _) = ModelLoader.LoadModule(dir2.Path, dtype = Nullable torch.bfloat16)
                Expect.sequenceEqual (rngState ()) before "no random draw while loading"
                if DataRoot.Assets.Stories260K.Present then
                    let struct (c, _) = ModelLoader.LoadModule DataRoot.Assets.Stories260K.FullPath
                    Expect.sequenceEqual (rngState ()) before "no random draw while loading a llama2.c file"
                    c.Dispose()
                use _ = ModelLoader.Create(tinyLlama false)
                Expect.isFalse (Seq.forall2 (=) (rngState ()) before) "Create initializes randomly (the spy sees draws)"
                a.Dispose(); b.Dispose()
            }

            test "Scale.safetensors.over2GB: a header with a tensor over 2^31 bytes parses; its tail, the tensor after it and the whole tensor read correctly" {
                use dir = new TempDir()
                let file = dir.File "big.safetensors"
                let big = (1L <<< 31) + 4099L
                let start = sparseSafetensors file [ "big", "U8", [ big ], big; "after", "F32", [ 3L ], 12L ]
                let marks = [ 0L, 11uy; (1L <<< 31) - 1L, 22uy; 1L <<< 31, 33uy; big - 1L, 44uy ]
                for pos, v in marks do writeAt file (start + pos) [| v |]
                writeAt file (start + big) (Array.concat [ BitConverter.GetBytes 1.5f; BitConverter.GetBytes -2.0f; BitConverter.GetBytes 3.25f ])
                let struct (entries, _, _) = SafeTensors.ReadHeader file
                Expect.equal entries["after"].Begin big "64-bit offsets"
                use f = SafeTensorFile.Open file
                use tail = f.ReadSlice("big", big - 5000L, 5000L)
                Expect.equal (tail[4999L].item<byte>()) 44uy "the last byte, past 2^31"
                Expect.equal (tail[0L].item<byte>()) 0uy "zeros before it"
                let after = torch.empty([| 3L |])
                f.ReadInto("after", after)
                Expect.sequenceEqual (after.data<float32>().ToArray()) [| 1.5f; -2.0f; 3.25f |] "the tensor after the big one"
                use whole = torch.empty([| big |], dtype = torch.uint8)
                f.ReadInto("big", whole)
                for pos, v in marks do Expect.equal (whole[pos].item<byte>()) v $"byte {pos} of the whole tensor"
                // And written again (into a stream that keeps only what the test looks at: 2 GB of disk writes would
                // take ~15 s here): the header states 64-bit offsets, every byte lands at its place.
                let writes = [ TensorWrite.Of("big", whole); TensorWrite.Of("after", after) ]
                let probe = [ for pos, _ in marks -> start + pos ] @ [ start + big + 4L ]
                let capture = new CaptureStream(probe)
                SafeTensors.Write(capture, writes)
                Expect.equal capture.Length (start + big + 12L) "length: the same layout as the file read"
                let header = Array.zeroCreate<byte> (int start)
                do (use fs = File.OpenRead file in fs.ReadExactly(header, 0, header.Length))
                Expect.sequenceEqual capture.Head[.. int start - 1] header "the same header"
                for pos, v in marks do Expect.equal capture.Seen[start + pos] v $"byte {pos} written at its place"
                let minusTwo = BitConverter.GetBytes -2.0f
                Expect.equal capture.Seen[start + big + 4L] minusTwo[0] "the tensor after it, past 2^31"
            }

            test "Scale.save.bf16RoundTrip: a bfloat16 model saves in bfloat16 with torch_dtype bfloat16 and reloads bit for bit" {
                let tok = requireAsset DataRoot.Assets.Tok512
                use dir = new TempDir()
                let config =
                    LlamaConfig(VocabSize = 512, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4,
                                NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, BosTokenId = Nullable 1, EosTokenIds = [| 2 |])
                let m = randomModel config 10L
                m.``to``(torch.bfloat16) |> ignore
                use lm = new CausalLM(m, Tokenization.TextTokenizer.Load tok, "tiny")
                HfFolder.Save(lm, dir.Path) |> ignore
                let config = Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File "config.json"))
                Expect.equal (config["torch_dtype"].GetValue<string>()) "bfloat16" "torch_dtype"
                let struct (entries, _, _) = SafeTensors.ReadHeader(dir.File "model.safetensors")
                Expect.allEqual (entries.Values |> Seq.map (fun e -> e.DType)) "BF16" "weights written in bfloat16"
                use back = ModelLoader.Load dir.Path
                Expect.equal back.Module.DType torch.bfloat16 "loads as bfloat16"
                let msd = m.StateDict()
                for KeyValue (n, p) in back.Module.StateDict() do Expect.isTrue (identical p msd[n]) $"{n} bit for bit"
                // Loaded in bfloat16 and saved again: the same weights, torch_dtype kept.
                use dir2 = new TempDir()
                HfFolder.Save(back, dir2.Path) |> ignore
                Expect.stringContains (File.ReadAllText(dir2.File "config.json")) "\"torch_dtype\": \"bfloat16\"" "torch_dtype kept"
                Expect.sequenceEqual (File.ReadAllBytes(dir2.File "model.safetensors")) (File.ReadAllBytes(dir.File "model.safetensors")) "identical files"
            }

            test "Scale.init.tinyllama: `mofo init --like tinyllama-1.1b --layers 1` writes shards that load back in the declared shape and dtype and generate" {
                requireAsset DataRoot.Assets.Llama2Tokenizer |> ignore
                use dir = new TempDir()
                let out = Path.Combine(dir.Path, "tl")
                let code, stdout, err = mofo [| "init"; "--like"; "tinyllama-1.1b"; "--layers"; "1"; "--shard-size-mb"; "128"; "--seed"; "3"; "--output"; out |]
                Expect.equal code 0 $"exit code ({err})"
                Expect.stringContains stdout "175,118,336 parameters" "the count of a 1-layer TinyLlama"
                let shards = Directory.GetFiles(out, "model-*-of-*.safetensors")
                Expect.equal shards.Length 3 "335 MiB in 128 MiB shards"
                Expect.isTrue (File.Exists(Path.Combine(out, SafeTensors.IndexFileName))) "index"
                use lm = ModelLoader.Load out
                let expected = ModelPresets.WithLayers(ModelPresets.TinyLlama11B, 1).ToJson()
                expected["torch_dtype"] <- Text.Json.Nodes.JsonValue.Create "bfloat16"
                Expect.equal (lm.Module.Config.ToJson().ToJsonString()) (expected.ToJsonString()) "config.json is the preset's, 1 layer, bfloat16"
                Expect.equal lm.Module.DType torch.bfloat16 "bfloat16 weights"
                Expect.equal (lm.Module.StateDict().Values |> Seq.sumBy (fun t -> t.numel())) 175_118_336L "parameters"
                let sd = lm.Module.StateDict()
                Expect.equal (sd["model.norm.weight"].``to``(torch.float32).mean().item<float32>()) 1.0f "norms are 1"
                Expect.floatClose { absolute = 1e-4; relative = 0.0 } (sd["model.layers.0.self_attn.q_proj.weight"].``to``(torch.float32).std().item<float32>() |> float) 0.02 "matrices N(0, 0.02)"
                Expect.equal lm.Tokenizer.VocabSize 32000 "the Llama-2 tokenizer"
                let text = lm.Generate([| "Hello" |], GenerationOptions(MaxNewTokens = 3))
                Expect.equal text.Count 1 "generates"
                let code2, _, err2 = mofo [| "init"; "--like"; "tinyllama-1.1b"; "--output"; out |]
                Expect.equal code2 2 "a non-empty output folder is a usage error"
                Expect.stringContains err2 "not empty" "says why"
                let code3, _, err3 = mofo [| "init"; "--like"; "gpt-5"; "--output"; Path.Combine(dir.Path, "x") |]
                Expect.equal code3 2 "an unknown shape is a usage error"
                Expect.stringContains err3 "tinyllama-1.1b, pythia-160m, llama-2-7b" "lists the shapes"
            }

            test "Scale.init.pythia: `mofo init --like pythia-160m` writes a GPT-NeoX folder without a tokenizer and says so" {
                use dir = new TempDir()
                let out = Path.Combine(dir.Path, "py")
                let code, stdout, err = mofo [| "init"; "--like"; "pythia-160m"; "--layers"; "1"; "--dtype"; "fp32"; "--output"; out |]
                Expect.equal code 0 $"exit code ({err})"
                Expect.stringContains stdout "not available offline" "says there is no tokenizer"
                Expect.isFalse (File.Exists(Path.Combine(out, "tokenizer.json"))) "no tokenizer written"
                let struct (m, _) = ModelLoader.LoadModule out
                Expect.equal m.Config.ModelType "gpt_neox" "GPT-NeoX"
                Expect.equal m.DType torch.float32 "float32 weights"
                Expect.equal (m.StateDict().Values |> Seq.sumBy (fun t -> t.numel())) (162_322_944L - 11L * 7_087_872L) "1-layer Pythia-160m"
                let bias = m.StateDict()["gpt_neox.layers.0.attention.query_key_value.bias"]
                Expect.equal (bias.abs().sum().item<float32>()) 0.0f "biases 0"
                let e = throwsWith<MissingAssetException> (fun () -> ModelLoader.Load out |> ignore)
                Expect.equal e.Remedy "tokenizerPath" "loading it asks for a tokenizer"
                m.Dispose()
            }
        ]
    ]
