using MoFO.Data;
using MoFO.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Evaluation;

/// <summary>The mean per-token KL divergence of a model from its base, and over how many positions it was taken.</summary>
public sealed record KlResult(double MeanTokenKl, long Tokens, int Examples);

/// <summary>
/// How far a fine-tuned model's next-token distributions have moved from its base model's: the mean over positions of
/// KL(p_model ‖ p_base) = Σ_v p_model(v) (log p_model(v) − log p_base(v)), in nats, computed in float32 per position and
/// summed in float64. "RL's Razor" (arXiv 2509.04259) reports that this divergence on the new task's distribution
/// predicts forgetting. Two variants: at the answer positions of the held-out task examples (<see cref="OnTask"/>, with
/// the trainer's tokenization and masking), and at every position of texts such as the base model's own samples
/// (<see cref="OnTexts"/>). The two models must share the tokenizer's vocabulary.
/// </summary>
public static class KlToBase
{
    /// <summary>At the positions that predict an answer token of each held-out example (prompt tokens excluded).</summary>
    public static KlResult OnTask(CausalLM model, CausalLM baseModel, IReadOnlyList<TrainingExample> examples, int maxLength = 512, int batch = 16)
    {
        if (examples.Count == 0) throw new ArgumentException("KlToBase.OnTask: no held-out examples");
        int window = Math.Min(maxLength, Math.Min(model.MaxSequenceLength, baseModel.MaxSequenceLength));
        var rows = examples.Select(e => Tokenized.Encode(e, model.Tokenizer, window)).Where(t => t.TrainedTokens > 0).ToList();
        if (rows.Count == 0) throw new ArgumentException($"KlToBase.OnTask: none of the {examples.Count} examples keeps an answer token within {window} tokens");
        return Mean(model, baseModel, rows, batch);
    }

    /// <summary>At every position of each text after its first token (the text tokenized with BOS, cut to the window).</summary>
    public static KlResult OnTexts(CausalLM model, CausalLM baseModel, IReadOnlyList<string> texts, int maxLength = 512, int batch = 16)
    {
        int window = Math.Min(maxLength, Math.Min(model.MaxSequenceLength, baseModel.MaxSequenceLength));
        var rows = texts.Select(t => model.Tokenizer.Encode(t, true).Take(window).ToArray()).Where(ids => ids.Length >= 2)
                        .Select((ids, i) => new TokenizedExample(ids, ids, $"text {i}")).ToList();
        if (rows.Count == 0) throw new ArgumentException("KlToBase.OnTexts: no text has two tokens");
        return Mean(model, baseModel, rows, batch);
    }

    static KlResult Mean(CausalLM model, CausalLM baseModel, List<TokenizedExample> rows, int batch)
    {
        if (model.Tokenizer.VocabSize != baseModel.Tokenizer.VocabSize)
            throw new ArgumentException($"KL to the base: the models' vocabularies differ ({model.Name}: {model.Tokenizer.VocabSize}, {baseModel.Name}: {baseModel.Tokenizer.VocabSize})");
        using var mode = model.Module.EvalMode();
        using var baseMode = baseModel.Module.EvalMode();
        using var _ = no_grad();
        double sum = 0;
        long count = 0;
        int pad = model.Tokenizer.EosId ?? 0;
        rows.Sort((a, b) => b.InputIds.Length.CompareTo(a.InputIds.Length));
        for (int i = 0; i < rows.Count; i += batch)
        {
            using var scope = NewDisposeScope();
            using var b = Tokenized.Pad(rows.Skip(i).Take(batch).ToList(), pad);
            var lm = model.Logits(b.InputIds, b.AttentionMask);
            var lb = baseModel.Logits(b.InputIds.to(baseModel.Module.Device), b.AttentionMask.to(baseModel.Module.Device)).to(lm.device);
            long v = lm.shape[^1];
            if (lb.shape[^1] != v) throw new ArgumentException($"KL to the base: the models' output widths differ ({v} and {lb.shape[^1]})");
            var pm = nn.functional.log_softmax(lm[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32), -1);
            var pb = nn.functional.log_softmax(lb[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32), -1);
            var mask = b.Labels[.., 1..].reshape(-1).to(lm.device).ne(Tokenized.Ignore);
            var kl = (pm.exp() * (pm - pb)).sum(-1);
            sum += kl.masked_select(mask).to(ScalarType.Float64).sum().item<double>();
            count += mask.sum().item<long>();
        }
        return new KlResult(sum / count, count, rows.Count);
    }
}
