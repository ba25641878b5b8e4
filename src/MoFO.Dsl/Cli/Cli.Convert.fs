/// `mofo convert`: save a model (llama2.c .bin or HF folder) as an HF folder.
module MoFO.Dsl.Cli.Convert

open Argu
open MoFO.Models

type ConvertArgs =
    | [<Mandatory>] Model of path: string
    | Tokenizer of path: string
    | [<Mandatory>] To_Hf of folder: string
    | Shard_Size_Mb of mb: int
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "the model: a llama2.c .bin (tokenizer beside it) or an HF folder."
            | Tokenizer _ -> "a SentencePiece .model or a tokenizer.json (default: found beside the model)."
            | To_Hf _ -> "the output folder: config.json, model.safetensors (or shards + index), tokenizer, generation_config.json."
            | Shard_Size_Mb _ -> "largest shard in MiB (default 5120); bigger checkpoints are sharded with model.safetensors.index.json."

let run (args: ParseResults<ConvertArgs>) =
    use lm = ModelLoader.Load(args.GetResult Model, args.TryGetResult Tokenizer |> Option.toObj)
    let shard = int64 (args.GetResult(Shard_Size_Mb, 5120)) <<< 20
    let files = MoFO.Models.HfFolder.Save(lm, args.GetResult To_Hf, shard)
    let parameters = lm.Module.StateDict().Values |> Seq.sumBy (fun t -> t.numel())
    printfn "converted %s (%s, %d parameters) to %s:" lm.Name lm.Module.Config.ModelType parameters (args.GetResult To_Hf)
    for f in files do printfn "  %s" (System.IO.Path.GetFileName f)
    0
