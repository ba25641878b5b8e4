/// `mofo bench optim`: optimizer step times side by side on one transformer-shaped parameter set.
module MoFO.Dsl.Cli.Bench.Optim

open System
open System.Diagnostics
open System.IO
open System.Threading.Tasks
open Argu
open TorchSharp
open MoFO.Optim
open MoFO.Dsl.Cli

/// `mofo bench optim`'s own flags (the shared ones are in `Flags`).
module private Own =
    let repetitions = Flags.repetitions.Describe "timed steps per optimizer (default 9; the median is reported)."
    let warmup = Flags.warmup.Describe "untimed rounds first (default 10), each with fresh random gradients."
    let alpha = Flags.alpha.Describe "MoFO's and gradient-filtered BCD's update fraction (default 0.15)."
    let bf16 =
        Flag.switch "--bf16" "also time AdamW and MoFO on bfloat16 copies of the parameters (float32 moments; stochastic rounding, and MoFO with float32 master weights) and print bf16 ÷ float32 ratios (TorchSharp's AdamW is left out then: its memory grows over the rounds)."
    let pytorch = Flag.switch "--pytorch" "also time PyTorch's AdamW (bench/adamw_peer.py; needs python3-torch) on the same shapes."
    let python = Flag.text "--python" "the python interpreter for --pytorch (default: python3, then /usr/bin/python3)."

type BenchOptimArgs =
    | [<AltCommandLine("-r")>] Repetitions of n: string
    | Warmup of n: string
    | Alpha of a: string
    | Bf16
    | Pytorch
    | Python of path: string
    interface IFlags with
        member this.Flag =
            match this with
            | Repetitions _ -> Own.repetitions | Warmup _ -> Own.warmup | Alpha _ -> Own.alpha | Bf16 -> Own.bf16 | Pytorch -> Own.pytorch
            | Python _ -> Own.python
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// A Llama-shaped parameter set of about 30M entries: d = 512, 8 layers (q, k, v, o: d×d; gate, up: 1376×d;
/// down: d×1376; two norms of d), embeddings and head 4096×d, a final norm.
let shapes () =
    let d, ff, layers, vocab = 512L, 1376L, 8, 4096L
    [ yield "model.embed_tokens.weight", [| vocab; d |]
      for l in 0 .. layers - 1 do
          for m in [ "q"; "k"; "v"; "o" ] do yield $"model.layers.{l}.self_attn.{m}_proj.weight", [| d; d |]
          yield $"model.layers.{l}.mlp.gate_proj.weight", [| ff; d |]
          yield $"model.layers.{l}.mlp.up_proj.weight", [| ff; d |]
          yield $"model.layers.{l}.mlp.down_proj.weight", [| d; ff |]
          yield $"model.layers.{l}.input_layernorm.weight", [| d |]
          yield $"model.layers.{l}.post_attention_layernorm.weight", [| d |]
      yield "model.norm.weight", [| d |]
      yield "lm_head.weight", [| vocab; d |] ]

/// Read+write bandwidth of a parallel memory copy (GB/s), measured here.
let private copyBandwidth () =
    let n = 64L * 1024L * 1024L // 64M floats = 256 MB each side
    use src = torch.randn(n)
    use dst = torch.empty(n)
    let chunk = 1L <<< 20
    let copy () =
        let s = MoFO.Optim.Bench.Address src
        let d = MoFO.Optim.Bench.Address dst
        Parallel.For(0L, n / chunk, fun c -> MoFO.Optim.Bench.Copy(s, d, c * chunk, chunk)) |> ignore
    copy ()
    let times =
        [ for _ in 1 .. 5 ->
            let sw = Stopwatch.StartNew()
            copy ()
            sw.Elapsed.TotalSeconds ]
    float (2L * n * 4L) / (List.min times) / 1e9

let private median (xs: float list) = let s = List.sort xs in s.[s.Length / 2]

