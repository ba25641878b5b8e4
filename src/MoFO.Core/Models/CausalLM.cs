using MoFO.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Models;

/// <summary>
/// A causal language model with its tokenizer: logits, the token-level loss with a label mask, and the text-level
/// <see cref="ILanguageModel"/> (batched log-likelihoods, rolling text log-likelihoods, generation with a KV cache).
/// <para>Tokenization of a (context, continuation) request follows lm-evaluation-harness: trailing spaces of the context
/// move to the continuation; the whole text context + continuation is encoded (with BOS where the original tokenizer
/// adds it: Llama yes, GPT-NeoX no), and the continuation's tokens are those after the first len(encode(context))
/// tokens; an empty context is the start token (BOS, else EOS, the harness's prefix token). Inputs longer than
/// <see cref="MaxSequenceLength"/> + 1 tokens are truncated from the left. <see cref="BosPolicy"/> changes where BOS
/// goes (lm-evaluation-harness 0.4.2 adds none).</para>
/// </summary>
public sealed class CausalLM : ILanguageModel, IDisposable
{
    public CausalLM(CausalLMModule module, ITextTokenizer tokenizer, string name, IEnumerable<int>? stopTokenIds = null)
    {
        Module = module;
        Tokenizer = tokenizer;
        Name = name;
        MaxSequenceLength = module.Config.MaxPositionEmbeddings;
        var stops = new HashSet<int>(stopTokenIds ?? module.Config.EosTokenIds);
        if (tokenizer.EosId is int e) stops.Add(e);
        StopTokenIds = stops;
        module.eval();
    }

    public CausalLMModule Module { get; }
    public ITextTokenizer Tokenizer { get; }
    public string Name { get; }
    public int MaxSequenceLength { get; set; }

    /// <summary>The checkpoint the weights were loaded from (an HF folder or a .bin), or null for a model built in memory.</summary>
    public string? SourcePath { get; init; }

    /// <summary>Token ids that end a generated sequence (EOS; for llama2.c checkpoints also BOS, as in run.c).</summary>
    public IReadOnlySet<int> StopTokenIds { get; }

    /// <summary>Most tokens (batch × padded length) per forward pass of the scoring methods.</summary>
    public int BatchTokens { get; set; } = 8192;

    /// <summary>Most sequences per forward pass of the scoring and generation methods.</summary>
    public int BatchSize { get; set; } = 16;

    /// <summary>Whether log-likelihood requests, rolling texts and generation prompts start with BOS (default
    /// <see cref="BosPolicy.Auto"/>: the tokenizer's default).</summary>
    public BosPolicy BosPolicy { get; set; } = BosPolicy.Auto;

    /// <summary>Logits [B, T, V] of token ids [B, T].</summary>
    public Tensor Logits(Tensor inputIds, Tensor? attentionMask = null) => Module.Forward(inputIds.to(Module.Device), attentionMask?.to(Module.Device));

    /// <summary>Mean next-token cross-entropy of logits [B, T, V] against labels [B, T] (HF convention: the shift is done
    /// here, label -100 is ignored). Computed in float32. All labels ignored gives NaN, as in PyTorch.</summary>
    public static Tensor Loss(Tensor logits, Tensor labels)
    {
        var t = logits.shape[1];
        var shifted = logits.narrow(1, 0, t - 1).to(ScalarType.Float32).reshape(-1, logits.shape[2]);
        var target = labels.narrow(1, 1, t - 1).to(ScalarType.Int64).to(logits.device).reshape(-1);
        return nn.functional.cross_entropy(shifted, target, ignore_index: -100, reduction: nn.Reduction.Mean);
    }

    /// <summary>Loss of the model on input ids with labels (-100 = ignored).</summary>
    public Tensor Loss(Tensor inputIds, Tensor labels, Tensor? attentionMask = null) => Loss(Logits(inputIds, attentionMask), labels);

    // ---- scoring -------------------------------------------------------------------------------------------------

    /// <summary>One scoring job: the input tokens and the targets predicted at its last Targets.Length positions.</summary>
    sealed record Item(int Index, int[] Input, int[] Targets);

    /// <summary>The start token of a text with no context: BOS, else EOS (GPT-NeoX's &lt;|endoftext|&gt;), as the
    /// harness's prefix token.</summary>
    int StartToken => Tokenizer.BosId ?? Tokenizer.EosId ?? throw new InvalidOperationException($"{Tokenizer.SourceFile}: the tokenizer has neither BOS nor EOS to start a text with");

