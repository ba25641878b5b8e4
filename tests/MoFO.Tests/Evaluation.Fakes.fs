/// A scripted language model for harness tests: log-likelihoods from a function, generations from a function.
module MoFO.Tests.Evaluation.Fakes

open System.Collections.Generic
open MoFO.Models

type FakeModel(score: string -> string -> float, generate: string -> GenerationOptions -> string) =
    let calls = List<IReadOnlyList<LogLikelihoodRequest>>()
    /// Every batch of log-likelihood requests the model was asked, in order.
    member _.Calls = calls
    interface ILanguageModel with
        member _.Name = "fake"
        member _.MaxSequenceLength = 1 <<< 20
        member _.LogLikelihoods requests =
            calls.Add requests
            [| for r in requests -> LogLikelihoodResult(score r.Context r.Continuation, r.Continuation.Length, false) |] :> _
        member _.Generate(prompts, options) = [| for p in prompts -> generate p options |] :> _
        member _.TextLogLikelihoods texts =
            [| for t in texts -> LogLikelihoodResult(-(float t.Length), t.Length, false) |] :> _

/// A model whose log-likelihood of a continuation is given by a table keyed by the continuation (context ignored).
let byContinuation (table: (string * float) list) =
    let m = dict table
    FakeModel((fun _ cont -> m[cont]), (fun _ _ -> ""))
