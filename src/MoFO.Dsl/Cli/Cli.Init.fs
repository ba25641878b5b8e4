/// `mofo init`: a random-weight HF folder of a real model's exact shape, for rehearsing a run at that size.
module MoFO.Dsl.Cli.Init

open System
open System.IO
open Argu
open MoFO
open MoFO.Models

/// `mofo init`'s own flags (the shared ones are in `Flags`).
module private Own =
    let like = Flags.like.Describe $"""the model whose shape to copy: {String.Join(", ", ModelPresets.All.Keys)}."""
    let output = Flags.output.Describe "the folder to write (new or empty): config.json, shards + model.safetensors.index.json, tokenizer."
    let dtype =
        Flag.choice "--dtype" "bf16 (default) or fp32." [ "bf16", TorchSharp.torch.ScalarType.BFloat16; "fp32", TorchSharp.torch.ScalarType.Float32 ]
    let seed = Flags.seed.Describe "the seed of the weights (default 0); each tensor is drawn from (seed, its name)."
    let layers = Flags.layers.Describe "override the number of layers (e.g. 6 for measurements); every other dimension stays the model's."
    let tokenizer =
        Flags.tokenizer.Describe "a tokenizer file to copy (default: the Llama-2 tokenizer of the data root for the Llama shapes; none for pythia-160m)."
    let shardSizeMb = Flags.shardSizeMb.Describe "largest shard in MiB (default 2048)."

type InitArgs =
    | [<Mandatory>] Like of model: string
    | [<Mandatory>] Output of folder: string
    | Dtype of name: string
    | Seed of n: string
    | Layers of n: string
    | Tokenizer of path: string
    | Shard_Size_Mb of mb: string
    interface IFlags with
        member this.Flag =
            match this with
            | Like _ -> Own.like | Output _ -> Own.output | Dtype _ -> Own.dtype | Seed _ -> Own.seed | Layers _ -> Own.layers
            | Tokenizer _ -> Own.tokenizer | Shard_Size_Mb _ -> Own.shardSizeMb
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The preset of --like, with --layers applied.
let private config (args: ParseResults<InitArgs>) =
    let name = Flag.get Own.like args
    let preset = ModelPresets.All[name]
    match Flag.tryGet Own.layers args with
    | None -> name, preset
    | Some n -> $"{name} with {Own.layers.Name} {n}", ModelPresets.WithLayers(preset, n)

let run (args: ParseResults<InitArgs>) =
    MoFO.Runtime.init ()
    let shape, config = config args
    let folder = Flag.get Own.output args
    if Directory.Exists folder && not (Seq.isEmpty (Directory.EnumerateFileSystemEntries folder)) then
        raise (ArgumentException $"{Own.output.Name} {folder}: the folder is not empty (choose a new folder or delete this one)")
    let dtype = Flag.getOr Own.dtype TorchSharp.torch.ScalarType.BFloat16 args
    let shard = int64 (Flag.getOr Own.shardSizeMb 2048 args) <<< 20
    let tokenizer, tokenizerNote =
        match Flag.tryGet Own.tokenizer args, config with
        | Some path, _ ->
            if not (File.Exists path) then raise (FileNotFoundException($"{path}: tokenizer file not found", path))
            Some path, $"tokenizer: copied from {path}"
        | None, (:? LlamaConfig) ->
            let path = DataRoot.Require DataRoot.Assets.Llama2Tokenizer
            Some path, $"tokenizer: the Llama-2 tokenizer ({path})"
        | None, _ ->
            None, $"tokenizer: none (Pythia's tokenizer.json is not available offline); give {Own.tokenizer.Name} PATH to copy one, or {Own.tokenizer.Name} to the commands that load this folder"
    let parameters = ModelPresets.ParameterCount config
    let bytes = parameters * int64 (MoFO.Checkpoints.SafeTensors.ElementSize dtype)
    let mib = 1L <<< 20
    use progress = new ConsoleProgress($"init {shape}", (bytes + mib - 1L) / mib, "MiB")
    let mutable written = 0L
    let onTensor (_: string) (size: int64) =
        let before = written / mib
        written <- written + size
        progress.Advance(written / mib - before)
    let files = RandomCheckpoint.Write(folder, config, dtype, Flag.getOr Own.seed 0L args, Option.toObj tokenizer, shard, Action<string, int64> onTensor)
    (progress :> IDisposable).Dispose()
    let layers = if config.NumHiddenLayers = 1 then "1 layer" else $"{config.NumHiddenLayers} layers"
    printfn "wrote %s: random weights in the shape of %s (%s, %s, %s parameters, %s, %.2f GB)"
        folder shape config.ModelType layers (parameters.ToString("N0", Globalization.CultureInfo.InvariantCulture))
        (HfFolder.TorchDtypeName dtype) (float bytes / 1e9)
    for f in files do printfn "  %s" (Path.GetFileName f)
    printfn "%s" tokenizerNote
    0
