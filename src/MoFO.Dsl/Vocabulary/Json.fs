/// The one JSON codec of the DSL: F# records and unions (FSharp.SystemTextJson), non-finite numbers allowed, atomic
/// writes. The stores (runs, evaluations, continual outcomes, sweep points) and the output files use it.
module MoFO.Dsl.Json

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open System.Text.Json.Serialization

/// Measures as their keys, camelCase fields, unions as { "Case": …, "Fields": … }, options as null or the value, NaN and ±Infinity as strings.
let options =
    let o = JsonSerializerOptions(WriteIndented = true)
    // a measure as its key (before the F# converter, which would take it for a record of functions)
    o.Converters.Add(MeasureJsonConverter())
    o.Converters.Add(
        JsonFSharpConverter(
            JsonUnionEncoding.AdjacentTag ||| JsonUnionEncoding.NamedFields ||| JsonUnionEncoding.UnwrapFieldlessTags
            ||| JsonUnionEncoding.UnwrapOption))
    o.NumberHandling <- JsonNumberHandling.AllowNamedFloatingPointLiterals
    o.Converters.Add(JsonStringEnumConverter())
    o

let serialize (value: 'T) : string = JsonSerializer.Serialize<'T>(value, options)

/// Reads a value; a malformed file is a DataFormatException naming it.
let deserialize<'T> (file: string) (text: string) : 'T =
    try JsonSerializer.Deserialize<'T>(text, (options: JsonSerializerOptions))
    with :? JsonException as e -> raise (MoFO.Data.DataFormatException(file, Nullable(), $"not the expected JSON ({e.Message})", e))

/// Writes a value atomically (a temporary file, then a rename), creating the folder.
let write (path: string) (value: 'T) =
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path)) |> ignore
    MoFO.AtomicFile.WriteAllText(path, serialize value)

let read<'T> (path: string) : 'T = deserialize<'T> path (File.ReadAllText path)

let tryRead<'T> (path: string) : 'T option = if File.Exists path then Some (read<'T> path) else None

// ---- documents built by hand (the output contracts): numbers that are not finite become null -----------------------

let num (x: float) : JsonNode = if Double.IsFinite x then JsonValue.Create x else null
let str (s: string) : JsonNode = JsonValue.Create s
let strOpt (s: string option) : JsonNode = match s with Some s -> JsonValue.Create s | None -> null
let bool (b: bool) : JsonNode = JsonValue.Create b
let int (i: int64) : JsonNode = JsonValue.Create i
let obj (pairs: (string * JsonNode) seq) : JsonNode =
    let o = JsonObject()
    for k, v in pairs do o[k] <- v
    o
let arr (items: JsonNode seq) : JsonNode = JsonArray(Seq.toArray items)
/// An object of named numbers in order.
let numbers (pairs: (string * float) seq) : JsonNode = obj (pairs |> Seq.map (fun (k, v) -> k, num v))

/// Indented text of a hand-built document.
let text (node: JsonNode) = node.ToJsonString(JsonSerializerOptions(WriteIndented = true, Encoder = Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping))
