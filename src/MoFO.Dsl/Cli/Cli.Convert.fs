/// `mofo convert`: save a model (llama2.c .bin or HF folder) as an HF folder.
module MoFO.Dsl.Cli.Convert

open Argu
open MoFO.Models

/// `mofo convert`'s own flags (the shared ones are in `Flags`).
module private Own =
    let toHf = Flag.text "--to-hf" "the output folder: config.json, model.safetensors (or shards + index), tokenizer, generation_config.json."
    let shardSizeMb = Flags.shardSizeMb.Describe "largest shard in MiB (default 5120); bigger checkpoints are sharded with model.safetensors.index.json."

type ConvertArgs =
    | [<Mandatory>] Model of path: string
    | Tokenizer of path: string
    | [<Mandatory>] To_Hf of folder: string
    | Shard_Size_Mb of mb: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Flags.model | Tokenizer _ -> Flags.tokenizer | To_Hf _ -> Own.toHf | Shard_Size_Mb _ -> Own.shardSizeMb
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

let run (args: ParseResults<ConvertArgs>) =
    use lm = ModelLoader.Load(Flag.get Flags.model args, Flag.tryGet Flags.tokenizer args |> Option.toObj)
    let shard = int64 (Flag.getOr Own.shardSizeMb 5120 args) <<< 20
    let folder = Flag.get Own.toHf args
    let files = MoFO.Models.HfFolder.Save(lm, folder, shard)
    let parameters = lm.Module.StateDict().Values |> Seq.sumBy (fun t -> t.numel())
    printfn "converted %s (%s, %d parameters) to %s:" lm.Name lm.Module.Config.ModelType parameters folder
    for f in files do printfn "  %s" (System.IO.Path.GetFileName f)
    0