    // lm-evaluation-harness v0.4.2 (tag v0.4.2, commit 4600d6bf, 2024-03-18), for causal models: HFLM.tok_encode and
    // tok_batch_encode (lm_eval/models/huggingface.py) encode with add_special_tokens = False or self.add_bos_token, and
    // add_bos_token defaults to False (forced True only for model_type "gemma"): no BOS in loglikelihood contexts and
    // continuations (TemplateLM._encode_pair, lm_eval/api/model.py) nor in generate_until prompts. An empty context is
    // [self.eot_token_id] (TemplateLM.loglikelihood), and loglikelihood_rolling's prefix_token is self.eot_token_id too;
    // eot_token_id is tokenizer.eos_token_id. Later versions use prefix_token_id (BOS, else EOS) and the tokenizer's
    // own special tokens, which is Auto.

    /// <summary>Whether a non-empty context or prompt is encoded with BOS.</summary>
    bool AddsBos => BosPolicy switch
    {
        BosPolicy.Always => true,
        BosPolicy.Never => false,
        _ => Tokenizer.AddsBosByDefault,
    };

    /// <summary>The token an empty context and a whole text start from: the start token, or under
    /// <see cref="BosPolicy.Never"/> 0.4.2's eot_token_id (EOS, else BOS).</summary>
    int PrefixToken => BosPolicy == BosPolicy.Never && Tokenizer.EosId is int eos ? eos : StartToken;

    /// <summary>The tokens a request is scored on, as the harness's _encode_pair: the context's (with BOS as
    /// <see cref="BosPolicy"/> says) and the continuation's (before truncation to the model's window).</summary>
    public (int[] Context, int[] Continuation) SplitRequest(LogLikelihoodRequest r)
    {
        var context = r.Context;
        var continuation = r.Continuation;
        var spaces = context.Length - context.TrimEnd(' ').Length;
        if (spaces > 0) { continuation = context[^spaces..] + continuation; context = context[..^spaces]; }
        if (context.Length == 0) return ([PrefixToken], Tokenizer.Encode(continuation, addBos: false).ToArray());
        var bos = AddsBos;
        var whole = Tokenizer.Encode(context + continuation, bos).ToArray();
        var ctxLen = Math.Min(Tokenizer.Encode(context, bos).Count, whole.Length);
        return (whole[..ctxLen], whole[ctxLen..]);
    }

    Item MakeItem(int index, int[] context, int[] continuation)
    {
        var all = context.Concat(continuation).ToArray();
        var keep = Math.Min(all.Length, MaxSequenceLength + 1);
        var window = all[^keep..];
        return new Item(index, window[..^1], continuation.Length > MaxSequenceLength ? continuation[^MaxSequenceLength..] : continuation);
    }

    /// <summary>Scores items in batches: (sum of target log-probs, whether all were greedy) per item.</summary>
    (double Sum, bool Greedy)[] Score(IReadOnlyList<Item> items)
    {
        var results = new (double, bool)[items.Count];
        var order = items.Select((it, i) => (it, i)).Where(x => x.it.Targets.Length > 0 && x.it.Input.Length > 0)
            .OrderByDescending(x => x.it.Input.Length).ToList();
        var pos = 0;
        using var noGrad = torch.no_grad();
        while (pos < order.Count)
        {
            var maxLen = order[pos].it.Input.Length;
            var n = Math.Max(1, Math.Min(BatchSize, BatchTokens / Math.Max(1, maxLen)));
            var batch = order.Skip(pos).Take(n).ToList();
            pos += batch.Count;
            using var scope = torch.NewDisposeScope();
            var ids = new long[batch.Count * maxLen];
            for (var b = 0; b < batch.Count; b++)
                for (var j = 0; j < batch[b].it.Input.Length; j++) ids[b * maxLen + j] = batch[b].it.Input[j];
            // Right padding: under the causal mask real positions never see the padding that follows them.
            var logits = Module.Forward(torch.tensor(ids, [batch.Count, maxLen], device: Module.Device));
            for (var b = 0; b < batch.Count; b++)
            {
                var it = batch[b].it;
                var k = it.Targets.Length;
                var rows = logits[b].narrow(0, it.Input.Length - k, k).to(ScalarType.Float32).log_softmax(-1);
                var target = torch.tensor(it.Targets.Select(x => (long)x).ToArray(), device: Module.Device);
                var lp = rows.gather(1, target.unsqueeze(1)).squeeze(1).sum().to(ScalarType.Float64).item<double>();
                var greedy = rows.argmax(-1).eq(target).all().item<bool>();
                results[batch[b].i] = (lp, greedy);
            }
        }
        for (var i = 0; i < items.Count; i++) if (items[i].Targets.Length == 0) results[i] = (0.0, true);
        return results;
    }

