/// A flag of the command line defined once: its spelling, its help, how its text becomes a value (and which values it
/// refuses, in one line that names the flag), and the Core option field it sets. Argu has no union inheritance, so each
/// command's union still declares the flags it takes, one case each; the case maps to its `Flag` (`IFlags`), which
/// gives the case its usage and parses its value. `Flags` holds the flags that several commands share.
namespace MoFO.Dsl.Cli

open System
open System.Collections.Concurrent
open System.Globalization
open Argu
open Microsoft.FSharp.Reflection

/// A flag, whatever its value: its spelling (as Argu derives it from the union case: `Batch_Size` → `--batch-size`;
/// a test holds the two equal), its help, and the Core option field it sets (None: the command line's own). Flags
/// that `Describe` makes from one another are the same flag (`Identity`) with another help text.
[<AbstractClass>]
type Flag(name: string, usage: string, field: string option, identity: obj) =
    member _.Name = name
    member _.Usage = usage
    member _.Field = field
    member _.Identity = identity
    /// Parses a value's text (a switch: ""), throwing the one-line error of a bad value.
    abstract Check: string -> unit

/// A flag whose value is a 'T (a switch's is true).
[<Sealed>]
type Flag<'T>(name: string, usage: string, field: string option, identity: obj, parse: string -> 'T) =
    inherit Flag(name, usage, field, identity)
    new(name, usage, field, parse) = Flag<'T>(name, usage, field, obj (), parse)
    member _.Parse(text: string) = parse text
    override _.Check text = parse text |> ignore
    /// The same flag with this command's help text (its default, or what its value means here).
    member _.Describe(usage: string) = Flag<'T>(name, usage, field, identity, parse)

/// A bad flag value, or a missing mandatory flag: one line that names the flag (exit 2, as every ArgumentException).
type FlagException(flag: string, message: string) =
    inherit ArgumentException(message)
    member _.Flag = flag

/// A command's Argu union: the flag of each case.
type IFlags =
    abstract Flag: Flag

