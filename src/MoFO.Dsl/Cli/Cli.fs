/// The `mofo` command line: the schema (Argu) and the dispatch. Every command runs under `Common.command` (its flags
/// checked first; `Cli.Flag`, `Cli.Flags`) or `Common.guard`, so the same failure gives the same exit code everywhere
/// (`ExitCode`; README "Exit codes").
module MoFO.Dsl.Cli.Main

open System
open Argu
open MoFO.Training

type InfoArgs =
    | [<Hidden>] Verbose
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Verbose -> "unused."

type MethodsArgs =
    | [<Hidden>] Verbose
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Verbose -> "unused."

type BenchArgs =
    | [<CliPrefix(CliPrefix.None)>] Model of ParseResults<Bench.Model.BenchModelArgs>
    | [<CliPrefix(CliPrefix.None)>] Optim of ParseResults<Bench.Optim.BenchOptimArgs>
    | [<CliPrefix(CliPrefix.None)>] Memory of ParseResults<Bench.Memory.BenchMemoryArgs>
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model _ -> "forward tokens/s of stories260K and a ~20M-parameter random Llama."
            | Optim _ -> "step time of AdamW, MoFO and gradient-filtered BCD on a ~30M-parameter transformer-shaped set (and PyTorch's AdamW with --pytorch)."
            | Memory _ -> "a few fine-tuning steps with the peak memory of each phase (load, forward, backward, step, checkpoint) beside the plan."

[<RequireQualifiedAccess>]
type MofoArgs =
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<Train.TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Continual of ParseResults<Continual.ContinualArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<Eval.EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval_Samples of ParseResults<EvalSamples.EvalSamplesArgs>
    | [<CliPrefix(CliPrefix.None)>] Generate of ParseResults<Generate.GenerateArgs>
    | [<CliPrefix(CliPrefix.None)>] Convert of ParseResults<Convert.ConvertArgs>
    | [<CliPrefix(CliPrefix.None)>] Init of ParseResults<Init.InitArgs>
    | [<CliPrefix(CliPrefix.None)>] Average of ParseResults<Average.AverageArgs>
    | [<CliPrefix(CliPrefix.None)>] Merge of ParseResults<Merge.MergeArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Repro of ParseResults<Repro.ReproArgs>
    | [<CliPrefix(CliPrefix.None)>] Methods of ParseResults<MethodsArgs>
    | [<CliPrefix(CliPrefix.None)>] Plan of ParseResults<Plan.PlanArgs>
    | [<CliPrefix(CliPrefix.None); Hidden>] Point of file: string
    | [<AltCommandLine("-d"); Inherit>] Data_Root of path: string
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Generate _ -> "generate text from an HF model folder or a llama2.c .bin."
            | Convert _ -> "save a model (llama2.c .bin or HF folder) as an HF folder (config.json, safetensors, tokenizer)."
            | Average _ -> "interpolate a fine-tuned model with its base, θ = (1 − t)·θ_base + t·θ_tuned (WiSE-FT), into an HF folder."
            | Merge _ -> "merge fine-tunes of one base by their task vectors τᵢ = θᵢ − θ_base (task arithmetic, TIES, DARE) into an HF folder."
            | Init _ -> "write a random-weight HF folder of a real model's exact shape (tinyllama-1.1b, pythia-160m, llama-2-7b) for rehearsals."
            | Repro _ -> "run a reproduction of the paper (table1..table6, figure-landscape, figure-fraction, frontier, toy-example, convergence, all): mofo repro <name> [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke] [--out DIR]."
            | Bench _ -> "benchmarks: model (forward tokens/s), optim (optimizer step time)."
            | Info _ -> "print TorchSharp and libtorch versions, devices, threads, the data root and which real assets are present."
            | Train _ -> "fine-tune a model on instruction data with MoFO or a baseline (checkpoints, resume, metrics log)."
            | Continual _ -> "train on a stream of TRACE task folders in sequence; the accuracy matrix, OP and BWT, with Replay, GEM or MTL."
            | Eval _ -> "evaluate a model on a benchmark (mmlu, arc-easy, arc-challenge, hellaswag, mc, gsm8k, humaneval) or a forgetting measure (perplexity, pretrain-proxy, story-cloze, distance)."
            | Eval_Samples _ -> "score a samples file of generated code ({task_id, completion} jsonl) in the sandbox: pass@k."
            | Methods _ -> "list the fine-tuning methods (optimizer members and loss terms) with their defaults."
            | Plan _ -> "the memory a fine-tuning run will need, by component, against the memory available (exit 7 when it does not fit)."
            | Point _ -> "run one point of a sweep (internal: sweeps start these processes)."
            | Data_Root _ -> Flags.dataRoot.Usage

let parser = ArgumentParser.Create<MofoArgs>(programName = "mofo")

