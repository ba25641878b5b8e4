/// `mofo info`: versions, devices, threads, the data root and its assets.
module MoFO.Dsl.Cli.Info

open System
open System.IO
open MoFO
open MoFO.Native

let private bridgeState (path: string) =
    if isNull path then "found by TorchSharp's own probing"
    else
        let needs = ElfVersionNeeds.Read(File.ReadAllBytes path, path)
        match needs |> Seq.tryFind (fun n -> n.Version = ElfVersionNeeds.TorchSharpBridgeVersion) with
        | Some n when n.Weak -> $"{path} ({n.Version} marked weak by the build)"
        | Some n -> $"{path} (requires {n.Version}; the system libstdc++ provides it)"
        | None -> path

/// Prints the report; returns the process exit code.
let run () =
    let info = RuntimeInfo.Collect()
    let smoke = MoFO.Runtime.smoke ()
    let line (k: string) (v: string) = printfn "%-22s %s" (k + ":") v
    line "MoFO.NET" info.MoFOVersion
    line "TorchSharp" info.TorchSharpVersion
    line "libtorch" info.LibTorchVersion
    line "backend" info.Backend
    line "devices" (String.Join(", ", info.Devices))
    line "threads" (string info.Threads)
    line "native bridge" (bridgeState info.NativeBridge)
    line "smoke test" (
        sprintf "y = sum(w*x) = %g, dy/dw = [%s], tensor save/load %s"
            smoke.Output (smoke.Gradient |> Array.map string |> String.concat "; ")
            (if smoke.SavedAndReloaded then "ok" else "FAILED"))
    line "data root" $"{DataRoot.Path} (from {DataRoot.Source})"
    let assets = DataRoot.Assets.All
    let present = assets |> Seq.filter (fun a -> a.Present) |> Seq.length
    line "assets" $"{present} of {assets.Count} present"
    for a in assets do
        printfn "  %-8s %-52s %s" (if a.Present then "ok" else "MISSING") a.RelativePath a.Description
    if present < assets.Count then
        printfn "Set %s=/path/to/data (or pass --data-root) to point at the real assets." DataRoot.EnvironmentVariable
    if smoke.SavedAndReloaded then 0 else 1
