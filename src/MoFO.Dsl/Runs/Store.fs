/// The one store of every cache under results/cache (MOFO_CACHE moves it): fine-tuning runs (runs/), base-model
/// evaluations (base/), continual streams (continual/), sweep points (points/) and the evaluation values of each model
/// folder (evals.json). Keys are hashes of everything that changes what is stored; files are written atomically.
module MoFO.Dsl.Store

open System
open System.IO
open System.Security.Cryptography
open System.Text

/// The cache folder: results/cache (MOFO_CACHE overrides).
let root () =
    match Environment.GetEnvironmentVariable "MOFO_CACHE" with
    | null | "" -> Settings.DefaultCache
    | p -> Path.GetFullPath p

/// A short stable hash of a key.
let hash (s: string) = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes s)).Substring(0, 12).ToLowerInvariant()

/// A number as it appears in keys (round-trip, invariant).
let inv (x: float) = x.ToString("R", Globalization.CultureInfo.InvariantCulture)

/// A file-name-safe slug.
let slug (s: string) =
    s.ToLowerInvariant() |> String.map (fun c -> if Char.IsLetterOrDigit c || c = '.' || c = '-' then c else '_')

/// A folder of one kind of entry: root/<kind>/<name>-<hash of key>.
let folder (kind: string) (name: string) (key: string) = Path.Combine(root (), kind, $"{slug name}-{hash key}")

/// The settings that change a measure's number: the evaluation cache is keyed by them (not by where samples are
/// cached, nor by the sandbox override).
let settingsKey (s: Settings) = hash (Json.serialize { s with Cache = ""; UnsafeNoSandbox = false } + "|v2")

// ---- evaluation values of a model folder: evals.json = { settingsKey: { measure key: value } } ----------------------

let private evalFile dir = Path.Combine(dir, "evals.json")
let private evalLock = obj ()

let private readAll dir : Map<string, Map<string, float>> =
    Json.tryRead<Map<string, Map<string, float>>> (evalFile dir) |> Option.defaultValue Map.empty

/// The values cached for a model folder under a settings key.
let readEvals (dir: string) (key: string) : Map<string, float> =
    lock evalLock (fun () -> readAll dir |> Map.tryFind key |> Option.defaultValue Map.empty)

/// Adds one value (read-modify-write under a lock, then an atomic rename).
let writeEval (dir: string) (key: string) (measure: string) (value: float) =
    lock evalLock (fun () ->
        let all = readAll dir
        let inner = all |> Map.tryFind key |> Option.defaultValue Map.empty |> Map.add measure value
        Json.write (evalFile dir) (all |> Map.add key inner))
