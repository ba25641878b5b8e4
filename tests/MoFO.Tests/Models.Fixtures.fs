/// Shared fixtures of the model-layer tests: tiny random configurations, temporary folders, tensor comparisons.
module MoFO.Tests.ModelFixtures

open System
open System.IO
open TorchSharp
open MoFO.Checkpoints
open MoFO.Models

let tinyLlama (tied: bool) =
    LlamaConfig(VocabSize = 64, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4,
                NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5, TieWordEmbeddings = tied,
                InitializerRange = 0.1, BosTokenId = Nullable 1, EosTokenIds = [| 2 |])

let tinyNeoX (parallelResidual: bool) =
    GptNeoXConfig(VocabSize = 64, HiddenSize = 32, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4,
                  MaxPositionEmbeddings = 64, RotaryPct = 0.5, UseParallelResidual = parallelResidual,
                  InitializerRange = 0.1, BosTokenId = Nullable 0, EosTokenIds = [| 0 |])

/// A random model of the config, initialized from the seed; biases get random values too so that they are tested.
let randomModel (config: ModelConfig) (seed: int64) =
    let m = ModelLoader.Create config
    m.InitializeWeights seed
    use _ = torch.no_grad()
    let g = new torch.Generator(uint64 seed + 1UL)
    for KeyValue (n, p) in m.StateDict() do
        if n.EndsWith ".bias" || p.dim () = 1L then p.normal_(1.0, 0.1, g) |> ignore
    m.eval ()
    m

/// A fresh temporary folder, deleted when disposed.
type TempDir() =
    let path = Path.Combine(Path.GetTempPath(), $"mofo-test-{Guid.NewGuid():N}")
    do Directory.CreateDirectory path |> ignore
    member _.Path = path
    member _.File(name: string) = Path.Combine(path, name)
    interface IDisposable with
        member _.Dispose() = try Directory.Delete(path, true) with _ -> ()

/// Saves a module as an HF folder without a tokenizer (config.json + safetensors).
let saveModule (m: CausalLMModule) (folder: string) =
    m.Config.Save(Path.Combine(folder, "config.json"))
    SafeTensors.SaveCheckpoint(folder, m.StateDict()) |> ignore

/// Same shape and dtype and exactly the same values.
let identical (a: torch.Tensor) (b: torch.Tensor) =
    a.shape = b.shape && a.dtype = b.dtype &&
    (a.numel () = 0L || (a.``to``(torch.float64) - b.``to``(torch.float64)).abs().max().item<float>() = 0.0)

let maxAbsDiff (a: torch.Tensor) (b: torch.Tensor) =
    (a.``to``(torch.float64) - b.``to``(torch.float64)).abs().max().item<float>()

let ids (xs: int64 list) = torch.tensor(List.toArray xs).view(1L, int64 xs.Length)

let randomIds (vocab: int) (batch: int) (len: int) (seed: int64) =
    let g = new torch.Generator(uint64 seed)
    torch.randint(0L, int64 vocab, [| int64 batch; int64 len |], dtype = torch.int64, generator = g)

/// stories260K with every weight moved by seeded noise, written as an HF folder (a stand-in for a fine-tune).
let perturbedStories (dir: string) (seed: uint64) (scale: float) =
    use lm = ModelLoader.Load(MoFO.Tests.Fixtures.requireAsset MoFO.DataRoot.Assets.Stories260K)
    use _ = torch.no_grad()
    use g = new torch.Generator(seed)
    use s = torch.tensor scale
    for KeyValue (_, w) in lm.Module.StateDict() do
        w.add_(torch.randn(w.shape, generator = g).mul(s)) |> ignore
    HfFolder.Save(lm, dir) |> ignore
    dir

/// Every weight of a model (any format the loader reads), as float32 arrays by name.
let weightsOf (path: string) =
    use lm = ModelLoader.Load path
    lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.``to``(torch.ScalarType.Float32).data<float32>().ToArray()) |> Map.ofSeq
