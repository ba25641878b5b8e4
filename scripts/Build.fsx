// Builds MoFO.NET (Release, as ./mofo does) when a source file is newer than the last build; a no-op otherwise.
// Load it first, then MoFO.fsx, each at the top level of your script (F# interactive resolves the references of a
// top-level #load only when it reaches it, so the build runs before MoFO.fsx's references are read):
//   #load "../scripts/Build.fsx"
//   #load "../scripts/MoFO.fsx"
open System.Diagnostics
open System.IO

let private root = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, ".."))
let private launcher = Path.Combine(root, "mofo")
let private build =
    let psi = ProcessStartInfo("bash", UseShellExecute = false)
    psi.ArgumentList.Add launcher
    psi.ArgumentList.Add "--build-only"
    use p = Process.Start psi
    p.WaitForExit()
    p.ExitCode
if build <> 0 then
    eprintfn "MoFO.NET could not be built (see the errors above); fix them, or build by hand: %s info" launcher
    exit 1
