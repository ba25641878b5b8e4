module MoFO.Tests.Scripts

open System
open System.IO
open Expecto
open MoFO.Tests.Fixtures

[<Tests>]
let tests =
    testList "Scripts" [
        test "Scripts.gradient: dotnet fsi scripts/gradient.fsx builds when needed, loads the fixed native library and prints a gradient" {
            let code, out, err = runProcess "dotnet" [ "fsi"; "--quiet"; "scripts/gradient.fsx" ] repoRoot (TimeSpan.FromMinutes 5.0)
            Expect.equal code 0 $"script exit code; stderr: {err}"
            Expect.stringContains out "gradient: [1; 2; 3]" "the gradient of sum(w * x) is x"
        }
    
        test "Scripts.generate: scripts/MoFO.fsx references everything a model needs; stories260K continues a prompt" {
            requireAsset MoFO.DataRoot.Assets.Stories260K |> ignore
            let code, out, err = runProcess "dotnet" [ "fsi"; "--quiet"; "scripts/generate.fsx" ] repoRoot (TimeSpan.FromMinutes 5.0)
            Expect.equal code 0 $"script exit code; stderr: {err}"
            Expect.stringStarts out "Once upon a time, there was a little girl named Lily" "greedy continuation of the real model"
        }
    ]
