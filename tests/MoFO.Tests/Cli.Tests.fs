module MoFO.Tests.Cli

open System
open System.IO
open Expecto
open MoFO
open MoFO.Training
open MoFO.Tests.Fixtures

let private mofo (args: string[]) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run args)

[<Tests>]
let tests =
    testSequenced <| testList "Cli" [
        test "Cli.info: reports libtorch 2.10, TorchSharp 0.107, a CPU device and a working smoke test" {
            let code, out, _ = mofo [| "info" |]
            Expect.equal code 0 "exit code"
            let line key = out.Split('\n') |> Array.find (fun l -> l.StartsWith(key + ":"))
            Expect.stringContains (line "libtorch") "2.10" "libtorch version"
            Expect.stringContains (line "TorchSharp") "0.107" "TorchSharp version"
            Expect.stringContains (line "devices") "cpu" "cpu device"
            Expect.stringContains (line "smoke test") "dy/dw = [1; 2; 3]" "gradient of the smoke test"
            Expect.stringContains (line "smoke test") "save/load ok" "tensor round trip"
            Expect.stringContains (line "data root") "data" "data root shown"
        }

        test "Cli.badFlag: a wrong flag prints usage and exits non-zero" {
            let code, out, err = mofo [| "--no-such-flag" |]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err "--no-such-flag" "names the bad flag"
            Expect.stringContains err "USAGE: mofo" "prints usage"
            Expect.equal out "" "nothing on stdout"
        }

        test "Cli.noSubcommand: prints usage and exits non-zero" {
            let code, _, err = mofo [||]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err "USAGE: mofo" "prints usage"
        }

        test "Cli.help: --help prints usage and exits 0" {
            let code, out, _ = mofo [| "--help" |]
            Expect.equal code 0 "exit 0"
            Expect.stringContains out "info" "lists the info subcommand"
        }
    
        test "Cli.device: an unknown device and CUDA on a CPU-only build are clear usage errors" {
            let code, _, err = mofo [| "generate"; "--model"; "x.bin"; "--device"; "tpu" |]
            Expect.notEqual code 0 "fails"
            Expect.stringContains err "--device: 'tpu'" "names the value"
            if not (TorchSharp.torch.cuda.is_available ()) then
                let code2, _, err2 = mofo [| "eval"; "--model"; "x.bin"; "--task"; "arc-easy"; "--device"; "cuda" |]
                Expect.equal code2 2 "usage error"
                Expect.stringContains err2 "CUDA is not available" "says why"
        }
    ]

