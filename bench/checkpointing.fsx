// Gradient checkpointing per decoder layer: peak memory and time of a training forward + backward, side by side.
//   dotnet fsi bench/checkpointing.fsx [--layers 6] [--tokens 512] [--steps 3]
// A random Llama of TinyLlama-1.1B's width (hidden 2048, intermediate 5632, 32 heads, 4 KV heads, vocab 32000; tied
// embeddings, so that the weights stay ≈ 1.3 GB in float32 at 6 layers) on one sequence of --tokens tokens. Three child
// processes run one after another under /usr/bin/time -v: "model" (the model and its gradient buffers, no pass), "off"
// (plain forward + backward) and "on" (checkpointed). Each pass runs in a dispose scope with the gradients kept between
// steps, as in the trainer; the first step is a warm-up. Printed: peak RSS, the activation memory above "model", the
// median wall and CPU time per step (CPU time is less disturbed by other processes), the RSS after the first forward
// pass and after each step (it must stay flat), and the ratios on/off.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open System
open System.Diagnostics
open System.Text.RegularExpressions
open TorchSharp
open MoFO.Models

let args = fsi.CommandLineArgs |> Array.skip 1
let option name fallback =
    match Array.tryFindIndex ((=) name) args with
    | Some i when i + 1 < args.Length -> args[i + 1]
    | _ -> fallback
let layers = int (option "--layers" "6")
let tokens = int (option "--tokens" "512")
let steps = int (option "--steps" "3")
let rssMB () =
    use p = Process.GetCurrentProcess()
    float p.WorkingSet64 / 1048576.0
let cpuMs () =
    use p = Process.GetCurrentProcess()
    p.TotalProcessorTime.TotalMilliseconds

let child (mode: string) =
    let config =
        LlamaConfig(VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = layers,
                    NumAttentionHeads = 32, NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5,
                    TieWordEmbeddings = true, InitializerRange = 0.02)
    let m = ModelLoader.Create config
    m.InitializeWeights 0L
    m.train ()
    m.GradientCheckpointing <- (mode = "on")
    let parameters = m.parameters () |> Seq.sumBy (fun p -> p.numel ())
    do
        use _ = torch.no_grad ()
        for p in m.parameters () do p.grad <- torch.zeros_like(p).DetachFromDisposeScope()
    let ids = torch.randint(0L, 32000L, [| 1L; int64 tokens |], dtype = torch.int64, generator = new torch.Generator(1UL))
    let steps =
        if mode = "model" then []
        else
            [ for _ in 0 .. steps do
                let clock, cpu = Stopwatch.StartNew(), cpuMs ()
                use scope = torch.NewDisposeScope()
                let loss = MoFO.Models.CausalLM.Loss(m.Forward ids, ids)
                let afterForward = rssMB ()
                loss.backward ()
                let value = loss.item<float32> ()
                scope.Dispose()
                {| Ms = clock.Elapsed.TotalMilliseconds; CpuMs = cpuMs () - cpu; Loss = value; AfterForward = afterForward; After = rssMB () |} ]
    let median xs = match List.sort xs with [] -> nan | s -> s[s.Length / 2]
    let timed = match steps with _ :: (_ :: _ as rest) -> rest | t -> t   // the first step is a warm-up
    let show (f: _ -> float) = steps |> List.map (f >> sprintf "%.0f") |> String.concat ","
    printfn "RESULT mode=%s params=%d ms=%.0f cpums=%.0f loss=%s rssforward=%s rss=%s" mode parameters
        (median (timed |> List.map _.Ms)) (median (timed |> List.map _.CpuMs))
        (steps |> List.map (fun s -> sprintf "%.6f" s.Loss) |> String.concat ",")
        (show _.AfterForward) (if steps.IsEmpty then sprintf "%.0f" (rssMB ()) else show _.After)

let parent () =
    let run (mode: string) =
        let psi = ProcessStartInfo("/usr/bin/time", RedirectStandardOutput = true, RedirectStandardError = true)
        for a in [ "-v"; "dotnet"; "fsi"; "--quiet"; __SOURCE_DIRECTORY__ + "/checkpointing.fsx"; "--child"; mode
                   "--layers"; string layers; "--tokens"; string tokens; "--steps"; string steps ] do psi.ArgumentList.Add a
        use p = Process.Start psi
        let out = p.StandardOutput.ReadToEndAsync()
        let err = p.StandardError.ReadToEndAsync()
        p.WaitForExit()
        let line = out.Result.Split('\n') |> Array.tryFind (fun l -> l.StartsWith "RESULT")
        match line, Regex.Match(err.Result, @"Maximum resident set size \(kbytes\): (\d+)") with
        | Some l, peak when p.ExitCode = 0 && peak.Success ->
            let field (k: string) = Regex.Match(l, " " + k + @"=(\S*)").Groups[1].Value
            {| Mode = mode; PeakMB = float peak.Groups[1].Value / 1024.0; Ms = float (field "ms"); CpuMs = float (field "cpums")
               Loss = field "loss"; RssForward = field "rssforward"; Rss = field "rss"; Params = field "params" |}
        | _ -> failwithf "the %s child failed (exit %d):\n%s\n%s" mode p.ExitCode out.Result err.Result
    printfn "random Llama, %d layers of TinyLlama width (tied embeddings), float32, batch 1 x %d tokens, %d timed steps after a warm-up, %d torch threads"
        layers tokens steps (torch.get_num_threads ())
    let model, off, on = run "model", run "off", run "on"
    printfn "parameters: %s" model.Params
    printfn "%-18s %14s %17s %10s %14s   %-26s %s" "" "peak RSS (MB)" "above model (MB)" "ms / step" "CPU ms / step"
        "RSS after forward (MB)" "RSS after each step (MB)"
    let ms (x: float) = if Double.IsNaN x then "-" else sprintf "%.0f" x
    for r in [ model; off; on ] do
        printfn "%-18s %14.0f %17.0f %10s %14s   %-26s %s" (match r.Mode with "model" -> "model + gradients" | "off" -> "plain" | _ -> "checkpointed")
            r.PeakMB (r.PeakMB - model.PeakMB) (ms r.Ms) (ms r.CpuMs) (if r.RssForward = "" then "-" else r.RssForward) r.Rss
    printfn "losses equal: %b (plain %s; checkpointed %s)" (off.Loss = on.Loss) off.Loss on.Loss
    let firstForward (r: string) = float (r.Split(',')[0])
    printfn "checkpointed / plain: peak RSS %.2f, peak above the model %.2f, RSS above the model after the first forward %.2f, wall time %.2f, CPU time %.2f"
        (on.PeakMB / off.PeakMB) ((on.PeakMB - model.PeakMB) / (off.PeakMB - model.PeakMB))
        ((firstForward on.RssForward - firstForward model.Rss) / (firstForward off.RssForward - firstForward model.Rss))
        (on.Ms / off.Ms) (on.CpuMs / off.CpuMs)

match option "--child" "" with
| "" -> parent ()
| mode -> child mode
