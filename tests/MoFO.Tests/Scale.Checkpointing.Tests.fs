/// Gradient (activation) checkpointing per decoder layer: losses and every parameter's gradient equal those of the
/// plain backward; eval, no_grad and KV-cache forwards are unchanged; nothing accumulates over many steps.
module MoFO.Tests.ScaleCheckpointing

open System
open Expecto
open TorchSharp
open MoFO
open MoFO.Models
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private configs : (string * ModelConfig) list =
    [ "llama untied, grouped-query (4 heads, 2 kv)", tinyLlama false
      "llama tied, grouped-query (4 heads, 2 kv)", tinyLlama true
      "gpt_neox parallel residual", tinyNeoX true
      "gpt_neox sequential residual", tinyNeoX false ]

/// A micro-batch of `rows` sequences of length `t`, left-padded to the given real lengths: input ids, attention mask
/// (0 on the padding) and labels (-100 on the padding).
let private leftPadded (vocab: int) (t: int) (lengths: int list) (seed: int64) =
    let b = lengths.Length
    let ids = randomIds vocab b t seed
    let lengths = List.toArray lengths
    let mask = torch.tensor(Array.init (b * t) (fun i -> if i % t >= t - lengths[i / t] then 1L else 0L)).view(int64 b, int64 t)
    let labels = ids.masked_fill(mask.eq(torch.tensor 0L), -100L)
    ids, mask, labels

/// Three micro-batches whose gradients accumulate (as in the trainer): two left-padded, one without a mask (causal).
let private microBatches (vocab: int) (seed: int64) =
    let ids = randomIds vocab 2 9 (seed + 2L)
    [ leftPadded vocab 12 [ 12; 8; 5 ] seed; leftPadded vocab 10 [ 7; 10 ] (seed + 1L); ids, null, ids ]

/// The loss of each micro-batch and every parameter's gradient accumulated over them, each micro-batch's forward
/// and backward in a dispose scope of its own (as the trainer's). The gradients are copies that outlive the scopes.
let private lossesAndGrads (m: CausalLMModule) (checkpointing: bool) (batches: (torch.Tensor * torch.Tensor * torch.Tensor) list) =
    m.GradientCheckpointing <- checkpointing
    m.train ()
    for p in m.parameters () do p.grad <- null
    let losses =
        [ for ids, mask, labels in batches ->
            use scope = torch.NewDisposeScope()
            let loss = CausalLM.Loss(m.Forward(ids, mask), labels)
            loss.backward ()
            loss.item<float32> () |> float ]
    let grads =
        [ for KeyValue (n, p) in m.StateDict() do
            if p.requires_grad then
                match p.grad with
                | null -> failtestf "%s: no gradient (checkpointing %b)" n checkpointing
                | g -> n, g.detach().clone().DetachFromDisposeScope() ]
    m.GradientCheckpointing <- false
    for p in m.parameters () do p.grad <- null
    losses, grads

/// max |a - b| / max |b|: the error relative to the tensor's scale.
let private relErr (a: torch.Tensor) (b: torch.Tensor) =
    let scale = b.``to``(torch.float64).abs().max().item<float> ()
    maxAbsDiff a b / (if scale > 0.0 then scale else 1.0)

/// Checks the losses and every gradient of the checkpointed pass against the plain one; returns the largest error.
let private expectSame (tolerance: float) (m: CausalLMModule) (batches: (torch.Tensor * torch.Tensor * torch.Tensor) list) =
    let plainLoss, plainGrads = lossesAndGrads m false batches
    let ckptLoss, ckptGrads = lossesAndGrads m true batches
    for a, b in List.zip ckptLoss plainLoss do
        Expect.isLessThanOrEqual (abs (a - b) / abs b) tolerance $"loss {a} (checkpointed) vs {b}"
    Expect.equal (List.map fst ckptGrads) (List.map fst plainGrads) "the same parameters"
    let mutable worst = 0.0
    for (n, a), (_, b) in List.zip ckptGrads plainGrads do
        Expect.equal a.dtype b.dtype $"{n}: dtype"
        Expect.isGreaterThan (b.abs().max().``to``(torch.float64).item<float> ()) 0.0 $"{n}: a non-zero gradient"
        let e = relErr a b
        worst <- max worst e
        Expect.isLessThanOrEqual e tolerance $"{n}: gradient relative error {e:G3}"
    worst