/// The flags of every command: each defined once (`Flags`), spelled as Argu spells its case, checked before the command
/// runs; a bad value is one line and exit 2.
[<Tests>]
let flags =
    let unionOf (p: Argu.ArgumentParser) = p.GetArgumentCases() |> List.tryHead |> Option.map (fun c -> c.UnionCaseInfo.DeclaringType)
    /// Every command's parser (`bench` and its benchmarks included), named by its union (TrainArgs, …).
    let rec commands (p: Argu.ArgumentParser) : Argu.ArgumentParser list =
        [ for sub in p.GetSubCommandParsers() do
            yield sub
            yield! commands sub ]
    let flagged () =
        commands MoFO.Dsl.Cli.Main.parser
        |> List.choose (fun p -> unionOf p |> Option.filter (fun t -> typeof<MoFO.Dsl.Cli.IFlags>.IsAssignableFrom t) |> Option.map (fun t -> t.Name, p))
    let flagOf (c: Argu.ArgumentCaseInfo) =
        let fields = c.UnionCaseInfo.GetFields() |> Array.map (fun p -> if p.PropertyType.IsValueType then Activator.CreateInstance p.PropertyType else null)
        (Reflection.FSharpValue.MakeUnion(c.UnionCaseInfo, fields) :?> MoFO.Dsl.Cli.IFlags).Flag
    let oneLine (args: string list) =
        let code, out, err = mofo (List.toArray args)
        Expect.equal code 2 $"{args}: exit 2; stderr: {err}"
        Expect.equal out "" $"{args}: nothing on stdout"
        Expect.equal (err.TrimEnd('\n').Split('\n').Length) 1 $"{args}: one line: {err}"
        Expect.stringStarts err "mofo: " $"{args}: the one-line form"
        err.TrimEnd('\n')
    testSequenced <| testList "Cli.flags" [
        test "Cli.flags.once: every command declares its flags through one definition each; the shared ones are the same flag in every command" {
            let cmds = flagged ()
            let names = cmds |> List.map fst
            for expected in [ "TrainArgs"; "PlanArgs"; "ContinualArgs"; "EvalArgs"; "EvalSamplesArgs"; "GenerateArgs"; "ConvertArgs"; "InitArgs"; "AverageArgs"
                              "MergeArgs"; "ReproArgs"; "BenchModelArgs"; "BenchOptimArgs"; "BenchMemoryArgs" ] do
                Expect.contains names expected $"{expected} takes its flags from Flag definitions"
            let shared = MoFO.Dsl.Cli.Flags.all
            Expect.equal (shared |> List.map (fun f -> f.Name) |> List.distinct).Length shared.Length "each shared flag is defined once"
            // the commands whose flag means something else under a shared spelling: continual's --epochs (one per task) and
            // merge's --method (the merging rule, not a fine-tuning method)
            let own = set [ "ContinualArgs", "--epochs"; "MergeArgs", "--method" ]
            let mutable uses = Map.empty
            for name, p in cmds do
                for c in p.GetArgumentCases() do
                    let f = flagOf c
                    if not c.IsMainCommand then
                        Expect.equal f.Name c.Name.Value $"{name}: the case {c.UnionCaseInfo.Name} is spelled as its flag"
                    match shared |> List.tryFind (fun s -> s.Name = f.Name) with
                    | Some s when not (own.Contains(name, f.Name)) ->
                        Expect.isTrue (obj.ReferenceEquals(s.Identity, f.Identity)) $"{name} {f.Name}: the shared flag (its parser and validation), not a copy"
                        uses <- uses |> Map.change f.Name (fun n -> Some (defaultArg n 0 + 1))
                    | _ -> ()
            // the flags the issue counted: --model/--output 7 times, --seed 6, --method/--alpha/--precision/--batch-size 4
            for flag, atLeast in [ "--model", 7; "--output", 7; "--seed", 6; "--method", 4; "--alpha", 4; "--precision", 4; "--batch-size", 4 ] do
                Expect.isGreaterThanOrEqual (defaultArg (uses.TryFind flag) 0) atLeast $"{flag}: one definition reused by {atLeast}+ commands"
        }

        test "Cli.flags.badChoice: --precision fp8 is exactly one line, exit 2; so is every enumerated flag and a bad number" {
            let train = [ "train"; "--model"; "m"; "--data"; "d"; "--format"; "jsonl"; "--output"; "o" ]
            Expect.equal (oneLine (train @ [ "--precision"; "fp8" ])) "mofo: --precision: 'fp8' is not one of fp32, bf16" "the form of a bad choice"
            for args, expected in
                [ train @ [ "--schedule"; "cos" ], "mofo: --schedule: 'cos' is not one of constant, linear, cosine"
                  train @ [ "--method"; "sgd" ], "mofo: --method: 'sgd' is not one of mofo, adamw,"
                  [ "train"; "--model"; "m"; "--data"; "d"; "--format"; "xml"; "--output"; "o" ], "mofo: --format: 'xml' is not one of tulu, alpaca, gsm8k, dpr, trace, jsonl"
                  train @ [ "--device"; "tpu" ], "mofo: --device: 'tpu' is not one of cpu, cuda, cuda:N"
                  train @ [ "--report"; "--report-suite"; "huge" ], "mofo: --report-suite: 'huge' is not one of tiny, paper, auto"
                  train @ [ "--lora-optimizer"; "sgd" ], "mofo: --lora-optimizer: 'sgd' is not one of mofo, adamw"
                  train @ [ "--batch-size"; "abc" ], "mofo: --batch-size: 'abc' is not an integer"
                  train @ [ "--lr"; "fast" ], "mofo: --lr: 'fast' is not a number"
                  train @ [ "--memory-budget"; "lots" ], "mofo: --memory-budget: 'lots' is not a size"
                  train @ [ "--optimizer-state"; "4bit" ], "mofo: --optimizer-state: '4bit' is not one of fp32, 8bit"
                  train @ [ "--watch-forgetting"; "mmlu" ], "mofo: --watch-forgetting: 'mmlu' is not one of pretrain-proxy, kl-to-base, distance, or arc-easy:N"
                  train @ [ "--forgetting-budget"; "arc-easy:100=2" ], "mofo: --forgetting-budget: 'arc-easy:100=2' is not MEASURE=X"
                  train @ [ "--watch-every"; "0" ], "mofo: --watch-every 0: must be at least 1"
                  [ "plan"; "--like"; "gpt-5" ], "mofo: --like: 'gpt-5' is not one of tinyllama-1.1b, pythia-160m, llama-2-7b"
                  [ "plan"; "--like"; "llama-2-7b"; "--precision"; "fp16" ], "mofo: --precision: 'fp16' is not one of fp32, bf16"
                  [ "continual"; "--model"; "m"; "--tasks"; "a,b"; "--output"; "o"; "--epochs"; "2,x" ], "mofo: --epochs: 'x' is not a positive integer"
                  [ "continual"; "--model"; "m"; "--tasks"; "a"; "--output"; "o"; "--metric"; "f1" ], "mofo: --metric: 'f1' is not one of accuracy, likelihood"
                  [ "eval"; "--model"; "m"; "--task"; "nope" ], "mofo: --task: 'nope' is not one of mmlu,"
                  [ "eval"; "--model"; "m"; "--task"; "mmlu"; "--limit"; "0" ], "mofo: --limit 0: must be at least 1"
                  [ "eval"; "--model"; "m"; "--task"; "arc-easy"; "--add-bos"; "maybe" ], "mofo: --add-bos: 'maybe' is not one of auto, true, false"
                  [ "eval-samples"; "--task"; "mbpp"; "--samples"; "s.jsonl" ], "mofo: --task: 'mbpp' is not one of humaneval"
                  [ "eval-samples"; "--task"; "humaneval"; "--samples"; "s.jsonl"; "--k"; "1,ten" ], "mofo: --k: 'ten' is not a positive integer"
                  [ "generate"; "--model"; "m"; "--temperature"; "-1" ], "mofo: --temperature -1: must be at least 0"
                  [ "init"; "--like"; "llama-2-7b"; "--output"; "o"; "--dtype"; "fp16" ], "mofo: --dtype: 'fp16' is not one of bf16, fp32"
                  [ "convert"; "--model"; "m"; "--to-hf"; "o"; "--shard-size-mb"; "0" ], "mofo: --shard-size-mb 0: must be at least 1"
                  [ "average"; "--base"; "a"; "--tuned"; "b"; "--output"; "o"; "--t"; "half" ], "mofo: --t: 'half' is not a number"
                  [ "merge"; "--method"; "ties"; "--base"; "a"; "--tuned"; "b"; "--output"; "o"; "--density"; "dense" ], "mofo: --density: 'dense' is not a number"
                  [ "merge"; "--method"; "dare"; "--base"; "a"; "--tuned"; "b"; "--output"; "o"; "--seed"; "x" ], "mofo: --seed: 'x' is not an integer"
                  [ "repro"; "table2"; "--scale"; "huge" ], "mofo: --scale: 'huge' is not one of tiny, paper"
                  [ "bench"; "model"; "--seq-len"; "long" ], "mofo: --seq-len: 'long' is not an integer"
                  [ "bench"; "memory"; "--like"; "gpt-5" ], "mofo: --like: 'gpt-5' is not one of tinyllama-1.1b" ] do
                Expect.stringStarts (oneLine args) expected $"{args}"
        }

        test "Cli.flags.required: a missing mandatory flag is one line naming it, exit 2; --help still prints the usage" {
            Expect.stringStarts (oneLine [ "train"; "--model"; "m"; "--data"; "d"; "--output"; "o" ]) "mofo: --format is required: tulu, alpaca" "names the flag and what it takes"
            Expect.stringStarts (oneLine [ "average"; "--base"; "a"; "--output"; "o" ]) "mofo: --tuned is required" "average"
            Expect.stringStarts (oneLine [ "merge"; "--method"; "ties"; "--base"; "a"; "--output"; "o" ]) "mofo: --tuned is required" "merge"
            Expect.stringStarts (oneLine [ "train"; "--model"; "m"; "--batch-size" ]) "mofo: argument '--batch-size' must be followed by" "a flag without its value"
            let code, out, _ = mofo [| "train"; "--help" |]
            Expect.equal code 0 "--help exits 0"
            Expect.stringContains out "USAGE: mofo train" "the usage"
            Expect.stringContains out "--precision <name>" "lists --precision"
            Expect.stringContains out "fp32 (default on the CPU) or bf16" "with the shared flag's help"
        }

        test "Cli.flags.defaults: without flags a run has Core's defaults; flags set their fields; plan reads the same flags" {
            let parse (args: string list) = Argu.ArgumentParser.Create<MoFO.Dsl.Cli.Train.TrainArgs>().ParseCommandLine(List.toArray args)
            let o = MoFO.Dsl.Cli.Common.trainingOptions TorchSharp.torch.CPU (parse [ "--model"; "m"; "--data"; "d"; "--format"; "jsonl"; "--output"; "o" ])
            // Core's Defaults, by hand: the MoFO authors' scripts
            Expect.equal (o.LearningRate, o.Schedule, o.WarmupRatio, o.WeightDecay, o.MaxGradNorm) (2e-5, Schedule.Cosine, 0.0, 0.0, 1.0) "the loop"
            Expect.equal (o.Epochs, o.Steps, o.BatchSize, o.MicroBatch, o.MaxLength, o.Seed) (1, Nullable(), 16, 16, 512, 42L) "the data"
            Expect.equal (o.Method.Optimizer, o.Method.Alpha, o.Precision) ("mofo", 0.15, Precision.Float32) "the method and precision"
            let o2 =
                MoFO.Dsl.Cli.Common.trainingOptions TorchSharp.torch.CPU
                    (parse [ "--model"; "m"; "--data"; "d"; "--format"; "jsonl"; "--output"; "o"; "--lr"; "1e-3"; "--batch-size"; "8"; "--micro-batch-size"; "2"
                             "--schedule"; "linear"; "--precision"; "bf16"; "--master-weights"; "--method"; "lion"; "--step-in-backward"; "--gradient-checkpointing" ])
            Expect.equal (o2.LearningRate, o2.BatchSize, o2.MicroBatch, o2.Schedule) (1e-3, 8, 2, Schedule.Linear) "the flags' values"
            Expect.equal (o2.Precision, o2.MasterWeights, o2.Method.Optimizer, o2.StepInBackward, o2.MaxGradNorm) (Precision.BFloat16, true, "lion", true, 0.0) "scale flags; no clipping with the step in the backward"
            Expect.equal o.OptimizerState MoFO.Optim.MomentStorage.Float32 "float32 moments by default"
            let o3 = MoFO.Dsl.Cli.Common.trainingOptions TorchSharp.torch.CPU (parse [ "--model"; "m"; "--data"; "d"; "--format"; "jsonl"; "--output"; "o"; "--optimizer-state"; "8bit" ])
            Expect.equal o3.OptimizerState MoFO.Optim.MomentStorage.Blockwise8Bit "--optimizer-state 8bit"
            let _, _, x8 = MoFO.Dsl.Cli.Plan.input (Argu.ArgumentParser.Create<MoFO.Dsl.Cli.Plan.PlanArgs>().ParseCommandLine [| "--like"; "llama-2-7b"; "--optimizer-state"; "8bit" |])
            Expect.equal x8.OptimizerState MoFO.Optim.MomentStorage.Blockwise8Bit "plan: --optimizer-state 8bit"
            let plan = Argu.ArgumentParser.Create<MoFO.Dsl.Cli.Plan.PlanArgs>().ParseCommandLine [| "--like"; "llama-2-7b"; "--batch-size"; "8"; "--max-len"; "128"; "--precision"; "bf16" |]
            let _, _, x = MoFO.Dsl.Cli.Plan.input plan
            Expect.equal (x.MicroBatch, x.SequenceLength, x.Precision, x.Method.Optimizer) (8, 128, Precision.BFloat16, "mofo") "plan: the same flags, the same defaults"
            let _, _, y = MoFO.Dsl.Cli.Plan.input (Argu.ArgumentParser.Create<MoFO.Dsl.Cli.Plan.PlanArgs>().ParseCommandLine [| "--like"; "llama-2-7b" |])
            Expect.equal (y.MicroBatch, y.SequenceLength) (16, 512) "plan without flags: Core's batch and length"
        }

        test "Cli.flags.recipe: the DSL's Recipe.Default is Core's defaults; Recipe.Paper holds the values the reproductions ran with" {
            Expect.equal MoFO.Dsl.Recipe.Default
                { Lr = 2e-5; Steps = None; Epochs = 1; BatchSize = 16; MicroBatchSize = 16; MaxLength = 512; Schedule = Schedule.Cosine; WarmupRatio = 0.0
                  WeightDecay = 0.0; MaxGradNorm = 1.0; TrainLimit = None; SampleFraction = None; Precision = Precision.Float32
                  BFloat16Update = MoFO.Optim.BFloat16Update.StochasticRounding; GradientCheckpointing = false
                  OptimizerState = MoFO.Optim.MomentStorage.Float32 } "Core's defaults"
            // the values of the DSL's former Recipe.Default, which every reproduction, script and sweep started from
            Expect.equal MoFO.Dsl.Recipe.Paper
                { Lr = 2e-5; Steps = None; Epochs = 2; BatchSize = 128; MicroBatchSize = 4; MaxLength = 1024; Schedule = Schedule.Cosine; WarmupRatio = 0.0
                  WeightDecay = 0.0; MaxGradNorm = 1.0; TrainLimit = None; SampleFraction = None; Precision = Precision.Float32
                  BFloat16Update = MoFO.Optim.BFloat16Update.StochasticRounding; GradientCheckpointing = false
                  OptimizerState = MoFO.Optim.MomentStorage.Float32 } "the paper's recipe, unchanged"
            let c = MoFO.Dsl.Study.context (MoFO.Dsl.Cli.Repro.scriptOptions [| "x.fsx" |])
            let tiny = MoFO.Dsl.Study.recipe c MoFO.Dsl.Study.DprKind
            Expect.equal (tiny.Epochs, tiny.BatchSize, tiny.Steps, tiny.MaxLength) (2, 16, Some 300, 128) "the tiny DPR recipe as before"
        }
    ]

