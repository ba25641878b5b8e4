/// Packing with boundaries: whole examples in a row, attending only within themselves, positions restarting at each.
module MoFO.Tests.Packing

open Expecto
open TorchSharp
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

/// Per-example (sum of token NLL, count) of rows, each token's loss assigned to the example whose label it predicts.
let private perExample (lm: CausalLM) (rows: TokenizedExample list) =
    use _ = torch.no_grad()
    use b = Tokenized.Pad(ResizeArray rows, 0)
    let logits = lm.Logits(b.InputIds, b.AttentionMask)
    let v, t = logits.shape[2], logits.shape[1]
    let labels = b.Labels.narrow(1, 1L, t - 1L)
    let nll = torch.nn.functional.cross_entropy(logits.narrow(1, 0L, t - 1L).reshape(-1L, v).``to``(torch.ScalarType.Float32), labels.reshape(-1L),
                                                 ignore_index = int64 Tokenized.Ignore, reduction = torch.nn.Reduction.None)
    let nll = nll.reshape(labels.shape).``to``(torch.ScalarType.Float64)
    let seg = b.AttentionMask.narrow(1, 1L, t - 1L)
    [ for r in 0 .. rows.Length - 1 do
        let segs = seg.select(0, int64 r).data<int64>().ToArray()
        let lab = labels.select(0, int64 r).data<int64>().ToArray()
        let l = nll.select(0, int64 r).contiguous().data<float>().ToArray()
        for s in segs |> Array.filter (fun s -> s > 0L) |> Array.distinct ->
            let idx = [ for j in 0 .. segs.Length - 1 do if segs[j] = s && lab[j] <> int64 Tokenized.Ignore then j ]
            idx |> List.sumBy (fun j -> l[j]), idx.Length ]

[<Tests>]
let tests =
    testList "Packing" [
        test "Packing.rows: whole examples, in order, example numbers 1, 2, …, each example's first label ignored" {
            let ex (n: int) = TokenizedExample(Array.init n (fun i -> 10 + i), Array.init n (fun i -> 10 + i), $"e{n}")
            let rows = Tokenized.Pack([ ex 3; ex 4; ex 2; ex 6 ], 8)
            Expect.equal (rows |> List.ofSeq |> List.map (fun r -> r.Segments |> Array.toList))
                [ [ 1; 1; 1; 2; 2; 2; 2 ]; [ 1; 1; 2; 2; 2; 2; 2; 2 ] ] "3 + 4 in the first row (2 more would not fit), 2 + 6 in the second"
            Expect.equal rows[0].Labels [| Tokenized.Ignore; 11; 12; Tokenized.Ignore; 11; 12; 13 |] "first labels ignored"
            let long = Tokenized.Pack([ ex 12 ], 8)
            Expect.equal long[0].InputIds.Length 8 "an example longer than a row is cut to it"
        }

        test "Packing.loss: the loss of each example in a packed batch equals its loss unpacked (1e-5)" {
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            let examples =
                MoFO.Data.InstructionData.Read(requireAsset DataRoot.Assets.DprTrain, DataFormat.Dpr) |> Seq.truncate 10
                |> Seq.map (fun e -> Tokenized.Encode(e, lm.Tokenizer, 256)) |> Seq.toList
            let packed = Tokenized.Pack(examples, 256) |> List.ofSeq
            Expect.isLessThan packed.Length examples.Length "several examples share a row"
            // unpacked: each example alone, its first label ignored as packing does
            let alone = examples |> List.map (fun (e: TokenizedExample) -> perExample lm [ TokenizedExample(e.InputIds, Array.append [| Tokenized.Ignore |] e.Labels[1..], e.Source) ] |> List.exactlyOne)
            let inRows = perExample lm packed
            Expect.equal inRows.Length examples.Length "one group per example"
            for (a, na), (p, np) in List.zip alone inRows do
                Expect.equal np na "the same trained tokens"
                Expect.floatClose { absolute = 1e-5; relative = 1e-5 } (p / float np) (a / float na) "the same mean token loss"
        }

        test "Packing.positions: a packed row restarts positions at each example, and a 0/1 mask behaves as before" {
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            use _ = torch.no_grad()
            let ids = torch.tensor([| 1L; 400L; 300L; 1L; 400L; 300L |]).unsqueeze(0L)
            let packed = lm.Logits(ids, torch.tensor([| 1L; 1L; 1L; 2L; 2L; 2L |]).unsqueeze(0L))
            let first = lm.Logits(ids.narrow(1, 0L, 3L))
            let maxDiff (a: torch.Tensor) (b: torch.Tensor) = (a - b).abs().max().item<float32>()
            // float32 rounding relative to the logits' size (|logit| up to ~17 here, whose ulp is 1.9e-6): the row of 6 and
            // the row of 3 sum the attention in another order; a leak across examples or a wrong position moves logits by ~0.1-1
            let tol = 1e-6f * first.abs().max().item<float32>()
            Expect.isLessThan (maxDiff (packed.narrow(1, 0L, 3L)) first) tol "the first example as alone"
            Expect.isLessThan (maxDiff (packed.narrow(1, 3L, 3L)) first) tol "the second (the same tokens) as alone: positions restart, no attention across"
            let plain = lm.Logits(ids, torch.ones([| 1L; 6L |], dtype = torch.ScalarType.Int64))
            Expect.isLessThan (maxDiff plain (lm.Logits ids)) 1e-6f "a 0/1 mask of ones is the plain causal model"
        }
    ]
