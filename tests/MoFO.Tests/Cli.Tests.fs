module MoFO.Tests.Cli

open Expecto
open MoFO.Tests.Fixtures

let private mofo (args: string[]) = captureConsole (fun () -> MoFO.Dsl.Cli.Main.run args)

[<Tests>]
let tests =
    testSequenced <| testList "Cli" [
        test "Cli.info: reports libtorch 2.10, TorchSharp 0.107, a CPU device and a working smoke test" {
            let code, out, _ = mofo [| "info" |]
            Expect.equal code 0 "exit code"
            let line key = out.Split('\n') |> Array.find (fun l -> l.StartsWith(key + ":"))
            Expect.stringContains (line "libtorch") "2.10" "libtorch version"
            Expect.stringContains (line "TorchSharp") "0.107" "TorchSharp version"
            Expect.stringContains (line "devices") "cpu" "cpu device"
            Expect.stringContains (line "smoke test") "dy/dw = [1; 2; 3]" "gradient of the smoke test"
            Expect.stringContains (line "smoke test") "save/load ok" "tensor round trip"
            Expect.stringContains (line "data root") "data" "data root shown"
        }

        test "Cli.badFlag: a wrong flag prints usage and exits non-zero" {
            let code, out, err = mofo [| "--no-such-flag" |]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err "--no-such-flag" "names the bad flag"
            Expect.stringContains err "USAGE: mofo" "prints usage"
            Expect.equal out "" "nothing on stdout"
        }

        test "Cli.noSubcommand: prints usage and exits non-zero" {
            let code, _, err = mofo [||]
            Expect.notEqual code 0 "non-zero exit"
            Expect.stringContains err "USAGE: mofo" "prints usage"
        }

        test "Cli.help: --help prints usage and exits 0" {
            let code, out, _ = mofo [| "--help" |]
            Expect.equal code 0 "exit 0"
            Expect.stringContains out "info" "lists the info subcommand"
        }
    
        test "Cli.device: an unknown device and CUDA on a CPU-only build are clear usage errors" {
            let code, _, err = mofo [| "generate"; "--model"; "x.bin"; "--device"; "tpu" |]
            Expect.notEqual code 0 "fails"
            Expect.stringContains err "--device tpu" "names the value"
            if not (TorchSharp.torch.cuda.is_available ()) then
                let code2, _, err2 = mofo [| "eval"; "--model"; "x.bin"; "--task"; "arc-easy"; "--device"; "cuda" |]
                Expect.equal code2 2 "usage error"
                Expect.stringContains err2 "CUDA is not available" "says why"
        }
    ]
