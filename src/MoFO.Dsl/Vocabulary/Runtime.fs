/// Start-up of the native runtime, for scripts and the CLI.
module MoFO.Runtime

open TorchSharp

/// Loads libtorch and TorchSharp's (patched) native bridge. Call once at the top of an .fsx script, before the first
/// torch call: under `dotnet fsi` TorchSharp cannot find the bridge by itself. Idempotent.
let init () = MoFO.Native.NativeLoader.EnsureLoaded()

/// The result of the smoke test: y = sum(w * x), dy/dw = x.
type SmokeResult = { Input: float32[]; Output: float32; Gradient: float32[]; SavedAndReloaded: bool }

/// A tiny end-to-end check of the native stack: forward, backward, and a save/load round trip of a tensor.
let smoke () =
    init ()
    use scope = torch.NewDisposeScope()
    let x = torch.tensor([| 1.0f; 2.0f; 3.0f |])
    let w = torch.tensor([| 0.5f; -1.0f; 2.0f |], requires_grad = true)
    let y = (w * x).sum()
    y.backward()
    let grad = w.grad.data<float32>().ToArray()
    let file = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"mofo-smoke-{System.Guid.NewGuid():N}.pt")
    try
        x.save(file) |> ignore
        let back = torch.Tensor.load(file)
        let same = back.eq(x).all().item<bool>()
        { Input = x.data<float32>().ToArray(); Output = y.item<float32>(); Gradient = grad; SavedAndReloaded = same }
    finally
        if System.IO.File.Exists file then System.IO.File.Delete file

/// The device of a name: "cpu" (the default) or "cuda" / "cuda:N" (CUDA builds, -p:TorchBackend=cuda).
let device (name: string option) =
    match name with
    | None | Some "cpu" -> torch.CPU
    | Some s when s.StartsWith "cuda" ->
        init ()
        if not (torch.cuda.is_available ()) then
            raise (MoFO.OptionException("Device", $"Device {s}: CUDA is not available (build with -p:TorchBackend=cuda on a machine with an NVIDIA GPU; see docs/native-loading.md)"))
        // the ranks of a data-parallel job on one machine take one GPU each
        match (if s = "cuda" then MoFO.Distributed.MpiCollective.LocalRank |> Option.ofNullable else None) with
        | Some local when MoFO.Distributed.Job.Distributed -> torch.Device($"cuda:{local % max 1 (torch.cuda.device_count ())}")
        | _ -> torch.Device(s)
    | Some s -> raise (MoFO.OptionException("Device", $"Device {s}: expected cpu, cuda or cuda:N"))