/// `mofo average` outside 0 ≤ t ≤ 1 extrapolates: refused unless asked for with --extrapolate.
[<Tests>]
let average =
    testSequenced <| testList "Cli.average" [
        test "Cli.average.extrapolate: t = 1.5 is refused in one line naming --extrapolate (nothing written); with it θ = θ0 + 1.5·(θ1 − θ0)" {
            let stories = requireAsset MoFO.DataRoot.Assets.Stories260K
            let dir = Directory.CreateTempSubdirectory("mofo-cli-average-").FullName
            try
                let config = using (MoFO.Models.ModelLoader.Load stories) (fun lm -> lm.Module.Config)
                let tuned = Path.Combine(dir, "tuned")
                MoFO.Models.RandomCheckpoint.Write(tuned, config, TorchSharp.torch.ScalarType.Float32, 3L, requireAsset MoFO.DataRoot.Assets.Tok512) |> ignore
                let out = Path.Combine(dir, "x")
                for t in [ "1.5"; "-0.5" ] do
                    let code, _, err = mofo [| "average"; "--base"; stories; "--tuned"; tuned; "--t"; t; "--output"; out |]
                    Expect.equal code 2 $"t = {t}: a usage error; {err}"
                    Expect.equal (err.TrimEnd('\n').Split('\n').Length) 1 "one line"
                    Expect.stringContains err "extrapolates" "says that it extrapolates"
                    Expect.stringContains err "--extrapolate" "names the flag that allows it"
                    Expect.isFalse (Directory.Exists out) "nothing written"
                let code, _, err = mofo [| "average"; "--base"; stories; "--tuned"; tuned; "--t"; "1.5"; "--extrapolate"; "--output"; out |]
                Expect.equal code 0 err
                let weights (path: string) =
                    use lm = MoFO.Models.ModelLoader.Load path
                    lm.Module.StateDict() |> Seq.map (fun kv -> kv.Key, kv.Value.``to``(TorchSharp.torch.ScalarType.Float32).data<float32>().ToArray()) |> Map.ofSeq
                let w0, w1, w = weights stories, weights tuned, weights out
                for KeyValue (k, v) in w do
                    let worst = Array.init v.Length (fun i -> let a, b = float (w0[k][i]), float (w1[k][i]) in let e = a + 1.5 * (b - a) in abs (float v[i] - e) / max (abs e) 1e-3) |> Array.max
                    Expect.isLessThanOrEqual worst 1e-5 $"{k}: on the line, beyond the tuned model ({worst:G3})"
            finally Directory.Delete(dir, true)
        }
    ]

