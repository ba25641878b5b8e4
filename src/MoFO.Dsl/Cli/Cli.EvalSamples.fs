/// `mofo eval-samples`: scores a samples file of generated code (the human-eval format) in the sandbox.
module MoFO.Dsl.Cli.EvalSamples

open System
open System.IO
open Argu
open MoFO
open MoFO.Evaluation

type EvalSamplesArgs =
    | [<Mandatory>] Task of name: string
    | [<Mandatory>] Samples of path: string
    | K of ks: string
    | Problems of path: string
    | Output of path: string
    | Workers of n: int
    | Timeout of seconds: float
    | Unsafe_No_Sandbox
    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Task _ -> "the benchmark: humaneval."
            | Samples _ -> "jsonl of {task_id, completion} lines (plain or .gz)."
            | K _ -> "comma-separated k values for pass@k (default 1,10; a k above the samples per problem is left out)."
            | Problems _ -> "the problems file (default: <data root>/benchmarks/humaneval/HumanEval.jsonl.gz)."
            | Output _ -> "where to write per-sample results (default: <samples>_results.jsonl)."
            | Workers _ -> "parallel sandboxed workers (default: the number of cores)."
            | Timeout _ -> "wall-clock seconds per program (default 3)."
            | Unsafe_No_Sandbox -> "run generated code WITHOUT bubblewrap isolation when bubblewrap is missing (resource limits still apply). Dangerous."

/// Parses "1,10" into [1; 10].
let parseKs (text: string) =
    text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.map (fun s ->
        match Int32.TryParse s with
        | true, k when k >= 1 -> k
        | _ -> raise (ArgumentException $"--k: '{s}' is not a positive integer (expected e.g. 1,10)"))
    |> Array.toList

/// The measure whose samples this command scores: HumanEval's generated programs, run in the sandbox.
let private scored = MoFO.Dsl.Measure.HumanEval

let run (args: ParseResults<EvalSamplesArgs>) =
    let task = args.GetResult Task
    let name = defaultArg scored.Task scored.Key
    if not (String.Equals(task, name, StringComparison.OrdinalIgnoreCase)) then
        raise (ArgumentException $"--task {task}: eval-samples scores {name} only")
    let ks = args.TryGetResult K |> Option.map parseKs |> Option.defaultValue [ 1; 10 ]
    let problemsPath = args.TryGetResult Problems |> Option.defaultWith (fun () -> scored.Assets MoFO.Dsl.Settings.Paper |> List.head)
    let samplesPath = args.GetResult Samples
    let limits = SandboxLimits(Timeout = TimeSpan.FromSeconds(args.GetResult(Timeout, 3.0)))
    let sandbox = PythonSandbox.Create(limits, args.Contains Unsafe_No_Sandbox)
    if not sandbox.Isolated then
        eprintfn "mofo: WARNING: running generated code without a sandbox (--unsafe-no-sandbox)."
    let problems = HumanEval.ReadProblems problemsPath |> Seq.map (fun p -> p.TaskId, p) |> dict
    let samples = HumanEval.ReadSamples(samplesPath, Collections.Generic.Dictionary problems)
    let workers = args.GetResult(Workers, Environment.ProcessorCount)
    use progress = new ConsoleProgress("humaneval", int64 samples.Count, "samples")
    let summary = HumanEval.Score(samples, Collections.Generic.Dictionary problems, sandbox, ks, workers, progress)
    (progress :> IDisposable).Dispose()
    let output =
        args.TryGetResult Output
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
