/// `mofo eval-samples`: scores a samples file of generated code (the human-eval format) in the sandbox.
module MoFO.Dsl.Cli.EvalSamples

open System
open System.IO
open Argu
open MoFO
open MoFO.Evaluation

/// The measure whose samples this command scores: HumanEval's generated programs, run in the sandbox.
let private scored = MoFO.Dsl.Measure.HumanEval
let private scoredTask = defaultArg scored.Task scored.Key

/// `mofo eval-samples`'s own flags (the shared ones are in `Flags`).
module private Own =
    let task = Flag.choice "--task" $"the benchmark: {scoredTask}." [ scoredTask, scoredTask ] |> Flag.sets "Task"
    let samples = Flag.text "--samples" "jsonl of {task_id, completion} lines (plain or .gz)."
    let k = Flags.k.Describe "comma-separated k values for pass@k (default 1,10; a k above the samples per problem is left out)."
    let problems = Flag.text "--problems" "the problems file (default: <data root>/benchmarks/humaneval/HumanEval.jsonl.gz)."
    let output = Flags.output.Describe "where to write per-sample results (default: <samples>_results.jsonl)."
    let workers = Flag.int "--workers" "parallel sandboxed workers (default: the number of cores)." |> Flag.atLeast 1
    let timeout = Flag.float "--timeout" "wall-clock seconds per program (default 3)." |> Flag.atLeast 0.0
    let unsafeNoSandbox =
        Flags.unsafeNoSandbox.Describe "run generated code WITHOUT bubblewrap isolation when bubblewrap is missing (resource limits still apply). Dangerous."

type EvalSamplesArgs =
    | [<Mandatory>] Task of name: string
    | [<Mandatory>] Samples of path: string
    | K of ks: string
    | Problems of path: string
    | Output of path: string
    | Workers of n: string
    | Timeout of seconds: string
    | Unsafe_No_Sandbox
    interface IFlags with
        member this.Flag =
            match this with
            | Task _ -> Own.task | Samples _ -> Own.samples | K _ -> Own.k | Problems _ -> Own.problems | Output _ -> Own.output
            | Workers _ -> Own.workers | Timeout _ -> Own.timeout | Unsafe_No_Sandbox -> Own.unsafeNoSandbox
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

let run (args: ParseResults<EvalSamplesArgs>) =
    let ks = Flag.getOr Own.k [ 1; 10 ] args
    let problemsPath = Flag.tryGet Own.problems args |> Option.defaultWith (fun () -> scored.Assets MoFO.Dsl.Settings.Paper |> List.head)
    let samplesPath = Flag.get Own.samples args
    let limits = SandboxLimits(Timeout = TimeSpan.FromSeconds(Flag.getOr Own.timeout 3.0 args))
    let sandbox = PythonSandbox.Create(limits, Flag.has Own.unsafeNoSandbox args)
    if not sandbox.Isolated then
        eprintfn "mofo: WARNING: running generated code without a sandbox (--unsafe-no-sandbox)."
    let problems = HumanEval.ReadProblems problemsPath |> Seq.map (fun p -> p.TaskId, p) |> dict
    let samples = HumanEval.ReadSamples(samplesPath, Collections.Generic.Dictionary problems)
    let workers = Flag.getOr Own.workers Environment.ProcessorCount args
    use progress = new ConsoleProgress("humaneval", int64 samples.Count, "samples")
    let summary = HumanEval.Score(samples, Collections.Generic.Dictionary problems, sandbox, ks, workers, progress)
    (progress :> IDisposable).Dispose()
    let output =
        Flag.tryGet Own.output args
        |> Option.defaultWith (fun () ->
            let name = Path.GetFileName samplesPath
            let stem = if name.EndsWith ".jsonl.gz" then name[.. name.Length - 10] elif name.EndsWith ".jsonl" then name[.. name.Length - 7] else name
            Path.Combine(Path.GetDirectoryName(Path.GetFullPath samplesPath), stem + "_results.jsonl"))
    HumanEval.WriteResults(output, summary.Results)
    printfn "humaneval: %d samples over %d problems (%s)" summary.Samples summary.Problems (if sandbox.Isolated then "bubblewrap sandbox" else "NO sandbox")
    for KeyValue (k, v) in summary.PassAtK do
        printfn "pass@%d: %.4f" k v
    let skipped = ks |> List.filter (fun k -> not (summary.PassAtK.ContainsKey k))
    if not skipped.IsEmpty then
        printfn "(pass@%s left out: fewer samples per problem than k)" (String.Join(",", skipped))
    printfn "per-sample results: %s" output
    0
