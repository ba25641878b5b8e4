/// An independent, spec-level reference forward pass (plain tensor ops, one head at a time, explicit masks and
/// rotations) for Llama and GPT-NeoX, computed from a state_dict in HF's layout. It pins the layout facts the modules
/// must honour: GPT-NeoX's per-head [q, k, v] fused chunks and partial rotary, parallel vs sequential residual,
/// Llama's kv head h / (heads / kv_heads), rotate_half pairing (i, i + d/2), tied embeddings.
module MoFO.Tests.ModelsReference

open System
open Expecto
open TorchSharp
open MoFO.Models
open MoFO.Tests.ModelFixtures

type private T = torch.Tensor

/// Rotates the first `rd` features of x [T, d]: pair (i, i + rd/2) turns by angle t * theta^(-2i/rd).
let private rope (x: T) (rd: int) (theta: float) =
    let n = x.shape[0]
    let half = rd / 2
    let inv = torch.tensor(Array.init half (fun i -> float32 (1.0 / Math.Pow(theta, 2.0 * float i / float rd))))
    let ang = torch.arange(n, dtype = torch.float32).unsqueeze(1) * inv.unsqueeze(0)
    let c, s = ang.cos(), ang.sin()
    let x1, x2 = x.narrow(1, 0L, int64 half), x.narrow(1, int64 half, int64 half)
    let rest = x.narrow(1, int64 rd, x.shape[1] - int64 rd)
    torch.cat([| x1 * c - x2 * s; x2 * c + x1 * s; rest |], 1L)

/// softmax(q k^T / sqrt(d) + causal) v for one head.
let private head (q: T) (k: T) (v: T) =
    let n = q.shape[0]
    let scores = q.matmul(k.t()) / Math.Sqrt(float q.shape[1])
    let future = torch.ones([| n; n |], dtype = torch.ScalarType.Bool).triu(1L)
    scores.masked_fill(future, Double.NegativeInfinity).softmax(-1).matmul(v)

let private referenceNeoX (c: GptNeoXConfig) (sd: Collections.Generic.IReadOnlyDictionary<string, T>) (tokens: int64[]) =
    let w (n: string) = sd[n]
    let ln (h: T) (p: string) =
        let mu = h.mean([| -1L |], keepdim = true)
        let var = (h - mu).square().mean([| -1L |], keepdim = true)
        (h - mu) / (var + c.LayerNormEps).sqrt() * w (p + ".weight") + w (p + ".bias")
    let lin (h: T) (p: string) = h.matmul((w (p + ".weight")).t()) + w (p + ".bias")
    let hs = c.HeadSize
    let mutable h = (w "gpt_neox.embed_in.weight").index_select(0L, torch.tensor tokens)
    for l in 0 .. c.NumHiddenLayers - 1 do
        let p = $"gpt_neox.layers.{l}."
        let qkv = lin (ln h (p + "input_layernorm")) (p + "attention.query_key_value")
        let heads =
            [| for i in 0 .. c.NumAttentionHeads - 1 ->
                let chunk (j: int) = qkv.narrow(1, int64 (i * 3 * hs + j * hs), int64 hs)
                head (rope (chunk 0) c.RotaryNdims c.RotaryEmbBase) (rope (chunk 1) c.RotaryNdims c.RotaryEmbBase) (chunk 2) |]
        let attn = lin (torch.cat(heads, 1L)) (p + "attention.dense")
        let mlp (x: T) = lin (torch.nn.functional.gelu (lin x (p + "mlp.dense_h_to_4h"))) (p + "mlp.dense_4h_to_h")
        if c.UseParallelResidual then h <- h + attn + mlp (ln h (p + "post_attention_layernorm"))
        else
            h <- h + attn
            h <- h + mlp (ln h (p + "post_attention_layernorm"))
    (ln h "gpt_neox.final_layer_norm").matmul((w "embed_out.weight").t())

let private referenceLlama (c: LlamaConfig) (sd: Collections.Generic.IReadOnlyDictionary<string, T>) (tokens: int64[]) =
    let w (n: string) = sd[n]
    let rms (h: T) (p: string) = h / (h.square().mean([| -1L |], keepdim = true) + c.RmsNormEps).sqrt() * w (p + ".weight")
    let lin (h: T) (p: string) = h.matmul((w (p + ".weight")).t())
    let d = c.HeadDim
    let group = c.NumAttentionHeads / c.NumKeyValueHeads
    let mutable h = (w "model.embed_tokens.weight").index_select(0L, torch.tensor tokens)
    for l in 0 .. c.NumHiddenLayers - 1 do
        let p = $"model.layers.{l}."
        let x = rms h (p + "input_layernorm")
        let q, k, v = lin x (p + "self_attn.q_proj"), lin x (p + "self_attn.k_proj"), lin x (p + "self_attn.v_proj")
        let part (t: T) (i: int) = t.narrow(1, int64 (i * d), int64 d)
        let heads =
            [| for i in 0 .. c.NumAttentionHeads - 1 ->
                let kv = i / group
                head (rope (part q i) d c.RopeTheta) (rope (part k kv) d c.RopeTheta) (part v kv) |]
        h <- h + lin (torch.cat(heads, 1L)) (p + "self_attn.o_proj")
        let y = rms h (p + "post_attention_layernorm")
        h <- h + lin (torch.nn.functional.silu (lin y (p + "mlp.gate_proj")) * lin y (p + "mlp.up_proj")) (p + "mlp.down_proj")
    let out = rms h "model.norm"
    out.matmul((if c.TieWordEmbeddings then w "model.embed_tokens.weight" else w "lm_head.weight").t())

let private configs : (string * ModelConfig) list =
    [ "llama untied", tinyLlama false; "llama tied", tinyLlama true; "gpt_neox parallel", tinyNeoX true; "gpt_neox sequential", tinyNeoX false ]

[<Tests>]
let tests =
    testList "Models.reference" [
      yield!
       [ for name, config in configs ->
            test $"Models.reference.{name}: the module's logits equal a head-by-head reference forward from the state_dict" {
                let m = randomModel config 41L
                use _ = torch.no_grad()
                let tokens = (randomIds 64 1 10 2L).view(-1L).data<int64>().ToArray()
                let expected =
                    match config with
                    | :? LlamaConfig as c -> referenceLlama c (m.StateDict()) tokens
                    | :? GptNeoXConfig as c -> referenceNeoX c (m.StateDict()) tokens
                    | _ -> failwith "config"
                let actual = m.Forward(torch.tensor(tokens).unsqueeze(0))[0]
                Expect.isGreaterThan (expected.std().item<float32>()) 0.05f "non-trivial logits"
                Expect.isLessThan (maxAbsDiff actual expected) 1e-5 "logits"
            } ]

      yield
        test "Models.reference.stories260K: the llama2.c checkpoint (rows permuted on load) matches the reference too" {
            let path = Fixtures.requireAsset MoFO.DataRoot.Assets.Stories260K
            let struct (m, _) = ModelLoader.LoadModule path
            use _ = torch.no_grad()
            let tokens = [| 1L; 403L; 407L; 261L; 378L; 20L; 40L; 100L |]
            let expected = referenceLlama (m.Config :?> LlamaConfig) (m.StateDict()) tokens
            Expect.isLessThan (maxAbsDiff (m.Forward(torch.tensor(tokens).unsqueeze(0))[0]) expected) 1e-4 "logits"
        }
    ]
