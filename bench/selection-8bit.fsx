// How much of MoFO's selected set changes when its moments are kept in 8 bits.
//   dotnet fsi bench/selection-8bit.fsx [--steps 100] [--alpha 0.15] [--lr 1e-3]
// stories260K fine-tuned on DPR (batches of 16, 128 tokens, constant lr, no weight decay): two copies of the model take
// the same batches, one with MoFO's float32 moments, one with 8-bit moments (--optimizer-state 8bit). Printed per
// reporting step, over every filtered tensor (entries weighted):
//   same state: in the float32 run, the share of the top-α entries by |m| that the top-α by the 8-bit round trip of m
//               (quantized then dequantized) also selects — what storing that m in 8 bits alone changes;
//   two runs:   the share of the entries the float32 run updated in this step that the 8-bit run updated too (the
//               trajectories drift apart, so this includes the drift);
// and the held-out loss of both runs at the end.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open System
open TorchSharp
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Optim

let args = fsi.CommandLineArgs |> Array.skip 1
let option name fallback =
    match Array.tryFindIndex ((=) name) args with
    | Some i when i + 1 < args.Length -> args[i + 1]
    | _ -> fallback
let steps = int (option "--steps" "100")
let alpha = float (option "--alpha" "0.15")
let lr = float (option "--lr" "1e-3")

torch.set_num_threads 1
torch.manual_seed 0L |> ignore
let modelPath = DataRoot.Require DataRoot.Assets.Stories260K
let load () = ModelLoader.Load modelPath
use lm32 = load ()
use lm8 = load ()
let examples =
    InstructionData.Read(DataRoot.Require DataRoot.Assets.DprTrain, DataFormat.Dpr)
    |> Seq.map (fun e -> Tokenized.Encode(e, lm32.Tokenizer, 128))
    |> Seq.filter (fun t -> t.InputIds.Length > 1)
    |> Seq.toArray
let heldOut =
    InstructionData.Read(DataRoot.Require DataRoot.Assets.DprTest, DataFormat.Dpr)
    |> Seq.truncate 256 |> Seq.map (fun e -> Tokenized.Encode(e, lm32.Tokenizer, 128)) |> Seq.toArray
let paramsOf (lm: CausalLM) = lm.Module.named_parameters() |> Seq.map (fun struct (n, p) -> struct (n, p)) |> Seq.toList
let opt32 = new MoFOOptimizer(paramsOf lm32, lr, alpha)
let opt8 = new MoFOOptimizer(paramsOf lm8, lr, alpha)
opt8.MomentStorage <- MomentStorage.Blockwise8Bit

let lossOf (lm: CausalLM) (batch: Batch) =
    let logits = lm.Logits(batch.InputIds, batch.AttentionMask)
    let v = logits.shape[2]
    let shifted = logits.narrow(1, 0L, logits.shape[1] - 1L).reshape(-1L, v)
    let labels = batch.Labels.narrow(1, 1L, batch.Labels.shape[1] - 1L).reshape(-1L)
    torch.nn.functional.cross_entropy(shifted, labels, ignore_index = int64 Tokenized.Ignore)

let snapshot (o: BlockOptimizer) = o.Blocks |> Seq.map (fun b -> b.Parameter.detach().clone()) |> Seq.toArray

/// The entries whose weight moved in the step (weight decay 0: exactly the selected entries with a nonzero update).
let moved (before: torch.Tensor[]) (o: BlockOptimizer) =
    Array.map2 (fun (b: torch.Tensor) (blk: Block) -> b.ne(blk.Parameter.detach())) before (o.Blocks |> Seq.toArray)

let filtered (o: BlockOptimizer) = o.Blocks |> Seq.filter (fun b -> b.Kind = BlockKind.Filtered) |> Seq.map (fun b -> b.Index) |> Set.ofSeq

let heldOutLoss (lm: CausalLM) =
    use _ = torch.no_grad()
    lm.Module.eval()
    let batches = heldOut |> Array.chunkBySize 32
    let total = batches |> Array.sumBy (fun b -> use s = torch.NewDisposeScope() in (lossOf lm (Tokenized.Pad(b, 0))).item<float32>() |> float)
    lm.Module.train()
    total / float batches.Length

let rng = Random 0
printfn "MoFO α = %g, lr %g, %d steps of 16 on DPR (stories260K): float32 moments against 8-bit moments" alpha lr steps
printfn "%6s  %22s  %22s" "step" "same state (top-α ∩)" "two runs (updated ∩)"
let mutable sumSame, sumTwo, reports = 0.0, 0.0, 0
for step in 1 .. steps do
    use scope = torch.NewDisposeScope()
    let batch = Tokenized.Pad(Array.init 16 (fun _ -> examples[rng.Next examples.Length]), 0)
    let before32, before8 = snapshot opt32, snapshot opt8
    for lm, o in [ lm32, opt32 :> BlockOptimizer; lm8, opt8 :> BlockOptimizer ] do
        o.zero_grad()
        (lossOf lm batch).backward()
        o.step()
    let m32, m8 = moved before32 opt32, moved before8 opt8
    let ids = filtered opt32
    let mutable inter, total, sameInter, sameTotal = 0L, 0L, 0L, 0L
    for b in opt32.Blocks do
        if ids.Contains b.Index then
            inter <- inter + m32[b.Index].logical_and(m8[b.Index]).sum().item<int64>()
            total <- total + m32[b.Index].sum().item<int64>()
            // the float32 run's m, and its 8-bit round trip: the same top-k?
            let m = b.Moments[0]
            let k = BlockOptimizer.SelectedCount(b.Numel, alpha)
            use q = QuantizedMoment.Zeros(b.Numel, true, torch.CPU)
            q.Quantize m
            let d = q.Dequantize(m.shape)
            let a, c = AdamOps.TopKMask(m, k), AdamOps.TopKMask(d, k)
            sameInter <- sameInter + a.logical_and(c).sum().item<int64>()
            sameTotal <- sameTotal + k
    let same, two = float sameInter / float sameTotal, float inter / float total
    if step % 10 = 0 || step = 1 then
        printfn "%6d  %21.2f%%  %21.2f%%" step (100.0 * same) (100.0 * two)
    sumSame <- sumSame + same; sumTwo <- sumTwo + two; reports <- reports + 1
printfn "mean over %d steps: same state %.2f %%, two runs %.2f %%" reports (100.0 * sumSame / float reports) (100.0 * sumTwo / float reports)
printfn "held-out loss after %d steps: float32 moments %.4f, 8-bit moments %.4f" steps (heldOutLoss lm32) (heldOutLoss lm8)