/// Making flags and reading their values from a command's parse results.
module Flag =
    let private fail (flag: string) (message: string) : 'a = raise (FlagException(flag, message))

    /// A flag whose value is its text (a path, a name).
    let text (name: string) (usage: string) = Flag<string>(name, usage, None, id)

    /// A switch: true when given.
    let switch (name: string) (usage: string) = Flag<bool>(name, usage, None, fun _ -> true)

    /// An integer (invariant culture).
    let int (name: string) (usage: string) =
        Flag<int>(name, usage, None, fun s ->
            match Int32.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture) with
            | true, v -> v
            | _ -> fail name $"{name}: '{s}' is not an integer")

    /// A 64-bit integer (invariant culture).
    let int64 (name: string) (usage: string) =
        Flag<int64>(name, usage, None, fun s ->
            match Int64.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture) with
            | true, v -> v
            | _ -> fail name $"{name}: '{s}' is not an integer")

    /// A finite number (invariant culture: 1e-5, 0.15).
    let float (name: string) (usage: string) =
        Flag<float>(name, usage, None, fun s ->
            match Double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture) with
            | true, v when Double.IsFinite v -> v
            | _ -> fail name $"{name}: '{s}' is not a number")

    /// One of named choices (case-insensitive); the error lists them.
    let choice (name: string) (usage: string) (choices: (string * 'T) list) =
        Flag<'T>(name, usage, None, fun s ->
            match choices |> List.tryFind (fun (c, _) -> String.Equals(c, s.Trim(), StringComparison.OrdinalIgnoreCase)) with
            | Some (_, v) -> v
            | None -> fail name $"""{name}: '{s}' is not one of {String.Join(", ", choices |> List.map fst)}""")

    /// A name that `accepts` takes (the text itself is the value); the error lists `names ()`.
    let oneOf (name: string) (usage: string) (names: unit -> string seq) (accepts: string -> bool) =
        Flag<string>(name, usage, None, fun s ->
            if accepts s then s else fail name $"""{name}: '{s}' is not one of {String.Join(", ", names ())}""")

    /// Comma-separated positive integers (pass@k's 1,10; epochs per task).
    let positiveInts (name: string) (usage: string) =
        Flag<int list>(name, usage, None, fun s ->
            let parts = s.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries) |> Array.toList
            if parts.IsEmpty then fail name $"{name}: '{s}' is not a list of positive integers (e.g. 1,10)"
            parts |> List.map (fun p ->
                match Int32.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture) with
                | true, v when v >= 1 -> v
                | _ -> fail name $"{name}: '{p}' is not a positive integer (expected e.g. 1,10)"))

    /// A memory size: 80GB, 141GB, 24GiB, 512MB (decimal units; GiB/MiB binary).
    let size (name: string) (usage: string) =
        Flag<int64>(name, usage, None, fun text ->
            let t = text.Trim().ToUpperInvariant()
            let units = [ "GIB", 1L <<< 30; "MIB", 1L <<< 20; "GB", 1_000_000_000L; "MB", 1_000_000L; "G", 1_000_000_000L; "B", 1L ]
            let amount (u: string) = Double.TryParse(t.Substring(0, t.Length - u.Length), NumberStyles.Float, CultureInfo.InvariantCulture)
            match units |> List.tryFind (fun (u, _) -> t.EndsWith u) |> Option.map (fun (u, scale) -> amount u, scale) with
            | Some ((true, x), scale) when x > 0.0 && Double.IsFinite x -> Operators.int64 (x * Operators.float scale)
            | _ -> fail name $"{name}: '{text}' is not a size (expected e.g. 80GB or 24GiB)")

    /// The flag with a lower bound (a value below it: `--flag v: must be at least min`).
    let atLeast (min: 'T) (f: Flag<'T>) =
        Flag<'T>(f.Name, f.Usage, f.Field, fun s ->
            let v = f.Parse s
            if v < min then fail f.Name $"{f.Name} {s}: must be at least {min}" else v)

    /// The flag as the Core option field it sets (Core's errors name the field; the CLI shows the flag).
    let sets (field: string) (f: Flag<'T>) = Flag<'T>(f.Name, f.Usage, Some field, f.Parse)

    /// The flag of each case of a command's union, with the case's tag.
    let private cases = ConcurrentDictionary<Type, (Flag * int) list>()

    let private casesOf (t: Type) =
        cases.GetOrAdd(t, fun t ->
            [ for c in FSharpType.GetUnionCases t ->
                let fields = c.GetFields() |> Array.map (fun p -> if p.PropertyType.IsValueType then Activator.CreateInstance p.PropertyType else null)
                (FSharpValue.MakeUnion(c, fields) :?> IFlags).Flag, c.Tag ])

    /// The flags a command takes (its union's cases).
    let ofCommand (t: Type) = casesOf t |> List.map fst

    /// A given case's value text ("" for a switch).
    let private textOf (t: Type) (value: obj) =
        match FSharpValue.GetUnionFields(value, t) with
        | _, [| x |] -> string x
        | _ -> ""

    /// The texts given to the flag, in order (None: the command does not take it).
    let private texts (f: Flag) (a: ParseResults<'A>) =
        let t = typeof<'A>
        match casesOf t |> List.tryFind (fun (g, _) -> obj.ReferenceEquals(g.Identity, f.Identity)) with
        | None -> None
        | Some (_, tag) ->
            let tagOf = FSharpValue.PreComputeUnionTagReader t
            Some [ for r in a.GetAllResults() do if tagOf (box r) = tag then yield textOf t (box r) ]

    /// Whether the command takes the flag.
    let takes (f: Flag) (a: ParseResults<'A>) = (texts f a).IsSome

    /// The flag's value, if given (the last one given wins). The command must take the flag.
    let tryGet (f: Flag<'T>) (a: ParseResults<'A>) : 'T option =
        match texts f a with
        | Some ts -> ts |> List.tryLast |> Option.map f.Parse
        | None -> invalidOp $"{typeof<'A>.Name} does not take {f.Name}"

    /// The flag's value where the command takes it and it is given; None otherwise (for readers shared by commands
    /// that take different sets of flags).
    let ifTaken (f: Flag<'T>) (a: ParseResults<'A>) : 'T option =
        texts f a |> Option.bind List.tryLast |> Option.map f.Parse

    /// The flag's value, or a default.
    let getOr (f: Flag<'T>) (byDefault: 'T) (a: ParseResults<'A>) = tryGet f a |> Option.defaultValue byDefault

    /// A required flag's value.
    let get (f: Flag<'T>) (a: ParseResults<'A>) =
        match tryGet f a with
        | Some v -> v
        | None -> fail f.Name $"{f.Name} is required: {f.Usage}"

    /// Whether a switch is given.
    let has (f: Flag<bool>) (a: ParseResults<'A>) = tryGet f a |> Option.defaultValue false

    /// Every value given to a repeatable flag, in order.
    let all (f: Flag<'T>) (a: ParseResults<'A>) =
        match texts f a with
        | Some ts -> ts |> List.map f.Parse
        | None -> invalidOp $"{typeof<'A>.Name} does not take {f.Name}"

    /// Checks a command's flags before it runs: every value given parses (a bad one is one line naming its flag), and
    /// every mandatory flag is there (Argu checks those only when a value is read). Returns the results.
    let check (a: ParseResults<'A>) =
        let t = typeof<'A>
        for r in a.GetAllResults() do (box r :?> IFlags).Flag.Check(textOf t (box r))
        let tagOf = FSharpValue.PreComputeUnionTagReader t
        let given = a.GetAllResults() |> List.map (box >> tagOf) |> Set.ofList
        for c in a.Parser.GetArgumentCases() do
            if c.IsMandatory.Value && not (given.Contains c.UnionCaseInfo.Tag) then
                let flag = casesOf t |> List.find (fun (_, tag) -> tag = c.UnionCaseInfo.Tag) |> fst
                fail flag.Name $"{flag.Name} is required: {flag.Usage}"
        a
