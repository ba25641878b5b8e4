module MoFO.Tests.Native

open System.IO
open Expecto
open TorchSharp
open MoFO.Native

let private outputBridge () =
    match NativeLoader.FindNativeDirectory() with
    | null -> failtest "no libLibTorchSharp.so beside the test assemblies"
    | d -> Path.Combine(d, "libLibTorchSharp.so")

[<Tests>]
let tests =
    testList "Native" [
        test "Native.forwardBackward: a linear model's gradient equals the analytic one" {
            use _ = torch.NewDisposeScope()
            torch.manual_seed 7L |> ignore
            let x = torch.randn(5L, 3L)
            let w = torch.randn([| 3L; 2L |], requires_grad = true)
            let target = torch.randn(5L, 2L)
            let d = x.matmul(w) - target
            let loss = (d * d).sum()
            loss.backward()
            // d/dw ||xw - t||^2 = 2 x^T (xw - t)
            let expected = (x.t().matmul(x.matmul(w.detach()) - target)) * 2.0f
            Expect.isTrue (w.grad.allclose(expected, rtol = 1e-5, atol = 1e-5)) "autograd gradient = 2 x^T (xw - t)"
            Expect.isTrue (loss.item<float32>() > 0.0f) "positive loss"
        }

        test "Native.libtorchVersion: libtorch reports 2.10" {
            let v = MoFO.RuntimeInfo.ReadLibTorchVersion()
            Expect.stringStarts v "2.10" "libtorch version"
        }

        test "Native.patch: the output copy is weak exactly where the system libstdc++ lacks GLIBCXX_3.4.32" {
            let path = outputBridge ()
            let needs = ElfVersionNeeds.Read(File.ReadAllBytes path, path)
            let need = needs |> Seq.find (fun n -> n.Version = ElfVersionNeeds.TorchSharpBridgeVersion)
            Expect.equal need.Library "libstdc++.so.6" "the requirement is on libstdc++"
            Expect.equal need.Weak (ElfVersionNeeds.SystemNeedsPatch()) "weak iff the system needs the patch"
            // Every other requirement keeps its flags (none weak in the original).
            Expect.isEmpty (needs |> Seq.filter (fun n -> n.Weak && n.Version <> need.Version)) "no other entry changed"
        }

        test "Native.patch: MarkWeak flips exactly one flag bit and is idempotent" {
            let path = outputBridge ()
            let original = File.ReadAllBytes path
            let need = ElfVersionNeeds.Read(original, path) |> Seq.find (fun n -> n.Version = ElfVersionNeeds.TorchSharpBridgeVersion)
            // Start from the unpatched form whatever the output holds.
            let bytes = Array.copy original
            bytes[need.FlagsOffset] <- bytes[need.FlagsOffset] &&& ~~~2uy
            let before = Array.copy bytes
            Expect.isTrue (ElfVersionNeeds.MarkWeak(bytes, ElfVersionNeeds.TorchSharpBridgeVersion)) "patched"
            let diffs = Array.zip before bytes |> Array.indexed |> Array.filter (fun (_, (a, b)) -> a <> b) |> Array.map fst
            Expect.equal diffs [| need.FlagsOffset |] "only the vna_flags byte changed"
            Expect.equal (bytes[need.FlagsOffset] ^^^ before[need.FlagsOffset]) 2uy "by VER_FLG_WEAK"
            Expect.isFalse (ElfVersionNeeds.MarkWeak(bytes, ElfVersionNeeds.TorchSharpBridgeVersion)) "second call is a no-op"
        }

        test "Native.patch: the NuGet cache copy is left untouched" {
            let home = System.Environment.GetFolderPath System.Environment.SpecialFolder.UserProfile
            let cache =
                match System.Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
                | null | "" -> Path.Combine(home, ".nuget", "packages")
                | p -> p
            let lib = Path.Combine(cache, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so")
            if not (File.Exists lib) then skiptestf "no NuGet cache copy at %s" lib
            let need = ElfVersionNeeds.Read(File.ReadAllBytes lib, lib) |> Seq.find (fun n -> n.Version = ElfVersionNeeds.TorchSharpBridgeVersion)
            Expect.isFalse need.Weak "the cache copy keeps its original flags"
        }

        test "Native.patch: a non-ELF file is a clear error naming the file" {
            let e = MoFO.Tests.Fixtures.throwsWith<InvalidDataException> (fun () -> ElfVersionNeeds.Read(Array.zeroCreate 100, "junk.so") |> ignore)
            Expect.stringContains e.Message "junk.so" "names the file"
            Expect.stringContains e.Message "not an ELF file" "says what is wrong"
        }
    ]
