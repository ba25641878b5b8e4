/// Chunked logits: the output layer and the loss over chunks of the predicting positions give the loss and every
/// gradient of the plain computation (full logits, cross-entropy with ignored labels) up to float rounding — for Llama
/// (tied and untied head) and GPT-NeoX, with gradient checkpointing, and with an adapter on the head alone.
module MoFO.Tests.Scale.Logits

open System
open Expecto
open TorchSharp
open MoFO.Models
open MoFO.Tests.ModelFixtures

let private ids () =
    torch.tensor([| 1L; 5L; 9L; 13L; 40L; 22L; 7L; 3L; 1L; 8L; 8L; 60L; 2L; 33L; 17L; 4L; 1L; 11L; 12L; 13L; 14L; 15L; 16L; 63L |]).view(3L, 8L)

/// Labels with ignored positions (a prompt), one row wholly ignored but its first label.
let private labels () =
    torch.tensor([| -100L; -100L; 9L; 13L; 40L; 22L; 7L; 3L; -100L; 8L; 8L; -100L; 2L; 33L; -100L; 4L; -100L; -100L; -100L; -100L; -100L; -100L; 16L; 63L |]).view(3L, 8L)

let private plain (m: CausalLMModule) =
    let logits = m.Forward(ids ())
    let v = logits.shape[2]
    let shifted = logits.narrow(1, 0L, 7L).reshape(-1L, v).``to``(torch.ScalarType.Float32)
    torch.nn.functional.cross_entropy(shifted, labels().narrow(1, 1L, 7L).reshape(-1L), ignore_index = -100L, reduction = torch.nn.Reduction.Sum)

let private chunked (chunk: int64) (m: CausalLMModule) =
    let struct (sum, count) = ChunkedLoss.Sum(Func<_, _>(m.Head), m.Hidden(ids ()), labels (), chunk)
    Expect.equal count 13L "the predicted positions: 6 + 5 + 2"
    sum

/// The loss and each trained tensor's gradient after one backward.
let private lossAndGrads (m: CausalLMModule) (loss: CausalLMModule -> torch.Tensor) =
    for p in m.parameters () do p.grad <- null
    let l = loss m
    l.backward ()
    l.item<float32> () |> float, [ for struct (n, p) in m.named_parameters () do if p.requires_grad then yield n, p.grad.clone () ]

let private close (what: string) (a: float * (string * torch.Tensor) list) (b: float * (string * torch.Tensor) list) =
    Expect.floatClose { absolute = 0.0; relative = 1e-5 } (fst b) (fst a) $"{what}: the summed loss"
    for (n, ga), (_, gb) in List.zip (snd a) (snd b) do
        let scale = ga.abs().max().item<float32> () |> float
        let d = (ga - gb).abs().max().item<float32> () |> float
        Expect.isLessThanOrEqual d (1e-5 * max scale 1e-6) $"{what}: {n}'s gradient ({d:G3} apart, largest {scale:G3})"

[<Tests>]
let tests =
    testList "Scale.logits" [
        for name, config in [ "llama tied", tinyLlama true :> ModelConfig; "llama untied", tinyLlama false; "neox", tinyNeoX true ] do
            test $"Scale.logits.{name}: chunks of 1, 4 and 13 positions give the plain loss and gradients; so does the chunked loss under gradient checkpointing" {
                use m = randomModel config 7L
                m.train ()
                let reference = lossAndGrads m plain
                for chunk in [ 1L; 4L; 13L ] do close $"chunk {chunk}" reference (lossAndGrads m (chunked chunk))
                m.GradientCheckpointing <- true
                close "checkpointed, chunk 4" reference (lossAndGrads m (chunked 4L))
            }

        test "Scale.logits.headAdapter: with LoRA on the untied head alone (the body frozen), the head's adapter gets the plain gradient" {
            use m = randomModel (tinyLlama false) 3L
            m.train ()
            use set = LoraAdapters.Attach(m, LoraSpec(Rank = 2, Targets = [ "lm_head" ]), 0L)
            do
                use _ = torch.no_grad ()
                for a in set.Adapters do a.B.normal_(0.0, 0.1) |> ignore
            close "head adapter, chunk 3" (lossAndGrads m plain) (lossAndGrads m (chunked 3L))
        }

        test "Scale.logits.when: a step chunks its loss only when tokens × vocabulary exceed 4M entries (tiny models never do)" {
            Expect.isFalse (ChunkedLoss.Needed(16L * 127L, 512L)) "stories260K, 16 × 128 tokens: one pass"
            Expect.isTrue (ChunkedLoss.Needed(511L, 32000L)) "TinyLlama, 512 tokens: chunked"
            Expect.equal (ChunkedLoss.TokensPerChunk 32000L) 131L "4M entries / 32,000 = 131 tokens per chunk"
        }
    ]
