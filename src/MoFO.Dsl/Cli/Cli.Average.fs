/// `mofo average`: weight-space interpolation of a fine-tuned model with its base (WiSE-FT), written as an HF folder.
module MoFO.Dsl.Cli.Average

open System
open Argu
open MoFO
open MoFO.Models

type AverageArgs =
    | [<Mandatory>] Base of path: string
    | [<Mandatory>] Tuned of path: string
    | [<Mandatory>] Output of folder: string
    | T of t: float
    | Device of name: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Base _ -> "the base model (an HF folder or a llama2.c .bin)."
            | Tuned _ -> "the fine-tuned model of the same architecture and shape."
            | Output _ -> "the folder to write (new or empty): an HF folder in the tuned model's dtype, with its tokenizer."
            | T _ -> "the weight of the tuned model: θ = (1 − t)·θ_base + t·θ_tuned (default 0.5; 0 = base, 1 = tuned)."
            | Device _ -> "cpu (default) or cuda."

let run (a: ParseResults<AverageArgs>) =
    MoFO.Runtime.init ()
    let t = a.GetResult(T, 0.5)
    let clock = Diagnostics.Stopwatch.StartNew()
    WeightAverage.Write(a.GetResult Base, a.GetResult Tuned, t, a.GetResult Output, MoFO.Runtime.device (a.TryGetResult Device))
    printfn "averaged: (1 − %g)·%s + %g·%s → %s (%.1f s)" t (a.GetResult Base) t (a.GetResult Tuned) (a.GetResult Output) clock.Elapsed.TotalSeconds
    0
