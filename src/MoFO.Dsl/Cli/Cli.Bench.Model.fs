/// `mofo bench model`: forward-pass throughput of stories260K and a ~20M-parameter random Llama on this machine.
module MoFO.Dsl.Cli.Bench.Model

open System
open System.Diagnostics
open Argu
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Dsl.Cli

/// `mofo bench model`'s own flags (the shared ones are in `Flags`).
module private Own =
    let batch = Flag.int "--batch" "sequences per forward pass (default 4)." |> Flag.atLeast 1
    let seqLen = Flag.int "--seq-len" "tokens per sequence (default 256)." |> Flag.atLeast 1
    let repetitions = Flags.repetitions.Describe "timed forward passes; the median is reported (default 5)."
    let warmup = Flags.warmup.Describe "untimed forward passes first (default 2)."

type BenchModelArgs =
    | Batch of n: string
    | Seq_Len of n: string
    | Repetitions of n: string
    | Warmup of n: string
    interface IFlags with
        member this.Flag =
            match this with
            | Batch _ -> Own.batch | Seq_Len _ -> Own.seqLen | Repetitions _ -> Own.repetitions | Warmup _ -> Own.warmup
    interface IArgParserTemplate with
        member this.Usage = (this :> IFlags).Flag.Usage

/// The ~20M-parameter Llama of the benchmark: Llama-2 vocabulary, 8 layers of width 320, tied embeddings.
let llama20M =
    LlamaConfig(VocabSize = 32000, HiddenSize = 320, IntermediateSize = 864, NumHiddenLayers = 8, NumAttentionHeads = 8,
                NumKeyValueHeads = 8, MaxPositionEmbeddings = 1024, RmsNormEps = 1e-5, TieWordEmbeddings = true,
                BosTokenId = Nullable 1, EosTokenIds = [| 2 |])

/// Median forward tokens/s of a model over random token ids.
let measure (m: CausalLMModule) batch seqLen warmup reps =
    use _ = torch.no_grad()
    let ids = torch.randint(0L, int64 m.Config.VocabSize, [| int64 batch; int64 seqLen |], dtype = torch.int64)
    let once () =
        use scope = torch.NewDisposeScope()
        let sw = Stopwatch.StartNew()
        m.Forward(ids) |> ignore
        sw.Elapsed.TotalSeconds
    for _ in 1 .. warmup do once () |> ignore
    let times = Array.init reps (fun _ -> once ()) |> Array.sort
    let median = times[reps / 2]
    float (batch * seqLen) / median, median

let run (args: ParseResults<BenchModelArgs>) =
    let batch = Flag.getOr Own.batch 4 args
    let seqLen = Flag.getOr Own.seqLen 256 args
    let reps = Flag.getOr Own.repetitions 5 args
    let warmup = Flag.getOr Own.warmup 2 args
    torch.manual_seed 0L |> ignore
    printfn "forward pass, float32 on CPU, %d threads, batch %d x %d tokens, %d warm-up, median of %d" (torch.get_num_threads()) batch seqLen warmup reps
    let count (m: CausalLMModule) = m.StateDict().Values |> Seq.sumBy (fun t -> t.numel())
    let rows = Collections.Generic.List<string * int64 * float * float>()
    if DataRoot.Assets.Stories260K.Present then
        let struct (m, _) = ModelLoader.LoadModule(DataRoot.Assets.Stories260K.FullPath)
        use m = m
        let tps, sec = measure m batch (min seqLen m.Config.MaxPositionEmbeddings) warmup reps
        rows.Add(("stories260K", count m, tps, sec))
    else
        printfn "stories260K skipped: %s" (DataRoot.MissingMessage DataRoot.Assets.Stories260K.FullPath)
    use big = new LlamaForCausalLM(llama20M)
    big.InitializeWeights 0L
    big.eval()
    let tps, sec = measure big batch seqLen warmup reps
    rows.Add(("random Llama ~20M", count big, tps, sec))
    printfn "%-20s %12s %14s %12s" "model" "parameters" "tokens/s" "s/pass"
    for (name, n, tps, sec) in rows do printfn "%-20s %12d %14.0f %12.4f" name n tps sec
    if rows.Count = 2 then
        let (_, _, a, _), (_, _, b, _) = rows[0], rows[1]
        printfn "ratio stories260K / ~20M: %.1fx" (a / b)
    0
