// Gradient checkpointing per decoder layer: peak memory and time of a training forward + backward, side by side.
//   dotnet fsi bench/checkpointing.fsx [--layers 6] [--tokens 512] [--steps 3]
// A random Llama of TinyLlama-1.1B's width (hidden 2048, intermediate 5632, 32 heads, 4 KV heads, vocab 32000; tied
// embeddings, so that the weights stay ≈ 1.3 GB in float32 at 6 layers) on one sequence of --tokens tokens. Child
// processes run one after another under /usr/bin/time -v: "model" (the model and its gradient buffers, no pass), "off"
// (plain forward + backward), "on" (checkpointed), and "time" (plain and checkpointed steps alternating in one
// process, so that both see the same load from other processes). Each pass runs in a dispose scope with the gradients
// kept between steps, as in the trainer; the first step (pair) is a warm-up. Printed: peak RSS and its part above
// "model", the RSS after each forward pass and after each step (it must stay flat), the median wall and CPU time per
// step, and the ratios checkpointed / plain.
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
    let parameters = m.parameters () |> Seq.sumBy (fun p -> p.numel ())
    do
        use _ = torch.no_grad ()
        for p in m.parameters () do p.grad <- torch.zeros_like(p).DetachFromDisposeScope()
    let ids = torch.randint(0L, 32000L, [| 1L; int64 tokens |], dtype = torch.int64, generator = new torch.Generator(1UL))
    let step (checkpointing: bool) =
        m.GradientCheckpointing <- checkpointing
        let clock, cpu = Stopwatch.StartNew(), cpuMs ()
        use scope = torch.NewDisposeScope()
        let loss = MoFO.Models.CausalLM.Loss(m.Forward ids, ids)
        let afterForward = rssMB ()
        loss.backward ()
        let value = loss.item<float32> ()
        scope.Dispose()
        {| Ms = clock.Elapsed.TotalMilliseconds; CpuMs = cpuMs () - cpu; Loss = value; AfterForward = afterForward; After = rssMB () |}
    let median xs = match List.sort xs with [] -> nan | s -> s[s.Length / 2]
    let timed xs = match xs with _ :: (_ :: _ as rest) -> rest | t -> t   // the first step is a warm-up
    match mode with
    | "model" -> printfn "RESULT mode=model params=%d rss=%.0f" parameters (rssMB ())
    | "time" ->
        // Alternating plain and checkpointed steps in one process: both see the same load from other processes.
        let pairs = [ for _ in 0 .. steps -> step false, step true ]
        let off, on = timed (List.map fst pairs), timed (List.map snd pairs)
        printfn "RESULT mode=time offms=%.0f onms=%.0f offcpums=%.0f oncpums=%.0f" (median (off |> List.map _.Ms))
            (median (on |> List.map _.Ms)) (median (off |> List.map _.CpuMs)) (median (on |> List.map _.CpuMs))
    | _ ->
        let steps = [ for _ in 0 .. steps -> step (mode = "on") ]
        let show (f: _ -> float) = steps |> List.map (f >> sprintf "%.0f") |> String.concat ","
        printfn "RESULT mode=%s params=%d ms=%.0f cpums=%.0f loss=%s rssforward=%s rss=%s" mode parameters
            (median (timed steps |> List.map _.Ms)) (median (timed steps |> List.map _.CpuMs))
            (steps |> List.map (fun s -> sprintf "%.6f" s.Loss) |> String.concat ",") (show _.AfterForward) (show _.After)

/// Runs one child under /usr/bin/time -v: its peak RSS (MB) and a lookup of the fields of its RESULT line.
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
        float peak.Groups[1].Value / 1024.0, fun (k: string) -> Regex.Match(l, " " + k + @"=(\S*)").Groups[1].Value
    | _ -> failwithf "the %s child failed (exit %d):\n%s\n%s" mode p.ExitCode out.Result err.Result

let parent () =
    printfn "random Llama, %d layers of TinyLlama width (tied embeddings), float32, batch 1 x %d tokens, %d timed steps after a warm-up, %d torch threads"
        layers tokens steps (torch.get_num_threads ())
    let (modelPeak, model), (offPeak, off), (onPeak, on) = run "model", run "off", run "on"
    let _, time = run "time"
    printfn "parameters: %s" (model "params")
    printfn "%-18s %14s %17s   %-26s %s" "" "peak RSS (MB)" "above model (MB)" "RSS after forward (MB)" "RSS after each step (MB)"
    printfn "%-18s %14.0f %17.0f   %-26s %s" "model + gradients" modelPeak 0.0 "-" (model "rss")
    for name, peak, r in [ "plain", offPeak, off; "checkpointed", onPeak, on ] do
        printfn "%-18s %14.0f %17.0f   %-26s %s" name peak (peak - modelPeak) (r "rssforward") (r "rss")
    printfn "losses equal: %b (plain %s; checkpointed %s)" (off "loss" = on "loss") (off "loss") (on "loss")
    let first (r: string -> string) k = float ((r k).Split(',')[0])
    printfn "checkpointed / plain: peak RSS %.2f; above the model: peak %.2f, RSS after the first forward %.2f"
        (onPeak / offPeak) ((onPeak - modelPeak) / (offPeak - modelPeak))
        ((first on "rssforward" - first model "rss") / (first off "rssforward" - first model "rss"))
    printfn "time per step, medians (ms): separate processes plain %s / checkpointed %s wall, %s / %s CPU;" (off "ms") (on "ms") (off "cpums") (on "cpums")
    printfn "  alternating in one process plain %s / checkpointed %s wall (ratio %.2f), %s / %s CPU (ratio %.2f)"
        (time "offms") (time "onms") (float (time "onms") / float (time "offms"))
        (time "offcpums") (time "oncpums") (float (time "oncpums") / float (time "offcpums"))

match option "--child" "" with
| "" -> parent ()
| mode -> child mode
