/// The `mofo` command line: the schema (Argu) and the dispatch.
module MoFO.Dsl.Cli.Main

open Argu

type InfoArgs =
    | [<Hidden>] Verbose
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Verbose -> "unused."

type BenchArgs =
    | [<CliPrefix(CliPrefix.None)>] Model of ParseResults<Bench.Model.BenchModelArgs>
    | [<CliPrefix(CliPrefix.None)>] Optim of ParseResults<Bench.Optim.BenchOptimArgs>
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "forward tokens/s of stories260K and a ~20M-parameter random Llama."
            | Optim _ -> "step time of AdamW, MoFO and gradient-filtered BCD on a ~30M-parameter transformer-shaped set (and PyTorch's AdamW with --pytorch)."

[<RequireQualifiedAccess>]
type MofoArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<Train.TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Continual of ParseResults<Continual.ContinualArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<Eval.EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval_Samples of ParseResults<EvalSamples.EvalSamplesArgs>
    | [<CliPrefix(CliPrefix.None)>] Generate of ParseResults<Generate.GenerateArgs>
    | [<CliPrefix(CliPrefix.None)>] Convert of ParseResults<Convert.ConvertArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Repro of name: string
    | [<AltCommandLine("-d"); Inherit>] Data_Root of path: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Generate _ -> "generate text from an HF model folder or a llama2.c .bin."
            | Convert _ -> "save a model (llama2.c .bin or HF folder) as an HF folder (config.json, safetensors, tokenizer)."
            | Repro _ -> "run a reproduction of the paper (table1..table6, figure-landscape, figure-fraction, frontier, toy-example, convergence, all): mofo repro <name> [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke] [--out DIR]."
            | Bench _ -> "benchmarks: model (forward tokens/s), optim (optimizer step time)."
            | Info _ -> "print TorchSharp and libtorch versions, devices, threads, the data root and which real assets are present."
            | Train _ -> "fine-tune a model on instruction data with MoFO or a baseline (checkpoints, resume, metrics log)."
            | Continual _ -> "train on a stream of TRACE task folders in sequence; the accuracy matrix, OP and BWT, with Replay, GEM or MTL."
            | Eval _ -> "evaluate a model on a benchmark (mmlu, arc-easy, arc-challenge, hellaswag, mc, gsm8k, humaneval) or a forgetting measure (perplexity, pretrain-proxy, story-cloze, distance)."
            | Eval_Samples _ -> "score a samples file of generated code ({task_id, completion} jsonl) in the sandbox: pass@k."
            | Data_Root _ -> "the folder with the real models, tokenizers and datasets (default: $MOFO_DATA, else ../shared/data beside the repository)."

let parser = ArgumentParser.Create<MofoArgs>(programName = "mofo")

/// The usage of `mofo repro`: every reproduction by name.
let reproUsage () =
    let lines = MoFO.Dsl.Repro.All.studies |> List.map (fun (n, w, _) -> $"  {n,-18} {w}")
    "USAGE: mofo repro <name> [--scale tiny|paper] [--seed N] [--config FILE] [--strict] [--smoke] [--out DIR]\n\n"
    + "Runs a reproduction of the MoFO paper (the same pipelines as paper-repro/<name>.fsx) and writes results/<name>.{json,md,html}.\n\n"
    + String.concat "\n" lines + "\n  all                every reproduction above but the frontier, then results/index.html\n"

/// `mofo repro <name> …`: handled before Argu so that the reproduction's own flags pass through.
let private repro (rest: string[]) =
    match List.ofArray rest with
    | [] -> eprintfn "%s" (reproUsage ()); 2
    | ("--help" | "-h") :: _ -> printfn "%s" (reproUsage ()); 0
    | "all" :: args -> MoFO.Dsl.Repro.All.all (Array.ofList args)
    | name :: args when List.contains name MoFO.Dsl.Repro.All.names -> MoFO.Dsl.Repro.All.run name (Array.ofList args)
    | name :: _ -> eprintfn "mofo repro: unknown reproduction '%s'\n\n%s" name (reproUsage ()); 2

/// Parses and runs one command line; returns the exit code. `--help` prints usage (exit 0); a wrong flag or a missing
/// subcommand prints the error and the usage to stderr (exit 2).
let run (argv: string[]) =
  let dataRoot, argv' =
      // a leading --data-root/-d applies to repro too
      match List.ofArray argv with
      | ("--data-root" | "-d") :: p :: rest -> Some p, Array.ofList rest
      | _ -> None, argv
  if argv'.Length > 0 && argv'[0] = "repro" then
    dataRoot |> Option.iter (fun p -> MoFO.DataRoot.Override <- p)
    repro argv'[1..]
  else
    match (try Ok (parser.ParseCommandLine(argv)) with :? ArguParseException as e -> Error e) with
    | Error e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | Error e ->
        eprintfn "%s" e.Message
        2
    | Ok args ->
      args.TryGetResult MofoArgs.Data_Root |> Option.iter (fun p -> MoFO.DataRoot.Override <- p)
      try
        match args.TryGetSubCommand() with
        | Some (MofoArgs.Info _) -> Info.run ()
        | Some (MofoArgs.Train a) -> Train.run a
        | Some (MofoArgs.Continual a) -> Continual.run a
        | Some (MofoArgs.Eval a) -> Eval.run a
        | Some (MofoArgs.Eval_Samples a) -> EvalSamples.run a
        | Some (MofoArgs.Generate g) -> Generate.run g
        | Some (MofoArgs.Convert c) -> Convert.run c
        | Some (MofoArgs.Bench b) ->
            (match b.TryGetSubCommand() with
             | Some (BenchArgs.Model m) -> Bench.Model.run m
             | Some (BenchArgs.Optim o) -> Bench.Optim.run o
             | None ->
                 eprintfn "%s" (b.Parser.PrintUsage(message = "mofo bench: a benchmark is required."))
                 2)
        | _ ->
            eprintfn "%s" (parser.PrintUsage(message = "mofo: a subcommand is required."))
            2
      with
      // Errors in the user's input or environment: one clear line, no stack trace.
      | :? MoFO.MissingAssetException as e -> eprintfn "mofo: %s" e.Message; 3
      | :? MoFO.Data.DataFormatException as e -> eprintfn "mofo: %s" e.Message; 4
      | :? MoFO.Checkpoints.CheckpointException as e -> eprintfn "mofo: %s" e.Message; 4
      | :? System.IO.FileNotFoundException as e -> eprintfn "mofo: %s" e.Message; 3
      | :? System.IO.DirectoryNotFoundException as e -> eprintfn "mofo: %s" e.Message; 3
      | :? MoFO.Evaluation.SandboxUnavailableException as e -> eprintfn "mofo: %s" e.Message; 5
      | :? MoFO.Training.TrainingDivergedException as e -> eprintfn "mofo: %s" e.Message; 6
      | :? System.ArgumentException as e -> eprintfn "mofo: %s" e.Message; 2