/// Live checkpointing nodes (TorchSharp's registry of managed autograd nodes, private): a leak of graphs across
/// steps shows up there.
let private aliveNodes () =
    let node = typeof<torch.Tensor>.Assembly.GetType("TorchSharp.torch+autograd+Node", true)
    let field = node.GetField("AliveNodes", Reflection.BindingFlags.NonPublic ||| Reflection.BindingFlags.Static)
    let list = field.GetValue(null) :?> Collections.ICollection
    lock list (fun () -> list.Count)

[<Tests>]
let tests =
    testSequenced <| testList "Scale.Checkpointing" [
        test "Scale.Checkpointing.active: a checkpointed forward adds one autograd node and one tensor per layer, no layer intermediates" {
            let ids, mask, _ = leftPadded 64 12 [ 12; 8 ] 2L
            /// (tensor handles left in the caller's scope, live checkpointing nodes) after a training forward pass.
            let forward (layers: int) (checkpointing: bool) =
                let c = tinyLlama false
                let m = randomModel (LlamaConfig(VocabSize = c.VocabSize, HiddenSize = c.HiddenSize, IntermediateSize = c.IntermediateSize,
                                                 NumHiddenLayers = layers, NumAttentionHeads = c.NumAttentionHeads,
                                                 NumKeyValueHeads = c.NumKeyValueHeads, MaxPositionEmbeddings = c.MaxPositionEmbeddings)) 43L
                m.train ()
                m.GradientCheckpointing <- checkpointing
                use scope = torch.NewDisposeScope()
                let before = aliveNodes ()
                m.Forward(ids, mask) |> ignore
                scope.DisposablesCount, aliveNodes () - before
            let plain2, plainNodes = forward 2 false
            let plain6, _ = forward 6 false
            let ckpt2, nodes2 = forward 2 true
            let ckpt6, nodes6 = forward 6 true
            Expect.equal plainNodes 0 "no checkpointing node without checkpointing"
            Expect.equal (nodes2, nodes6) (2, 6) "a node per layer, alive while the graph is"
            // Plain: every intermediate of every layer stays referenced by the caller's scope (and by the graph);
            // checkpointed: each layer leaves its output only.
            Expect.equal (ckpt6 - ckpt2) 4 $"tensor handles per layer, checkpointed ({ckpt2} with 2 layers, {ckpt6} with 6)"
            Expect.isGreaterThan (plain6 - plain2) 40 $"tensor handles per layer, plain ({plain2} with 2 layers, {plain6} with 6)"
        }

        testList "Scale.Checkpointing.float32" [
            for name, config in configs ->
                test $"Scale.Checkpointing.float32.{name}: loss and every gradient equal the plain backward's (left padding and none, three micro-batches)" {
                    let m = randomModel config 31L
                    expectSame 1e-6 m (microBatches config.VocabSize 7L) |> ignore
                }
        ]

        test "Scale.Checkpointing.frozenEmbeddings: with an input that needs no gradient, the layers' gradients are still exact" {
            let m = randomModel (tinyLlama false) 33L
            let embed = m.StateDict().["model.embed_tokens.weight"]
            embed.requires_grad <- false
            try
                let batches = microBatches 64 8L
                let plainLoss, plain = lossesAndGrads m false batches
                let ckptLoss, ckpt = lossesAndGrads m true batches
                Expect.equal ckptLoss plainLoss "losses"
                Expect.isFalse (ckpt |> List.exists (fun (n, _) -> n = "model.embed_tokens.weight")) "no gradient for the frozen embeddings"
                for (n, a), (_, b) in List.zip ckpt plain do
                    Expect.isLessThanOrEqual (relErr a b) 1e-6 n
            finally embed.requires_grad <- true
        }

        test "Scale.Checkpointing.stories260K: the real model's loss and gradients equal the plain backward's" {
            use lm = ModelLoader.Load(requireAsset DataRoot.Assets.Stories260K)
            let vocab = lm.Module.Config.VocabSize
            let text = lm.Tokenizer.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside.", true) |> Seq.map int64 |> Seq.toArray
            let n = int64 text.Length
            let real = torch.tensor(text).view(1L, n)
            let batches = [ real, null, real.clone (); leftPadded vocab 24 [ 24; 16; 9 ] 12L ]
            expectSame 1e-6 lm.Module batches |> ignore
        }

        testList "Scale.Checkpointing.bfloat16" [
            for name, config in [ List.item 0 configs; List.item 2 configs ] ->
                test $"Scale.Checkpointing.bfloat16.{name}: forward and backward run checkpointed; gradients agree within bfloat16 precision" {
                    let m = randomModel config 35L
                    m.``to``(torch.bfloat16) |> ignore
                    // bfloat16 keeps 8 significant bits (relative spacing 2^-8 ≈ 3.9e-3): allow a few of its units.
                    expectSame 2e-2 m (microBatches config.VocabSize 9L) |> ignore
                }
        ]

        testList "Scale.Checkpointing.unchanged" [
            for name, config in configs ->
                test $"Scale.Checkpointing.unchanged.{name}: eval mode, no_grad and a KV cache give the logits of the plain forward" {
                    let m = randomModel config 37L
                    let ids, mask, _ = leftPadded config.VocabSize 9 [ 9; 6 ] 3L
                    let logits (checkpointing: bool) (training: bool) (grad: bool) =
                        m.GradientCheckpointing <- checkpointing
                        (if training then m.train () else m.eval ())
                        use _ = torch.enable_grad(grad)
                        let y = m.Forward(ids, mask)
                        Expect.equal y.requires_grad grad $"requires_grad under grad mode {grad}"
                        y.detach ()
                    let reference = logits false false false
                    for training, grad in [ false, false; false, true; true, false; true, true ] do
                        Expect.isTrue (identical (logits true training grad) reference) $"checkpointing on, training {training}, grad {grad}"
                    // Generation with a cache while in training mode with gradients enabled: checkpointing stays off.
                    m.GradientCheckpointing <- true
                    m.train ()
                    let x = randomIds config.VocabSize 2 7 4L
                    let full =
                        use _ = torch.no_grad ()
                        m.Forward x
                    use cache = m.CreateCache(2L, 7L)
                    let first = m.Forward(x.narrow(1, 0L, 4L), cache = cache)
                    let rest = m.Forward(x.narrow(1, 4L, 3L), cache = cache)
                    Expect.isLessThan (maxAbsDiff (torch.cat([| first; rest |], 1L)) full) 1e-5 "cached decoding"
                    m.GradientCheckpointing <- false
                    m.eval ()
                }
        ]

        test "Scale.Checkpointing.scopes: a forward whose dispose scope ends before backward() still backpropagates exactly" {
            let m = randomModel (tinyNeoX false) 39L
            let ids, mask, labels = leftPadded 64 11 [ 11; 7 ] 6L
            let _, plain = lossesAndGrads m false [ ids, mask, labels ]
            m.GradientCheckpointing <- true
            m.train ()
            let loss =
                use inner = torch.NewDisposeScope()
                CausalLM.Loss(m.Forward(ids, mask), labels).MoveToOuterDisposeScope()
            // The inner scope disposed every handle of the forward pass (the layers' inputs, cos/sin, the mask).
            loss.backward ()
            for KeyValue (n, p) in m.StateDict() do
                Expect.isLessThanOrEqual (relErr p.grad (plain |> List.find (fst >> (=) n) |> snd)) 1e-6 n
            m.GradientCheckpointing <- false
            for p in m.parameters () do p.grad <- null
        }

        test "Scale.Checkpointing.flat: over many steps neither tensor handles nor autograd nodes accumulate" {
            let m = randomModel (tinyLlama false) 41L
            m.GradientCheckpointing <- true
            m.train ()
            let batches = microBatches 64 10L
            use outer = torch.NewDisposeScope()
            let step () =
                for ids, mask, labels in batches do
                    use scope = torch.NewDisposeScope()
                    CausalLM.Loss(m.Forward(ids, mask), labels).backward ()
                for p in m.parameters () do p.grad <- null
            for _ in 1 .. 5 do step ()
            let handles, nodes = outer.DisposablesCount, aliveNodes ()
            for _ in 1 .. 200 do step ()
            Expect.equal outer.DisposablesCount handles "tensor handles left in the caller's scope"
            // 200 steps × 2 micro-batches × 2 layers = 800 nodes if graphs leaked; a parallel test may hold a few.
            Expect.isLessThan (aliveNodes () - nodes) 20 "live autograd nodes"
            m.GradientCheckpointing <- false
        }
    ]
