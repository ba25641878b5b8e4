/// `mofo init`: a random-weight HF folder of a real model's exact shape, for rehearsing a run at that size.
module MoFO.Dsl.Cli.Init

open System
open System.IO
open Argu
open MoFO
open MoFO.Models

[<RequireQualifiedAccess>]
type InitDType =
    | Bf16
    | Fp32

type InitArgs =
    | [<Mandatory>] Like of model: string
    | [<Mandatory>] Output of folder: string
    | Dtype of InitDType
    | Seed of n: int64
    | Layers of n: int
    | Tokenizer of path: string
    | Shard_Size_Mb of mb: int
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Like _ -> $"""the model whose shape to copy: {String.Join(", ", ModelPresets.All.Keys)}."""
            | Output _ -> "the folder to write (new or empty): config.json, shards + model.safetensors.index.json, tokenizer."
            | Dtype _ -> "bf16 (default) or fp32."
            | Seed _ -> "the seed of the weights (default 0); each tensor is drawn from (seed, its name)."
            | Layers _ -> "override the number of layers (e.g. 6 for measurements); every other dimension stays the model's."
            | Tokenizer _ -> "a tokenizer file to copy (default: the Llama-2 tokenizer of the data root for the Llama shapes; none for pythia-160m)."
            | Shard_Size_Mb _ -> "largest shard in MiB (default 2048)."

/// The preset of --like, with --layers applied.
let private config (args: ParseResults<InitArgs>) =
    let name = args.GetResult Like
    let preset =
        match ModelPresets.All.TryGetValue(name.ToLowerInvariant()) with
        | true, c -> c
        | _ -> raise (ArgumentException $"""--like {name}: not a known model shape (expected one of {String.Join(", ", ModelPresets.All.Keys)})""")
    match args.TryGetResult Layers with
    | None -> name.ToLowerInvariant(), preset
    | Some n when n < 1 -> raise (ArgumentException $"--layers {n}: must be at least 1")
    | Some n -> $"{name.ToLowerInvariant()} with --layers {n}", ModelPresets.WithLayers(preset, n)

let run (args: ParseResults<InitArgs>) =
    MoFO.Runtime.init ()
    let shape, config = config args
    let folder = args.GetResult Output
    if Directory.Exists folder && not (Seq.isEmpty (Directory.EnumerateFileSystemEntries folder)) then
        raise (ArgumentException $"--output {folder}: the folder is not empty (choose a new folder or delete this one)")
    let dtype = match args.GetResult(Dtype, InitDType.Bf16) with InitDType.Bf16 -> TorchSharp.torch.ScalarType.BFloat16 | InitDType.Fp32 -> TorchSharp.torch.ScalarType.Float32
    let shard = int64 (args.GetResult(Shard_Size_Mb, 2048)) <<< 20
    if shard <= 0L then raise (ArgumentException $"--shard-size-mb {args.GetResult Shard_Size_Mb}: must be positive")
    let tokenizer, tokenizerNote =
        match args.TryGetResult Tokenizer, config with
        | Some path, _ ->
            if not (File.Exists path) then raise (FileNotFoundException($"{path}: tokenizer file not found", path))
            Some path, $"tokenizer: copied from {path}"
        | None, (:? LlamaConfig) ->
            let path = DataRoot.Require DataRoot.Assets.Llama2Tokenizer
            Some path, $"tokenizer: the Llama-2 tokenizer ({path})"
        | None, _ ->
            None, "tokenizer: none (Pythia's tokenizer.json is not available offline); give --tokenizer PATH to copy one, or --tokenizer to the commands that load this folder"
    let parameters = ModelPresets.ParameterCount config
    let bytes = parameters * int64 (MoFO.Checkpoints.SafeTensors.ElementSize dtype)
    let mib = 1L <<< 20
    use progress = new ConsoleProgress($"init {shape}", (bytes + mib - 1L) / mib, "MiB")
    let mutable written = 0L
    let onTensor (_: string) (size: int64) =
        let before = written / mib
        written <- written + size
        progress.Advance(written / mib - before)
    let files = RandomCheckpoint.Write(folder, config, dtype, args.GetResult(Seed, 0L), Option.toObj tokenizer, shard, Action<string, int64> onTensor)
    (progress :> IDisposable).Dispose()
    let layers = if config.NumHiddenLayers = 1 then "1 layer" else $"{config.NumHiddenLayers} layers"
    printfn "wrote %s: random weights in the shape of %s (%s, %s, %s parameters, %s, %.2f GB)"
        folder shape config.ModelType layers (parameters.ToString("N0", Globalization.CultureInfo.InvariantCulture))
        (HfFolder.TorchDtypeName dtype) (float bytes / 1e9)
    for f in files do printfn "  %s" (Path.GetFileName f)
    printfn "%s" tokenizerNote
    0
