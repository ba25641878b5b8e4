/// `mofo merge`: fine-tunes of one base merged by their task vectors (task arithmetic, TIES, DARE) into an HF folder.
module MoFO.Dsl.Cli.Merge

open System
open System.Globalization
open Argu
open MoFO
open MoFO.Models

/// `mofo merge`'s own flags (the shared ones are in `Flags`).
module private Own =
    let methodFlag =
        Flag.choice "--method" "the rule that combines the task vectors τᵢ = θᵢ − θ_base: task-arithmetic (θ_base + Σ wᵢ·τᵢ), ties (trim to the top-d by magnitude, elect a sign per entry, mean of the agreeing), dare (drop at random, keep d rescaled by 1/d, then Σ wᵢ·τ̃ᵢ) or dare-ties (DARE's drop, TIES's sign election)."
            [ "task-arithmetic", MergeMethod.TaskArithmetic; "ties", MergeMethod.Ties; "dare", MergeMethod.Dare; "dare-ties", MergeMethod.DareTies ]
    let baseModel = Flag.text "--base" "the base model the fine-tunes started from (an HF folder or a llama2.c .bin)."
    let tuned = Flag.text "--tuned" "a fine-tuned model of the base's architecture and shape; repeat the flag (or separate with commas) for several." |> Flag.sets "Tuned"
    let output = Flags.output.Describe "the folder to write (new or empty): an HF folder in the base model's dtype, with its config and tokenizer."
    let weights =
        Flag<float list>("--weights", "comma-separated weights, one per --tuned in order (default 1 each): each τᵢ is multiplied by its wᵢ before it is combined.", Some "Weights", fun s ->
            let parts = s.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries) |> Array.toList
            if parts.IsEmpty then raise (FlagException("--weights", $"--weights: '{s}' is not a list of numbers (e.g. 1,0.5)"))
            parts |> List.map (fun p ->
                match Double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture) with
                | true, v when Double.IsFinite v -> v
                | _ -> raise (FlagException("--weights", $"--weights: '{p}' is not a number (expected e.g. 1,0.5)"))))
    let density =
        Flag.float "--density" $"ties, dare, dare-ties: the fraction d of each task vector kept, 0 < d ≤ 1 (default {MergeOptions.DefaultDensity}: TIES's top-20%%)." |> Flag.sets "Density"
    let seed = Flags.seed.Describe "dare, dare-ties: the seed of the random drop (default 0); the same seed gives the same model."

type MergeArgs =
    | [<Mandatory>] Method of rule: string
    | [<Mandatory>] Base of path: string
    | [<Mandatory>] Tuned of path: string
    | [<Mandatory>] Output of folder: string
    | Weights of list: string
    | Density of d: string
    | Seed of seed: string
    | Device of name: string
    interface IFlags with
        member this.Flag =
            match this with
            | Method _ -> Own.methodFlag | Base _ -> Own.baseModel | Tuned _ -> Own.tuned | Output _ -> Own.output
            | Weights _ -> Own.weights | Density _ -> Own.density | Seed _ -> Own.seed | Device _ -> Flags.device
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The fine-tuned models: every --tuned, commas splitting one into several.
let tunedPaths (a: ParseResults<MergeArgs>) =
    Flag.all Own.tuned a
    |> List.collect (fun s -> s.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries) |> Array.toList)

/// The merge the flags ask for, checked against the number of fine-tunes (a flag that the rule does not use is refused).
let options (a: ParseResults<MergeArgs>) =
    let rule = Flag.get Own.methodFlag a
    let o = MergeOptions(rule, Flag.tryGet Own.weights a |> Option.map (fun w -> List.toArray w :> Collections.Generic.IReadOnlyList<float>) |> Option.toObj,
                         Flag.getOr Own.density MergeOptions.DefaultDensity a, Flag.getOr Own.seed 0L a)
    if not o.UsesDensity && Flag.tryGet Own.density a |> Option.isSome then
        raise (FlagException(Own.density.Name, $"{Own.density.Name}: task-arithmetic keeps every entry (the density is for ties, dare and dare-ties)"))
    if rule <> MergeMethod.Dare && rule <> MergeMethod.DareTies && Flag.tryGet Own.seed a |> Option.isSome then
        raise (FlagException(Own.seed.Name, $"{Own.seed.Name}: only dare and dare-ties draw at random"))
    o.Check((tunedPaths a).Length)
    o

let run (a: ParseResults<MergeArgs>) =
    let o = options a
    MoFO.Runtime.init ()
    let baseModel, tuned, output = Flag.get Own.baseModel a, tunedPaths a, Flag.get Own.output a
    let clock = Diagnostics.Stopwatch.StartNew()
    TaskMerge.Write(baseModel, tuned, o, output, MoFO.Runtime.device (Flag.tryGet Flags.device a))
    let how =
        match o.Method with
        | MergeMethod.TaskArithmetic -> "task arithmetic"
        | MergeMethod.Ties -> $"TIES d={o.Density}"
        | MergeMethod.Dare -> $"DARE d={o.Density} seed {o.Seed}"
        | _ -> $"DARE-TIES d={o.Density} seed {o.Seed}"
    printfn "merged (%s): %s + %s → %s (%.1f s)" how baseModel (String.Join(", ", tuned)) output clock.Elapsed.TotalSeconds
    0