/// A `MOFO_*` variable that does not parse is an error naming it, whatever the command (a process of its own: the
/// environment is the process's).
[<Tests>]
let environment =
    let dll = typeof<MoFO.Dsl.Cli.Main.MofoArgs>.Assembly.Location
    let withVariable (name: string) (value: string) =
        let psi = Diagnostics.ProcessStartInfo("dotnet", [ dll; "methods" ], RedirectStandardOutput = true, RedirectStandardError = true)
        psi.Environment[name] <- value
        use p = Diagnostics.Process.Start psi
        let out, err = p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync()
        if not (p.WaitForExit(TimeSpan.FromMinutes 2.0)) then
            p.Kill true
            failtest "mofo methods did not finish"
        p.ExitCode, out.Result, err.Result
    testList "Cli.environment" [
        test "Cli.environment.cli: MOFO_COLLECTIVE_TIMEOUT, MOFO_PARALLEL, MOFO_THREADS, MOFO_MPI_CUDA_AWARE that do not parse stop a command in one line naming them (exit 2)" {
            for name, value, expected in
                [ "MOFO_COLLECTIVE_TIMEOUT", "abc", "mofo: MOFO_COLLECTIVE_TIMEOUT=abc: expected a positive number"
                  "MOFO_PARALLEL", "many", "mofo: MOFO_PARALLEL=many: expected a positive integer"
                  "MOFO_THREADS", "0", "mofo: MOFO_THREADS=0: expected a positive integer"
                  "MOFO_MPI_CUDA_AWARE", "yes", "mofo: MOFO_MPI_CUDA_AWARE=yes: expected 1 or 0" ] do
                let code, out, err = withVariable name value
                Expect.equal code 2 $"{name}={value}: exit 2; {err}"
                Expect.equal (err.TrimEnd('\n')) expected $"{name}: one line naming it"
                Expect.equal out "" "the command did not run"
            let code, out, err = withVariable "MOFO_COLLECTIVE_TIMEOUT" "30"
            Expect.equal code 0 $"a good value runs; {err}"
            Expect.stringContains out "optimizer members" "the command ran"
        }

        test "Cli.environment.core: the readers: unset is the default, a value parses, anything else names the variable" {
            let name = $"MOFO_TEST_{Guid.NewGuid():N}"
            let with' (value: string) f = Environment.SetEnvironmentVariable(name, value); try f () finally Environment.SetEnvironmentVariable(name, null)
            Expect.equal (EnvironmentVariables.PositiveNumber name) (Nullable()) "unset"
            with' "2.5" (fun () -> Expect.equal (EnvironmentVariables.PositiveNumber name) (Nullable 2.5) "a number")
            with' "7" (fun () -> Expect.equal (EnvironmentVariables.PositiveInteger name) (Nullable 7) "an integer")
            with' "1" (fun () -> Expect.isTrue (EnvironmentVariables.Switch name) "1 is on")
            with' "0" (fun () -> Expect.isFalse (EnvironmentVariables.Switch name) "0 is off")
            Expect.isFalse (EnvironmentVariables.Switch name) "unset is off"
            for value, read in [ "abc", (fun () -> EnvironmentVariables.PositiveNumber name |> ignore); "-1", (fun () -> EnvironmentVariables.PositiveNumber name |> ignore)
                                 "1.5", (fun () -> EnvironmentVariables.PositiveInteger name |> ignore); "on", (fun () -> EnvironmentVariables.Switch name |> ignore) ] do
                with' value (fun () ->
                    let e = throwsWith<OptionException> read
                    Expect.equal e.Field name $"{value}: the field is the variable"
                    Expect.stringStarts e.Message $"{name}={value}: expected" $"{value}: named with its value")
        }
    ]