let private findPython (explicitPath: string option) =
    let candidates = match explicitPath with Some p -> [ p ] | None -> [ "python3"; "/usr/bin/python3" ]
    candidates |> List.tryFind (fun py ->
        try
            let psi = ProcessStartInfo(py, [ "-c"; "import torch" ], RedirectStandardError = true, RedirectStandardOutput = true)
            use p = Process.Start psi
            p.WaitForExit(60000) && p.ExitCode = 0
        with _ -> false)

let private runPeer (py: string) (args: string list) =
    let script = Path.Combine(MoFO.DataRoot.RepositoryRoot() |> Option.ofObj |> Option.defaultValue ".", "bench", "adamw_peer.py")
    if not (File.Exists script) then Error $"the PyTorch peer {script} is missing"
    else
        let psi = ProcessStartInfo(py, script :: args, RedirectStandardError = true, RedirectStandardOutput = true)
        use p = Process.Start psi
        let out = p.StandardOutput.ReadToEnd()
        let err = p.StandardError.ReadToEnd()
        p.WaitForExit()
        if p.ExitCode <> 0 then Error $"{py} {script} failed (exit {p.ExitCode}): {err.Trim()}"
        else
            use doc = Text.Json.JsonDocument.Parse(out.Trim().Split('\n') |> Array.last)
            Ok (doc.RootElement.GetProperty("median_ms").GetDouble(), doc.RootElement.GetProperty("torch").GetString())

/// Runs the benchmark; returns the exit code.
/// The ops path's exact top-k selection (a radix select on the float bits, the path CUDA takes) against a full stable
/// sort of |x|, at MoFO's α, on float32 and bfloat16 tensors of 1M and 16M entries; prints the times and sort ÷ radix.
let private selection (alpha: float) =
    printfn "selection on the ops path (CUDA's; k = ⌊α·n⌋, best of 3): exact radix select vs stable sort"
    printfn "%-10s %12s %12s %12s %10s %6s" "dtype" "entries" "sort ms" "radix ms" "sort ÷" "same"
    for dtype in [ torch.ScalarType.Float32; torch.ScalarType.BFloat16 ] do
        for t in Bench.Selection([ 1L <<< 20; 1L <<< 24 ], alpha, 3, 0L, torch.CPU, dtype) do
            printfn "%-10s %12d %12.1f %12.1f %10.1f %6b" (string dtype) t.Entries (1e3 * t.SortSeconds) (1e3 * t.RadixSeconds) t.Speedup t.Same

