/// `mofo repro <name>` and the paper-repro scripts: the one parser of a reproduction's flags.
module MoFO.Dsl.Cli.Repro

open System
open Argu
open MoFO.Dsl
open MoFO.Dsl.Results

[<RequireQualifiedAccess>]
type ScaleArg =
    | Tiny
    | Paper

type ReproArgs =
    | [<MainCommand; Mandatory>] Name of name: string
    | Scale of ScaleArg
    | Seed of n: int
    | Config of path: string
    | Strict
    | Smoke
    | Out of dir: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Name _ ->
                let lines = MoFO.Dsl.Repro.All.studies |> List.map (fun (n, w, _) -> $"{n} ({w})")
                "the reproduction: " + String.Join("; ", lines) + "; all (every one but the frontier, then results/index.html)."
            | Scale _ -> "tiny (default: stories260K on this CPU) or paper (the paper's models and data from --config, on a GPU)."
            | Seed _ -> "the seed of every run (default 0)."
            | Config _ -> "the paper-scale config (JSON of paths; default paper-repro/paper.json)."
            | Strict -> "exit 1 when a claim of the paper does not hold (by default it is reported in the JSON)."
            | Smoke -> "a few steps of everything on tiny subsets (the CI configuration; the numbers mean nothing)."
            | Out _ -> "the results folder (default results/ at the repository root)."

let parser = ArgumentParser.Create<ReproArgs>(programName = "mofo repro")

/// The one name of the reproduction; anything else left over (Argu gives the main command every token it does not
/// know) is a usage error naming it.
let name (a: ParseResults<ReproArgs>) =
    match a.GetResults Name with
    | [ n ] when not (n.StartsWith "-") -> n
    | ns ->
        let extra = ns |> List.tryFind (fun n -> n.StartsWith "-") |> Option.defaultWith (fun () -> String.Join(" ", ns))
        raise (ArgumentException $"mofo repro: unknown argument '{extra}' (expected one name, then --scale tiny|paper, --seed N, --config FILE, --strict, --smoke, --out DIR)")

/// The reproduction options of parsed flags.
let options (a: ParseResults<ReproArgs>) : Options =
    name a |> ignore
    let d = Options.defaults ()
    { Seed = a.GetResult(Seed, d.Seed)
      Scale = (match a.TryGetResult Scale with Some ScaleArg.Paper -> "paper" | _ -> "tiny")
      Strict = a.Contains Strict
      OutDir = a.GetResult(Out, d.OutDir)
      Config = a.TryGetResult Config
      Smoke = a.Contains Smoke }

/// The options of a script's arguments (fsi.CommandLineArgs: the script path first, then flags; no name).
let scriptOptions (argv: string[]) =
    let args = if argv.Length > 0 && argv[0].EndsWith(".fsx", StringComparison.OrdinalIgnoreCase) then argv[1..] else argv
    options (parser.ParseCommandLine(Array.append [| "script" |] args))

let run (a: ParseResults<ReproArgs>) =
    let o = options a
    match name a with
    | "all" -> MoFO.Dsl.Repro.All.all o
    | name -> MoFO.Dsl.Repro.All.run name o
