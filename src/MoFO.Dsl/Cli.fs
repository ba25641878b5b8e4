/// The `mofo` command line: the schema (Argu) and the dispatch.
module MoFO.Dsl.Cli.Main

open Argu

type InfoArgs =
    | [<Hidden>] Verbose
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Verbose -> "unused."

[<RequireQualifiedAccess>]
type BenchArgs =
    | [<CliPrefix(CliPrefix.None)>] Optim of ParseResults<Bench.Optim.BenchOptimArgs>
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Optim _ -> "step time of AdamW, MoFO and gradient-filtered BCD on a ~30M-parameter transformer-shaped set (and PyTorch's AdamW with --pytorch)."

[<RequireQualifiedAccess>]
type MofoArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<AltCommandLine("-d"); Inherit>] Data_Root of path: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Bench _ -> "benchmarks (see mofo bench --help)."
            | Info _ -> "print TorchSharp and libtorch versions, devices, threads, the data root and which real assets are present."
            | Data_Root _ -> "the folder with the real models, tokenizers and datasets (default: $MOFO_DATA, else ../shared/data beside the repository)."

let parser = ArgumentParser.Create<MofoArgs>(programName = "mofo")

/// Parses and runs one command line; returns the exit code. `--help` prints usage (exit 0); a wrong flag or a missing
/// subcommand prints the error and the usage to stderr (exit 2).
let run (argv: string[]) =
    match (try Ok (parser.ParseCommandLine(argv)) with :? ArguParseException as e -> Error e) with
    | Error e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | Error e ->
        eprintfn "%s" e.Message
        2
    | Ok args ->
        args.TryGetResult MofoArgs.Data_Root |> Option.iter (fun p -> MoFO.DataRoot.Override <- p)
        match args.TryGetSubCommand() with
        | Some (MofoArgs.Info _) -> Info.run ()
        | Some (MofoArgs.Bench b) ->
            match b.TryGetSubCommand() with
            | Some (BenchArgs.Optim o) -> Bench.Optim.run o
            | _ ->
                eprintfn "%s" (b.Parser.PrintUsage(message = "mofo bench: say what to benchmark (optim)."))
                2
        | _ ->
            eprintfn "%s" (parser.PrintUsage(message = "mofo: a subcommand is required."))
            2
