namespace MoFO.Dsl

open System

/// The facts of each measure, read from its one declaration (`Evals.table`), as members of `Measure`.
[<AutoOpen>]
module MeasureFacts =
    type Measure with
        member m.Info = Evals.info m
        member m.Name = (Evals.info m).Name
        /// The key in JSON files.
        member m.Key = (Evals.info m).Key
        /// Whether a larger value is better.
        member m.HigherIsBetter = (Evals.info m).HigherIsBetter
        /// A percentage in the paper's tables (accuracies) rather than a raw number.
        member m.IsAccuracy = (Evals.info m).Unit = MeasureUnit.Accuracy
        static member All = Evals.table |> List.map (fun i -> i.Measure)
        /// The measure of a key or name; an ArgumentException listing the keys otherwise.
        static member Parse(s: string) =
            let known = String.Join(", ", Evals.table |> List.map (fun i -> i.Key))
            Evals.table |> List.tryFind (fun i -> i.Key = s || i.Name = s) |> Option.map (fun i -> i.Measure)
            |> Option.defaultWith (fun () -> raise (ArgumentException $"unknown measure '{s}' (expected one of {known})"))