let run (args: ParseResults<BenchOptimArgs>) =
    MoFO.Runtime.init ()
    let reps = Flag.getOr Own.repetitions 9 args
    let warmup = Flag.getOr Own.warmup 10 args
    let alpha = Flag.getOr Own.alpha 0.15 args
    Validate.Alpha(alpha, Own.alpha.Name) |> ignore
    let threads = Environment.ProcessorCount
    torch.set_num_threads threads
    let shp = shapes ()
    let total = shp |> List.sumBy (fun (_, s) -> Array.fold (*) 1L s)
    let filteredEntries = shp |> List.filter (fun (_, s) -> s.Length >= 2) |> List.sumBy (fun (_, s) -> Array.fold (*) 1L s)
    printfn "mofo bench optim: %d blocks, %.1fM parameters (%.1fM in filtered matrices), float32, CPU, %d threads"
        shp.Length (float total / 1e6) (float filteredEntries / 1e6) threads
    use gen = new torch.Generator(0UL)
    let ps = shp |> List.map (fun (_, s) -> torch.randn(s, generator = gen).mul_((0.02).ToScalar()).requires_grad_(true))
    for p in ps do p.grad <- torch.randn(p.shape, generator = gen)
    let named = List.zip (shp |> List.map fst) ps
    let group () = [ ParamGroup(named |> List.map snd |> Seq.ofList, named |> List.map fst) ]
    let ours : (string * BlockOptimizer) list =
        [ "AdamW (ours, fused)", new AdamW(group (), lr = 1e-5) :> BlockOptimizer
          $"MoFO α={alpha}", new MoFOOptimizer(group (), lr = 1e-5, alpha = alpha) :> BlockOptimizer
          $"gradient-filtered BCD α={alpha}", new GradientFilteredBCD(group (), lr = 1e-5, alpha = alpha) :> BlockOptimizer ]
    // --bf16: the same optimizers on bfloat16 copies of the parameters (gradients in bfloat16, moments in float32)
    let bf16 = Flag.has Own.bf16 args
    let psB = if bf16 then ps |> List.map (fun p -> p.detach().to_type(torch.ScalarType.BFloat16).requires_grad_(true)) else []
    for p in psB do p.grad <- torch.zeros(p.shape, dtype = torch.ScalarType.BFloat16)
    let groupB () = [ ParamGroup(Seq.ofList psB, named |> List.map fst) ]
    let withUpdate (mode: BFloat16Update) (o: BlockOptimizer) = o.BFloat16Update <- mode; o
    let oursB : (string * BlockOptimizer) list =
        if not bf16 then []
        else
            [ "AdamW bf16 (stochastic rounding)", new AdamW(groupB (), lr = 1e-5) :> BlockOptimizer
              $"MoFO α={alpha} bf16 (stochastic rounding)", new MoFOOptimizer(groupB (), lr = 1e-5, alpha = alpha) :> BlockOptimizer
              $"MoFO α={alpha} bf16 (master weights)",
              new MoFOOptimizer(groupB (), lr = 1e-5, alpha = alpha) :> BlockOptimizer |> withUpdate BFloat16Update.MasterWeights ]
    let tsParams = if bf16 then [] else ps |> List.map (fun p -> new TorchSharp.Modules.Parameter(p.detach().clone()))
    for p, q in List.zip tsParams (List.truncate tsParams.Length ps) do p.grad <- q.grad.clone()
    let libtorch = if bf16 then None else Some (torch.optim.AdamW(tsParams, lr = 1e-5))
    let steppers : (string * (unit -> unit)) list =
        ((ours @ oursB) |> List.map (fun (n, o) -> n, (fun () -> o.step())))
        @ [ match libtorch with
            | Some l -> yield "AdamW (TorchSharp → libtorch 2.10)", (fun () -> l.step() |> ignore)
            | None -> () ]
    // fresh random gradients before every round (untimed), as in training: the moments reach their steady state and
    // MoFO's threshold drifts as it does in practice; every optimizer of a round sees the same gradients
    let freshGradients () =
        use _ = torch.no_grad ()
        for p in ps do p.grad.normal_(generator = gen) |> ignore
        for p, q in List.zip (List.truncate tsParams.Length ps) tsParams do q.grad.copy_(p.grad) |> ignore
        for p, b in List.zip (List.truncate psB.Length ps) psB do b.grad.copy_(p.grad) |> ignore
    for _ in 1 .. warmup do
        freshGradients ()
        for _, f in steppers do f ()
    // interleaved repetitions, so that a slow moment of the machine hits every optimizer alike
    let times = Collections.Generic.Dictionary<string, float list>()
    for n, _ in steppers do times.[n] <- []
    for _ in 1 .. reps do
        freshGradients ()
        for n, f in steppers do
            let sw = Stopwatch.StartNew()
            f ()
            times.[n] <- sw.Elapsed.TotalMilliseconds :: times.[n]
    let bw = copyBandwidth ()
    let dense = float (total - filteredEntries)
    let filt = float filteredEntries
    // bytes per entry: fused AdamW reads p, g, m, v and writes p, m, v (28). A filtered block (weight decay 0, as here)
    // takes one pass when last step's threshold window holds: read g, m, v, write m, v (20) for every entry, and for
    // the ≈ α selected ones also read and write p and keep the old p for an exact undo (12 more) — 20 + 12α per entry
    // (a window miss adds the two-pass route's 16 B/entry update pass).
    let bytesAdam = 28.0 * float total
    let bytesFiltered = 28.0 * dense + (20.0 + 12.0 * alpha) * filt
    // libtorch's unfused AdamW: lerp m (r g,m w m), v (r v,g w v), p*=decay is skipped at wd 0, sqrt(v) (r v w t),
    // t/=c (r w), t+=eps (r w), p.addcdiv (r p,m,t w p) = 80 bytes per entry at least
    // bfloat16 weights and gradients, float32 moments: AdamW reads g, p (2 + 2) and m, v, writes p (2) and m, v (22);
    // a filtered block reads g (2) and m, v, writes m, v (18), and for the ≈ α selected also reads and writes p and keeps
    // its old value (8); with master weights p is the float32 master (8 + 4 kept) plus its bfloat16 copy (2)
    let bytesOf (name: string) =
        if name.StartsWith "AdamW (ours" then bytesAdam
        elif name.StartsWith "AdamW (TorchSharp" then 80.0 * float total
        elif name.StartsWith "AdamW bf16" then 22.0 * float total
        elif name.EndsWith "bf16 (stochastic rounding)" then 22.0 * dense + (18.0 + 8.0 * alpha) * filt
        elif name.EndsWith "bf16 (master weights)" then 28.0 * dense + (18.0 + 14.0 * alpha) * filt
        else bytesFiltered
    let adamMs = median times.[fst ours.Head]
    printfn "copy bandwidth (read+write, measured now): %.1f GB/s" (bw)
    printfn "%-42s %10s %10s %12s %10s" "optimizer" "median ms" "min ms" "bound ms" "÷ AdamW"
    for n, _ in steppers do
        let ms = median times.[n]
        let bound = bytesOf n / (bw * 1e9) * 1e3
        printfn "%-42s %10.1f %10.1f %12.1f %10.2f" n ms (List.min times.[n]) bound (ms / adamMs)
    let mofoMs = median times.[fst ours.[1]]
    printfn "ratio MoFO / AdamW (ours): %.2f by medians, %.2f by minima (target <= 1.25)" (mofoMs / adamMs) (List.min times.[fst ours.[1]] / List.min times.[fst ours.Head])
    printfn "bound = bytes moved per step ÷ copy bandwidth: ours AdamW 28 B/entry, filtered blocks %.1f B/entry, libtorch AdamW >= 80 B/entry" (20.0 + 12.0 * alpha)
    if bf16 then
        let ratio (a: string) (b: string) = median times.[a] / median times.[b], List.min times.[a] / List.min times.[b]
        printfn "bf16 ÷ float32 (same run, interleaved; medians, minima):"
        for (nb, _), (nf, _) in [ oursB.[0], ours.[0]; oursB.[1], ours.[1]; oursB.[2], ours.[1] ] do
            let rm, rmin = ratio nb nf
            printfn "  %-44s ÷ %-22s %6.2f %6.2f" nb nf rm rmin
        let rm, rmin = ratio (fst oursB.[1]) (fst oursB.[0])
        printfn "  %-44s ÷ %-22s %6.2f %6.2f" (fst oursB.[1]) (fst oursB.[0]) rm rmin
    selection alpha
    let mutable code = 0
    if Flag.has Own.pytorch args then
        match findPython (Flag.tryGet Own.python args) with
        | None ->
            eprintfn "mofo bench optim --pytorch: no python3 with PyTorch found (tried %s). Install Debian's: apt-get install -y python3-torch"
                (match Flag.tryGet Own.python args with Some p -> p | None -> "python3, /usr/bin/python3")
            code <- 1
        | Some py ->
            let shapeArg = shp |> List.map (fun (_, s) -> s |> Array.map string |> String.concat "x") |> String.concat ";"
            for foreachFlag in [ false; true ] do
                let extra = if foreachFlag then [ "--foreach" ] else []
                match runPeer py ([ "--shapes"; shapeArg; "--reps"; string reps; "--warmup"; string warmup; "--threads"; string threads ] @ extra) with
                | Ok (ms, version) ->
                    let label = $"""PyTorch {version} AdamW ({if foreachFlag then "foreach" else "for-loop"})"""
                    printfn "%-42s %10.1f %10s %12s %10.2f   (ours AdamW ÷ PyTorch = %.2f)" label ms "" "" (ms / adamMs) (adamMs / ms)
                | Error e ->
                    eprintfn "mofo bench optim --pytorch: %s" e
                    code <- 1
    for _, o in ours @ oursB do o.Dispose()
    libtorch |> Option.iter (fun l -> l.Dispose())
    code
