module MoFO.Tests.DataRoot

open System
open System.IO
open Expecto
open MoFO

let private withEnv (value: string) f =
    let old = Environment.GetEnvironmentVariable DataRoot.EnvironmentVariable
    Environment.SetEnvironmentVariable(DataRoot.EnvironmentVariable, value)
    try f () finally Environment.SetEnvironmentVariable(DataRoot.EnvironmentVariable, old)

[<Tests>]
let tests =
    testSequenced <| testList "DataRoot" [
        test "DataRoot.default: ../shared/data beside the repository" {
            withEnv null (fun () ->
                Expect.equal DataRoot.Path (Path.GetFullPath(Path.Combine(Fixtures.repoRoot, "..", "shared", "data"))) "default root")
        }

        test "DataRoot.env: MOFO_DATA overrides the default, --data-root overrides both" {
            withEnv "/tmp/somewhere" (fun () ->
                Expect.equal DataRoot.Path "/tmp/somewhere" "env"
                Expect.equal DataRoot.Source "MOFO_DATA" "source"
                DataRoot.Override <- "/tmp/flag"
                try
                    Expect.equal DataRoot.Path "/tmp/flag" "flag wins"
                finally DataRoot.Override <- null)
        }

        test "DataRoot.missing: one line naming the path and how to set the root" {
            withEnv "/nonexistent/data" (fun () ->
                let e = Fixtures.throwsWith<MissingAssetException> (fun () -> DataRoot.Require DataRoot.Assets.Stories260K |> ignore)
                Expect.stringContains e.Message "/nonexistent/data/models/stories260K/stories260K.bin" "names the path"
                Expect.stringContains e.Message "MOFO_DATA" "says how to set the root"
                Expect.isFalse (e.Message.Contains "\n") "one line")
        }

        test "DataRoot.assets: the real stories260K checkpoint is where SOURCES.md says, with its header" {
            let path = Fixtures.requireAsset DataRoot.Assets.Stories260K
            Expect.equal (FileInfo(path).Length) 1056540L "size from SOURCES.md"
            use r = new BinaryReader(File.OpenRead path)
            let header = Array.init 7 (fun _ -> r.ReadInt32())
            Expect.equal header [| 64; 172; 5; 8; 4; 512; 512 |] "llama2.c header of stories260K"
        }
    ]