    public IReadOnlyList<LogLikelihoodResult> LogLikelihoods(IReadOnlyList<LogLikelihoodRequest> requests)
    {
        var items = requests.Select((r, i) => { var (c, k) = SplitRequest(r); return MakeItem(i, c, k); }).ToList();
        var scores = Score(items);
        return items.Select((it, i) => new LogLikelihoodResult(scores[i].Sum, it.Targets.Length, scores[i].Greedy)).ToList();
    }

    /// <summary>Rolling log-likelihood (lm-evaluation-harness's loglikelihood_rolling): every token after BOS is predicted
    /// once; a text longer than the model's window is cut into windows of up to <see cref="MaxSequenceLength"/>
    /// predictions, each with as much preceding context as fits.</summary>
    public IReadOnlyList<LogLikelihoodResult> TextLogLikelihoods(IReadOnlyList<string> texts)
    {
        var items = new List<Item>();
        var owner = new List<int>();
        var counts = new int[texts.Count];
        for (var i = 0; i < texts.Count; i++)
        {
            int[] tokens = [PrefixToken, .. Tokenizer.Encode(texts[i], addBos: false)];
            counts[i] = Math.Max(0, tokens.Length - 1);
            for (var s = 1; s < tokens.Length; s += MaxSequenceLength)
            {
                var e = Math.Min(tokens.Length, s + MaxSequenceLength);
                var start = Math.Max(0, e - 1 - MaxSequenceLength);
                items.Add(new Item(items.Count, tokens[start..(e - 1)], tokens[s..e]));
                owner.Add(i);
            }
        }
        var scores = Score(items);
        var sums = new double[texts.Count];
        var greedy = Enumerable.Repeat(true, texts.Count).ToArray();
        for (var j = 0; j < items.Count; j++) { sums[owner[j]] += scores[j].Sum; greedy[owner[j]] &= scores[j].Greedy; }
        return Enumerable.Range(0, texts.Count).Select(i => new LogLikelihoodResult(sums[i], counts[i], greedy[i])).ToList();
    }