/// `mofo methods`: the vocabulary.
let private methods () =
    printfn "optimizer members (--method NAME; --alpha for those that filter):"
    for m in Methods.Members do
        let alpha = if m.UsesAlpha then $" (α, default {Defaults.Alpha})" else ""
        let lr = if m.LrScale <> 1.0 then $"; the DSL runs it at {m.LrScale}× the recipe's learning rate" else ""
        printfn "  %-12s %s%s%s" m.Name m.Description alpha lr
    printfn "adapters (--method NAME; the base frozen):"
    for struct (name, _, description) in Methods.Adapters do printfn "  %-12s %s" name description
    printfn "  %-12s %s" ""
        ($"each with --lora-rank (8), --lora-alpha (2r), --lora-dropout (0), --lora-targets, --lora-optimizer adamw|mofo (with --alpha); "
         + $"the DSL runs them at {Methods.LoraLrScale}× the recipe's learning rate; "
         + "the final folder holds the merged weights and PEFT's adapter_model.safetensors + adapter_config.json")
    printfn "loss terms (--method NAME for AdamW with the term; --l1-lambda / --l2-lambda add one to any member):"
    for t in Methods.Terms do printfn "  %-12s %s (default λ %g)" t.Name t.Description t.DefaultLambda
    printfn "defaults: lr %g, %A schedule, warmup %g, weight decay %g, gradient clipping at %g, %d epoch%s of batch %d, max length %d, seed %d"
        Defaults.LearningRate Defaults.Schedule Defaults.WarmupRatio Defaults.WeightDecay Defaults.MaxGradNorm Defaults.Epochs
        (if Defaults.Epochs = 1 then "" else "s") Defaults.BatchSize Defaults.MaxLength Defaults.Seed
    0

/// A command line Argu refuses: `--help` prints usage (exit 0); an unknown flag or a missing subcommand prints the
/// error and the usage (exit 2); a flag without its value is one line (exit 2).
let private refused (e: ArguParseException) =
    if e.ErrorCode = ErrorCode.HelpText then
        printfn "%s" e.Message
        0
    else
        let first = e.Message.Split('\n')[0]
        if first.Contains "must be followed by" then eprintfn "mofo: %s" (Common.render e) else eprintfn "%s" e.Message
        int MoFO.Dsl.ExitCode.Usage

/// Parses and runs one command line; returns the exit code. Every command's flags are checked before it runs (a bad
/// value or a missing mandatory flag is one line, exit 2; `Common.command`); a failure prints one line with its exit code.
let run (argv: string[]) =
    match (try Ok (parser.ParseCommandLine(argv)) with :? ArguParseException as e -> Error e) with
    | Error e -> refused e
    | Ok args ->
        args.TryGetResult MofoArgs.Data_Root |> Option.iter (fun p -> MoFO.DataRoot.Override <- p)
        match args.TryGetSubCommand() with
        | Some (MofoArgs.Info _) -> Common.guard Info.run
        | Some (MofoArgs.Methods _) -> Common.guard methods
        | Some (MofoArgs.Train a) -> Common.command a Train.run
        | Some (MofoArgs.Continual a) -> Common.command a Continual.run
        | Some (MofoArgs.Eval a) -> Common.command a Eval.run
        | Some (MofoArgs.Eval_Samples a) -> Common.command a EvalSamples.run
        | Some (MofoArgs.Generate g) -> Common.command g Generate.run
        | Some (MofoArgs.Convert c) -> Common.command c Convert.run
        | Some (MofoArgs.Init i) -> Common.command i Init.run
        | Some (MofoArgs.Average v) -> Common.command v Average.run
        | Some (MofoArgs.Merge m) -> Common.command m Merge.run
        | Some (MofoArgs.Repro r) -> Common.command r Repro.run
        | Some (MofoArgs.Plan p) -> Common.command p Plan.run
        | Some (MofoArgs.Bench b) ->
            match b.TryGetSubCommand() with
            | Some (BenchArgs.Model m) -> Common.command m Bench.Model.run
            | Some (BenchArgs.Optim o) -> Common.command o Bench.Optim.run
            | Some (BenchArgs.Memory m) -> Common.command m Bench.Memory.run
            | None ->
                eprintfn "%s" (b.Parser.PrintUsage(message = "mofo bench: a benchmark is required."))
                2
        | _ ->
            match args.TryGetResult MofoArgs.Point with
            | Some file -> Common.guard (fun () -> MoFO.Dsl.Sweep.runPoint file)
            | None ->
                eprintfn "%s" (parser.PrintUsage(message = "mofo: a subcommand is required."))
                2

/// A paper-repro script: `mofo repro <name>` with the script's arguments (fsi.CommandLineArgs), so a script and the
/// command give the same results and exit codes.
let script (name: string) (argv: string[]) =
    let args = if argv.Length > 0 && argv[0].EndsWith(".fsx", StringComparison.OrdinalIgnoreCase) then argv[1..] else argv
    run (Array.append [| "repro"; name |] args)

/// A custom study script (scripts/ablation.fsx): the reproduction flags parsed and checked as `mofo repro` does, the
/// body run under the same guard; returns the exit code.
let study (argv: string[]) (body: MoFO.Dsl.Study.Ctx -> int) =
    match (try Ok (Repro.scriptArgs argv) with :? ArguParseException as e -> Error e) with
    | Error e -> refused e
    | Ok a ->
        // the script's flags are checked as the command line's (a bad one is named as a flag); the body's errors name
        // the script's own words (Recipe.Lr, Method.LoRA's rank), never a flag the script does not have
        Common.guardRendered Common.renderScript (fun () ->
            let o = Repro.options (Flag.check a)
            MoFO.Runtime.init ()
            body (MoFO.Dsl.Study.context o))
