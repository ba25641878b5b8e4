namespace MoFO.Dsl

open System

/// The exit codes of every `mofo` command, `mofo repro`, the paper-repro scripts and a sweep's point processes: one
/// table, one classification of failures (README: "Exit codes").
type ExitCode =
    | Ok = 0
    /// an unexpected failure (a bug, a native crash): the message and the stack trace are printed
    | Failure = 1
    /// a wrong flag, a bad option value, a run folder used the wrong way
    | Usage = 2
    /// a file or asset that does not exist (model, data, tokenizer, config)
    | MissingFile = 3
    /// a file that exists but is malformed: a data record, a checkpoint, a config
    | BadInput = 4
    /// generated code cannot run: the sandbox is unavailable
    | Sandbox = 5
    /// training diverged (non-finite loss or gradient several steps in a row)
    | Diverged = 6
    /// the run does not fit in memory (the plan refuses it, or an allocation failed)
    | OutOfMemory = 7
    /// a distributed job lost a rank: a peer died or hung, or MPI failed (the last checkpoint stays resumable)
    | Distributed = 8
    /// interrupted (Ctrl-C); a checkpoint was written where the command trains
    | Interrupted = 130

/// A failure that already has its class (a sweep point's process exited with this code).
type ClassifiedException(code: ExitCode, message: string) =
    inherit Exception(message)
    member _.Code = code

module ExitCode =
    /// What a code means, for usage text and the README.
    let describe (c: ExitCode) =
        match c with
        | ExitCode.Ok -> "success"
        | ExitCode.Failure -> "unexpected failure (a bug or a native crash)"
        | ExitCode.Usage -> "usage: a wrong flag or option value"
        | ExitCode.MissingFile -> "a missing file or asset"
        | ExitCode.BadInput -> "malformed input: a data record, a checkpoint or a config"
        | ExitCode.Sandbox -> "the code sandbox is unavailable"
        | ExitCode.Diverged -> "training diverged"
        | ExitCode.OutOfMemory -> "out of memory (planned or actual)"
        | ExitCode.Distributed -> "a distributed job lost a rank (a peer died or hung, or MPI failed)"
        | ExitCode.Interrupted -> "interrupted"
        | c when int c > 128 && int c < 160 -> $"killed by signal {int c - 128}"
        | c -> $"exit code {int c}"

    let all =
        [ ExitCode.Ok; ExitCode.Failure; ExitCode.Usage; ExitCode.MissingFile; ExitCode.BadInput; ExitCode.Sandbox
          ExitCode.Diverged; ExitCode.OutOfMemory; ExitCode.Distributed; ExitCode.Interrupted ]

    /// The class of a failure. Wrapped exceptions (AggregateException, TargetInvocationException) are unwrapped first.
    let rec classify (e: exn) : ExitCode =
        match e with
        | :? AggregateException as a when a.InnerExceptions.Count = 1 -> classify a.InnerExceptions[0]
        | :? Reflection.TargetInvocationException as t when not (isNull t.InnerException) -> classify t.InnerException
        | :? ClassifiedException as c -> c.Code
        | :? MoFO.Data.DataFormatException | :? MoFO.Checkpoints.CheckpointException -> ExitCode.BadInput
        | :? MoFO.MissingAssetException | :? IO.FileNotFoundException | :? IO.DirectoryNotFoundException -> ExitCode.MissingFile
        | :? MoFO.Evaluation.SandboxUnavailableException -> ExitCode.Sandbox
        | :? MoFO.Training.TrainingDivergedException -> ExitCode.Diverged
        | :? MoFO.Distributed.DistributedException | :? MoFO.Distributed.CollectiveTimeoutException -> ExitCode.Distributed
        | :? OutOfMemoryException -> ExitCode.OutOfMemory
        | :? OperationCanceledException -> ExitCode.Interrupted
        | :? MoFO.RunFolderException | :? ArgumentException -> ExitCode.Usage
        | _ -> ExitCode.Failure

    /// Whether a failure of this class is the user's to fix (the same on a retry), as opposed to a crash.
    let isUserError (c: ExitCode) =
        match c with
        | ExitCode.Usage | ExitCode.MissingFile | ExitCode.BadInput | ExitCode.Sandbox | ExitCode.OutOfMemory -> true
        | _ -> false