    // ---- generation ----------------------------------------------------------------------------------------------

    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, GenerationOptions options)
    {
        var results = new string[prompts.Count];
        var generator = new Generator((ulong)options.Seed, Module.Device);
        for (var start = 0; start < prompts.Count; start += BatchSize)
        {
            var batch = Enumerable.Range(start, Math.Min(BatchSize, prompts.Count - start)).ToList();
            // BOS as BosPolicy says (Auto: as the original tokenizer does, BOS for Llama, none for GPT-NeoX); an empty
            // prompt starts from the start token under every policy (0.4.2 has no rule for it; base-model samples, which
            // are cached by model, stay the same).
            var encoded = batch.Select(i => prompts[i].Length == 0 ? [StartToken] : Tokenizer.Encode(prompts[i], AddsBos).ToArray()).ToList();
            var tokens = GenerateTokens(encoded, options, generator);
            for (var b = 0; b < batch.Count; b++) results[batch[b]] = ContinuationText(encoded[b], tokens[b], options.StopStrings);
        }
        return results;
    }

    /// <summary>Decodes generated tokens as the text that follows the prompt's text (decoding prompt + continuation keeps
    /// the leading space that SentencePiece drops at the start of a text), cut at the first stop string.</summary>
    string ContinuationText(int[] prompt, IReadOnlyList<int> generated, IReadOnlyList<string>? stops)
    {
        var full = Tokenizer.Decode(prompt.Concat(generated));
        var head = Tokenizer.Decode(prompt);
        var text = full.StartsWith(head, StringComparison.Ordinal) ? full[head.Length..] : Tokenizer.Decode(generated);
        return CutAtStop(text, stops).Text;
    }

    static (string Text, bool Stopped) CutAtStop(string text, IReadOnlyList<string>? stops)
    {
        if (stops is null) return (text, false);
        var cut = -1;
        foreach (var s in stops)
        {
            if (string.IsNullOrEmpty(s)) continue;
            var i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        return cut < 0 ? (text, false) : (text[..cut], true);
    }

    /// <summary>
    /// Generates token ids for a batch of prompts (each already tokenized, BOS included): left padding with an attention
    /// mask, a preallocated KV cache, greedy (temperature 0) or temperature + top-p sampling from <paramref name="generator"/>.
    /// A sequence ends at a stop token (not included), after MaxNewTokens, or when its text contains a stop string.
    /// Prompts longer than the window minus MaxNewTokens are truncated from the left.
    /// </summary>
    public IReadOnlyList<IReadOnlyList<int>> GenerateTokens(IReadOnlyList<int[]> prompts, GenerationOptions options, Generator? generator = null)
    {
        if (options.MaxNewTokens < 0) throw new ArgumentException($"MaxNewTokens must be >= 0, got {options.MaxNewTokens}");
        if (options.Temperature < 0) throw new ArgumentException($"Temperature must be >= 0, got {options.Temperature}");
        if (options.TopP is <= 0 or > 1) throw new ArgumentException($"TopP must be in (0, 1], got {options.TopP}");
        generator ??= new Generator((ulong)options.Seed, Module.Device);
        var maxNew = Math.Min(options.MaxNewTokens, MaxSequenceLength - 1);
        var room = MaxSequenceLength - maxNew;
        var ps = prompts.Select(p => p.Length > room ? p[^room..] : p).ToList();
        var outputs = ps.Select(_ => new List<int>()).ToList();
        if (maxNew == 0 || ps.Count == 0) return outputs;
        var b = ps.Count;
        var len = ps.Max(p => p.Length);
        if (len == 0) throw new ArgumentException("an empty prompt needs a BOS token, but the tokenizer has none");
        var pad = Tokenizer.EosId ?? 0;
        var done = new bool[b];

        using var noGrad = torch.no_grad();
        using var outer = torch.NewDisposeScope();
        using var cache = Module.CreateCache(b, len + maxNew);
        var ids = new long[b * len];
        var maskData = new long[b * (len + maxNew)];
        for (var i = 0; i < b; i++)
            for (var j = 0; j < ps[i].Length; j++)
            {
                ids[i * len + len - ps[i].Length + j] = ps[i][j];
                maskData[i * (len + maxNew) + len - ps[i].Length + j] = 1;
            }
        for (var i = 0; i < b; i++) for (var j = len; j < len + maxNew; j++) maskData[i * (len + maxNew) + j] = 1;
        var fullMask = torch.tensor(maskData, [b, len + maxNew], device: Module.Device);
        var input = torch.tensor(ids, [b, len], device: Module.Device);
        var positions = fullMask.narrow(1, 0, len).cumsum(1).sub(Scalars.OneL).clamp_min(Scalars.ZeroL);
        var nextPos = positions.narrow(1, len - 1, 1).add(Scalars.OneL);

        for (var step = 0; step < maxNew; step++)
        {
            long[] next;
            using (var scope = torch.NewDisposeScope())
            {
                var seen = len + step;
                var logits = Module.Forward(input, fullMask.narrow(1, 0, seen), positions, cache);
                var last = logits.narrow(1, logits.shape[1] - 1, 1).squeeze(1).to(ScalarType.Float32);
                next = Choose(last, options, generator).cpu().data<long>().ToArray();
            }
            for (var i = 0; i < b; i++)
            {
                if (done[i]) continue;
                if (StopTokenIds.Contains((int)next[i])) { done[i] = true; continue; }
                outputs[i].Add((int)next[i]);
                if (options.StopStrings is { Count: > 0 } && CutAtStop(ContinuationText(ps[i], outputs[i], null), options.StopStrings).Stopped) done[i] = true;
            }
            if (done.All(d => d) || step == maxNew - 1) break;
            var feed = next.Select((t, i) => done[i] ? pad : t).ToArray();
            input.Dispose();
            input = torch.tensor(feed, [b, 1], device: Module.Device);
            positions = nextPos.clone();
            nextPos.add_(Scalars.OneL);
        }
        return outputs;
    }

    static Tensor Choose(Tensor logits, GenerationOptions o, Generator g)
    {
        if (o.Temperature == 0) return logits.argmax(-1);
        using Scalar temperature = o.Temperature, topP = o.TopP;
        var probs = logits.div(temperature).softmax(-1);
        if (o.TopP < 1.0)
        {
            var (sorted, index) = probs.sort(-1, descending: true);
            var before = sorted.cumsum(-1) - sorted;              // mass of the tokens ranked above each token
            sorted = sorted.masked_fill(before.ge(topP), Scalars.Zero);  // keep tokens while the mass above them is below top_p (the first always)
            probs = torch.zeros_like(probs).scatter(-1, index, sorted);
        }
        return probs.multinomial(1, false, g).squeeze(-1);
    }

    public void Dispose() => Module.Dispose();
}
