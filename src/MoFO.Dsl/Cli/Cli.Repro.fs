/// `mofo repro <name>` and the paper-repro scripts: the one parser of a reproduction's flags.
module MoFO.Dsl.Cli.Repro

open System
open Argu
open MoFO.Dsl
open MoFO.Dsl.Results

/// `mofo repro`'s own flags (the shared ones are in `Flags`).
module private Own =
    let name =
        let lines = MoFO.Dsl.Repro.All.studies |> List.map (fun (n, w) -> $"{n} ({w})")
        Flag.text "mofo repro <name>" ("the reproduction: " + String.Join("; ", lines) + "; all (every one but the frontier, then results/index.html).")
        |> Flag.sets "Name"
    let scale = Flag.choice "--scale" "tiny (default: stories260K on this CPU) or paper (the paper's models and data from --config, on a GPU)." [ "tiny", "tiny"; "paper", "paper" ]
    let seed = Flags.seed.Describe "the seed of every run (default 0)."
    let config = Flag.text "--config" "the paper-scale config (JSON of paths; default paper-repro/paper.json)."
    let strict = Flag.switch "--strict" "exit 1 when a claim of the paper does not hold (by default it is reported in the JSON)."
    let smoke = Flag.switch "--smoke" "a few steps of everything on tiny subsets (the CI configuration; the numbers mean nothing)."
    let out = Flag.text "--out" "the results folder (default results/ at the repository root)."

type ReproArgs =
    | [<MainCommand; Mandatory>] Name of name: string
    | Scale of name: string
    | Seed of n: string
    | Config of path: string
    | Strict
    | Smoke
    | Out of dir: string
    interface IFlags with
        member this.Flag =
            match this with
            | Name _ -> Own.name | Scale _ -> Own.scale | Seed _ -> Own.seed | Config _ -> Own.config | Strict -> Own.strict
            | Smoke -> Own.smoke | Out _ -> Own.out
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

let parser = ArgumentParser.Create<ReproArgs>(programName = "mofo repro")

/// The one name of the reproduction; anything else left over (Argu gives the main command every token it does not
/// know) is a usage error naming it.
let name (a: ParseResults<ReproArgs>) =
    match Flag.all Own.name a with
    | [ n ] when not (n.StartsWith "-") -> n
    | ns ->
        let extra = ns |> List.tryFind (fun n -> n.StartsWith "-") |> Option.defaultWith (fun () -> String.Join(" ", ns))
        raise (ArgumentException $"mofo repro: unknown argument '{extra}' (expected one name, then --scale tiny|paper, --seed N, --config FILE, --strict, --smoke, --out DIR)")

/// The reproduction options of parsed flags.
let options (a: ParseResults<ReproArgs>) : Options =
    name a |> ignore
    let d = Options.defaults ()
    let seed = Flag.getOr Own.seed (int64 d.Seed) a
    if seed < int64 Int32.MinValue || seed > int64 Int32.MaxValue then raise (ArgumentException $"{Own.seed.Name} {seed}: must fit in 32 bits")
    { Seed = int seed
      Scale = Flag.getOr Own.scale d.Scale a
      Strict = Flag.has Own.strict a
      OutDir = Flag.getOr Own.out d.OutDir a
      Config = Flag.tryGet Own.config a
      Smoke = Flag.has Own.smoke a }

/// A script's arguments (fsi.CommandLineArgs: the script path first, then flags; no name) as `mofo repro` parses them.
let scriptArgs (argv: string[]) =
    let args = if argv.Length > 0 && argv[0].EndsWith(".fsx", StringComparison.OrdinalIgnoreCase) then argv[1..] else argv
    parser.ParseCommandLine(Array.append [| "script" |] args)

/// The options of a script's arguments; a bad value is a `FlagException` naming its flag.
let scriptOptions (argv: string[]) = options (Flag.check (scriptArgs argv))

let run (a: ParseResults<ReproArgs>) =
    let o = options a
    match name a with
    | "all" -> MoFO.Dsl.Repro.All.all o
    | name -> MoFO.Dsl.Repro.All.run name o
