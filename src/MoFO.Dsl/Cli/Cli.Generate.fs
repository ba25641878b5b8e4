/// `mofo generate`: text from an HF folder or a llama2.c .bin.
module MoFO.Dsl.Cli.Generate

open System
open Argu
open MoFO.Models

type GenerateArgs =
    | [<Mandatory>] Model of path: string
    | Tokenizer of path: string
    | Prompt of text: string
    | Max_New_Tokens of n: int
    | Temperature of t: float
    | Top_P of p: float
    | Seed of s: int64
    | Stop of text: string
    | Device of device: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "an HF model folder (config.json + safetensors + tokenizer) or a llama2.c .bin (tokenizer beside it)."
            | Tokenizer _ -> "a SentencePiece .model or a tokenizer.json (default: found beside the model)."
            | Prompt _ -> "the prompt (default: empty, i.e. start from BOS)."
            | Max_New_Tokens _ -> "most tokens to generate (default 256)."
            | Temperature _ -> "sampling temperature; 0 (default) is greedy."
            | Top_P _ -> "nucleus sampling mass (default 1)."
            | Seed _ -> "seed of the sampler (default 0)."
            | Stop _ -> "a stop string (repeatable); the output is cut before it."
            | Device _ -> "cpu (default; float32, or bfloat16 for a bfloat16 checkpoint) or cuda (bfloat16)."

let run (args: ParseResults<GenerateArgs>) =
        let dev = MoFO.Runtime.device (args.TryGetResult Device)
        use lm = ModelLoader.Load(args.GetResult Model, args.TryGetResult Tokenizer |> Option.toObj, dev)
        let prompt = args.GetResult(Prompt, "")
        let options =
            GenerationOptions(
                MaxNewTokens = args.GetResult(Max_New_Tokens, 256),
                Temperature = args.GetResult(Temperature, 0.0),
                TopP = args.GetResult(Top_P, 1.0),
                Seed = args.GetResult(Seed, 0L),
                StopStrings = (args.GetResults Stop |> List.toArray :> Collections.Generic.IReadOnlyList<string>))
        let text = lm.Generate([| prompt |], options)[0]
        printfn "%s%s" prompt text
        0
