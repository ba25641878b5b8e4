/// `mofo generate`: text from an HF folder or a llama2.c .bin.
module MoFO.Dsl.Cli.Generate

open System
open Argu
open MoFO.Models

/// `mofo generate`'s own flags (the shared ones are in `Flags`).
module private Own =
    let prompt = Flag.text "--prompt" "the prompt (default: empty, i.e. start from BOS)."
    let maxNewTokens = Flags.maxNewTokens.Describe "most tokens to generate (default 256)."
    let temperature = Flags.temperature.Describe "sampling temperature; 0 (default) is greedy."
    let topP = Flags.topP.Describe "nucleus sampling mass (default 1)."
    let seed = Flags.seed.Describe "seed of the sampler (default 0)."
    let stop = Flag.text "--stop" "a stop string (repeatable); the output is cut before it."

type GenerateArgs =
    | [<Mandatory>] Model of path: string
    | Tokenizer of path: string
    | Prompt of text: string
    | Max_New_Tokens of n: string
    | Temperature of t: string
    | Top_P of p: string
    | Seed of s: string
    | Stop of text: string
    | Device of device: string
    interface IFlags with
        member this.Flag =
            match this with
            | Model _ -> Flags.model | Tokenizer _ -> Flags.tokenizer | Prompt _ -> Own.prompt | Max_New_Tokens _ -> Own.maxNewTokens
            | Temperature _ -> Own.temperature | Top_P _ -> Own.topP | Seed _ -> Own.seed | Stop _ -> Own.stop | Device _ -> Flags.inferenceDevice
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

let run (args: ParseResults<GenerateArgs>) =
    let dev = MoFO.Runtime.device (Flag.tryGet Flags.inferenceDevice args)
    use lm = ModelLoader.Load(Flag.get Flags.model args, Flag.tryGet Flags.tokenizer args |> Option.toObj, dev)
    let prompt = Flag.getOr Own.prompt "" args
    let options =
        GenerationOptions(
            MaxNewTokens = Flag.getOr Own.maxNewTokens 256 args,
            Temperature = Flag.getOr Own.temperature 0.0 args,
            TopP = Flag.getOr Own.topP 1.0 args,
            Seed = Flag.getOr Own.seed 0L args,
            StopStrings = (Flag.all Own.stop args |> List.toArray :> Collections.Generic.IReadOnlyList<string>))
    let text = lm.Generate([| prompt |], options)[0]
    printfn "%s%s" prompt text
    0
