/// `mofo average`: weight-space interpolation of a fine-tuned model with its base (WiSE-FT), written as an HF folder.
module MoFO.Dsl.Cli.Average

open System
open Argu
open MoFO
open MoFO.Models

/// `mofo average`'s own flags (the shared ones are in `Flags`).
module private Own =
    let baseModel = Flag.text "--base" "the base model (an HF folder or a llama2.c .bin)."
    let tuned = Flag.text "--tuned" "the fine-tuned model of the same architecture and shape."
    let output = Flags.output.Describe "the folder to write (new or empty): an HF folder in the tuned model's dtype, with its tokenizer."
    let t = Flag.float "--t" "the weight of the tuned model: θ = (1 − t)·θ_base + t·θ_tuned (default 0.5; 0 = base, 1 = tuned; outside [0, 1] with --extrapolate)." |> Flag.sets "t"
    let extrapolate = Flag.switch "--extrapolate" "allow t outside 0 ≤ t ≤ 1: the point beyond the tuned model (t > 1) or behind the base (t < 0) on their line."

type AverageArgs =
    | [<Mandatory>] Base of path: string
    | [<Mandatory>] Tuned of path: string
    | [<Mandatory>] Output of folder: string
    | T of t: string
    | Extrapolate
    | Device of name: string
    interface IFlags with
        member this.Flag =
            match this with
            | Base _ -> Own.baseModel | Tuned _ -> Own.tuned | Output _ -> Own.output | T _ -> Own.t | Extrapolate -> Own.extrapolate
            | Device _ -> Flags.device
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The weight of the tuned model: in [0, 1] an interpolation; outside it an extrapolation, which must be asked for.
let weight (a: ParseResults<AverageArgs>) =
    let t = Flag.getOr Own.t 0.5 a
    if (t < 0.0 || t > 1.0) && not (Flag.has Own.extrapolate a) then
        let where = if t > 1.0 then "beyond the tuned model" else "behind the base model"
        raise (ArgumentException $"{Own.t.Name} {t}: outside 0 ≤ t ≤ 1 the average extrapolates ({where}); add {Own.extrapolate.Name} to mean it")
    t

let run (a: ParseResults<AverageArgs>) =
    let t = weight a
    MoFO.Runtime.init ()
    let baseModel, tuned, output = Flag.get Own.baseModel a, Flag.get Own.tuned a, Flag.get Own.output a
    let clock = Diagnostics.Stopwatch.StartNew()
    WeightAverage.Write(baseModel, tuned, t, output, MoFO.Runtime.device (Flag.tryGet Flags.device a))
    printfn "averaged: (1 − %g)·%s + %g·%s → %s (%.1f s)" t baseModel t tuned output clock.Elapsed.TotalSeconds
    0
