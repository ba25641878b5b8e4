module MoFO.Tests.Checkpoints

open System
open System.IO
open System.Text
open Expecto
open TorchSharp
open MoFO.Checkpoints
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private checkpointError (f: unit -> unit) = (throwsWith<CheckpointException> f).Message

[<Tests>]
let tests =
    testList "Checkpoints" [
        test "Checkpoints.safetensors.roundTrip: F32, BF16, F16, I64 and metadata survive a write and a read" {
            use dir = new TempDir()
            let g = new torch.Generator(7UL)
            let a = torch.randn([| 3L; 5L |], generator = g)
            let tensors =
                dict [ "a", a
                       "b.bf16", torch.randn([| 4L |], generator = g).``to``(torch.bfloat16)
                       "c.f16", torch.randn([| 2L; 2L; 2L |], generator = g).``to``(torch.float16)
                       "d.i64", torch.tensor([| 1L; -2L; 3L |])
                       "e.empty", torch.zeros([| 0L; 4L |]) ]
            let file = dir.File "x.safetensors"
            SafeTensors.Save(file, Collections.Generic.Dictionary(tensors), dict [ "format", "pt" ] |> Collections.Generic.Dictionary)
            let struct (entries, meta, start) = SafeTensors.ReadHeader file
            Expect.equal meta["format"] "pt" "metadata"
            Expect.equal entries["b.bf16"].DType "BF16" "bf16 dtype name"
            Expect.equal (start % 8L) 0L "data section aligned to 8 bytes"
            let back = SafeTensors.Load file
            for KeyValue (k, v) in tensors do
                Expect.equal back[k].dtype v.dtype $"dtype of {k}"
                Expect.sequenceEqual back[k].shape v.shape $"shape of {k}"
                Expect.isTrue (identical back[k] v) $"values of {k}"
            Expect.isEmpty (Directory.GetFiles(dir.Path, "*.tmp")) "no temporary file left"
        }

        test "Checkpoints.safetensors.layout: header length, JSON and data offsets follow the spec byte for byte" {
            use dir = new TempDir()
            let file = dir.File "y.safetensors"
            SafeTensors.Save(file, dict [ "w", torch.tensor([| 1.0f; 2.0f |]) ] |> Collections.Generic.Dictionary)
            let bytes = File.ReadAllBytes file
            let n = BitConverter.ToInt64(bytes, 0)
            let header = Encoding.UTF8.GetString(bytes, 8, int n).TrimEnd()
            Expect.equal header """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""" "header JSON"
            Expect.equal bytes.Length (8 + int n + 8) "file length"
            Expect.equal (BitConverter.ToSingle(bytes, 8 + int n + 4)) 2.0f "little-endian float32 data"
        }

        test "Checkpoints.atomic: a write that fails midway leaves the old file intact and no temporary file" {
            use dir = new TempDir()
            let file = dir.File "model.safetensors"
            File.WriteAllText(file, "old")
            Expect.throws (fun () -> MoFO.AtomicFile.Write(file, fun (fs: Stream) -> fs.Write([| 1uy; 2uy |]); failwith "disk full")) "the failure propagates"
            Expect.equal (File.ReadAllText file) "old" "old content kept"
            Expect.equal (Directory.GetFiles dir.Path).Length 1 "no temporary file left"
        }

        test "Checkpoints.safetensors.sharded: shards with model.safetensors.index.json load back as one checkpoint" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 3L
            let files = SafeTensors.SaveCheckpoint(dir.Path, m.StateDict(), maxShardBytes = 10_000L)
            Expect.isGreaterThan files.Count 2 "several shards and an index"
            Expect.isTrue (File.Exists(dir.File SafeTensors.IndexFileName)) "index written"
            let map = SafeTensors.ReadIndex(dir.File SafeTensors.IndexFileName)
            Expect.equal map.Count (m.StateDict().Count) "every tensor in weight_map"
            m.Config.Save(dir.File "config.json")
            let struct (back, _) = ModelLoader.LoadModule dir.Path
            let x = randomIds 64 2 9 1L
            use _ = torch.no_grad()
            Expect.isTrue (identical (back.Forward x) (m.Forward x)) "identical logits from the sharded checkpoint"
        }

        test "Checkpoints.safetensors.truncated: a cut file is an error naming the file and the tensor that does not fit" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 3L
            saveModule m dir.Path
            let file = dir.File "model.safetensors"
            let bytes = File.ReadAllBytes file
            File.WriteAllBytes(file, bytes[.. bytes.Length - 101])
            let msg = checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)
            Expect.stringContains msg file "names the file"
            Expect.stringContains msg "truncated" "says truncated"
            Expect.stringContains msg "model.norm.weight" "names the last tensor (sorted order), which no longer fits"
            File.WriteAllBytes(file, bytes[.. 5])
            Expect.stringContains (checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)) "8-byte header length" "tiny file"
        }

        test "Checkpoints.missingTensor: an absent parameter is an error naming the file and the tensor" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 3L
            let sd = Collections.Generic.Dictionary(m.StateDict())
            sd.Remove "model.layers.1.mlp.up_proj.weight" |> ignore
            m.Config.Save(dir.File "config.json")
            SafeTensors.SaveCheckpoint(dir.Path, sd) |> ignore
            let msg = checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)
            Expect.stringContains msg (dir.File "model.safetensors") "names the file"
            Expect.stringContains msg "model.layers.1.mlp.up_proj.weight: missing tensor (expected shape [48, 32])" "names tensor and shape"
        }

        test "Checkpoints.wrongShape: a tensor of the wrong shape is an error naming it, its shape and the expected one" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama false) 3L
            let sd = Collections.Generic.Dictionary(m.StateDict())
            sd["model.layers.0.self_attn.k_proj.weight"] <- torch.zeros([| 32L; 32L |])
            m.Config.Save(dir.File "config.json")
            SafeTensors.SaveCheckpoint(dir.Path, sd) |> ignore
            let msg = checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)
            Expect.stringContains msg "model.layers.0.self_attn.k_proj.weight: wrong shape [32, 32], expected [16, 32]" "tensor and shapes"
            Expect.stringContains msg (dir.File "model.safetensors") "names the file"
        }

        test "Checkpoints.unexpectedTensor: a tensor the model does not have is an error" {
            use dir = new TempDir()
            let m = randomModel (tinyLlama true) 3L
            let sd = Collections.Generic.Dictionary(m.StateDict())
            sd["model.layers.7.mlp.up_proj.weight"] <- torch.zeros([| 48L; 32L |])
            m.Config.Save(dir.File "config.json")
            SafeTensors.SaveCheckpoint(dir.Path, sd) |> ignore
            Expect.stringContains (checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)) "model.layers.7.mlp.up_proj.weight: unexpected tensor" "names it"
        }

        test "Checkpoints.config.unknownModelType: names config.json and model_type" {
            use dir = new TempDir()
            File.WriteAllText(dir.File "config.json", """{"model_type": "mamba", "vocab_size": 10}""")
            let msg = checkpointError (fun () -> ModelLoader.LoadModule dir.Path |> ignore)
            Expect.stringContains msg (dir.File "config.json") "names the file"
            Expect.stringContains msg "model_type: unknown model_type 'mamba' (supported: llama, gpt_neox)" "names the field"
        }

        test "Checkpoints.config.unsupportedRopeScaling: yarn is a clear error naming config.json and rope_scaling" {
            use dir = new TempDir()
            let o = (tinyLlama false).ToJson()
            o["rope_scaling"] <- System.Text.Json.Nodes.JsonObject(dict [ "type", System.Text.Json.Nodes.JsonValue.Create "yarn" :> System.Text.Json.Nodes.JsonNode; "factor", System.Text.Json.Nodes.JsonValue.Create 4.0 ])
            File.WriteAllText(dir.File "config.json", o.ToJsonString())
            let msg = checkpointError (fun () -> ModelConfig.Load(dir.File "config.json") |> ignore)
            Expect.stringContains msg (dir.File "config.json") "names the file"
            Expect.stringContains msg "rope_scaling.rope_type: unsupported rope scaling type 'yarn' (supported: linear, dynamic, llama3)" "names the field"
        }

        test "Checkpoints.config.fields: missing and mistyped fields name the field; HF defaults apply" {
            use dir = new TempDir()
            let f = dir.File "config.json"
            File.WriteAllText(f, """{"model_type": "llama", "vocab_size": 32000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}""")
            Expect.stringContains (checkpointError (fun () -> ModelConfig.Load f |> ignore)) "intermediate_size: missing required field" "missing"
            File.WriteAllText(f, """{"model_type": "llama", "vocab_size": "many", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}""")
            Expect.stringContains (checkpointError (fun () -> ModelConfig.Load f |> ignore)) "vocab_size: expected an integer, found \"many\"" "mistyped"
            File.WriteAllText(f, """{"model_type": "llama", "vocab_size": 32000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "eos_token_id": [2, 7], "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}""")
            match ModelConfig.Load f with
            | :? LlamaConfig as c ->
                Expect.equal c.NumKeyValueHeads 4 "kv heads default to attention heads"
                Expect.equal c.RopeTheta 10000.0 "rope_theta default"
                Expect.sequenceEqual c.EosTokenIds [ 2; 7 ] "eos list"
                Expect.equal c.RopeScaling.Type "llama3" "llama3 scaling read"
                Expect.isFalse c.TieWordEmbeddings "untied by default"
            | c -> failtestf "expected a LlamaConfig, got %O" c
        }

        test "Checkpoints.llama2c.truncated: a cut .bin names the file and the tensor being read" {
            let src = requireAsset MoFO.DataRoot.Assets.Stories260K
            use dir = new TempDir()
            let file = dir.File "cut.bin"
            File.WriteAllBytes(file, (File.ReadAllBytes src)[.. 200_000])
            let msg = checkpointError (fun () -> MoFO.Checkpoints.Llama2c.Load file |> ignore)
            Expect.stringContains msg file "names the file"
            Expect.stringContains msg "truncated" "says truncated"
            Expect.stringContains msg "wq: truncated" "names the tensor (wq spans bytes 132380 to 214300)"
            File.WriteAllBytes(file, (File.ReadAllBytes src)[.. 10])
            Expect.stringContains (checkpointError (fun () -> MoFO.Checkpoints.Llama2c.Load file |> ignore)) "28-byte header" "header too short"
        }

        test "Checkpoints.llama2c.header: stories260K's header becomes the documented Llama config" {
            let src = requireAsset MoFO.DataRoot.Assets.Stories260K
            let struct (c, tensors) = ModelLoader.LoadLlama2c src
            Expect.equal (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.VocabSize, c.MaxPositionEmbeddings)
                         (64, 172, 5, 8, 4, 512, 512) "dims"
            Expect.isTrue c.TieWordEmbeddings "positive vocab_size = shared classifier"
            Expect.equal (c.RmsNormEps, c.RopeTheta) (1e-5, 10000.0) "llama2.c constants"
            Expect.isFalse (tensors.ContainsKey "lm_head.weight") "no separate classifier"
            Expect.equal (tensors |> Seq.sumBy (fun kv -> kv.Value.numel())) 260032L "parameter count"
            for t in tensors.Values do t.Dispose()
        }
    ]
