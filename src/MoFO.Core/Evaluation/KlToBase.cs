using MoFO.Checkpoints;
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

    /// <summary>Writes the base model's log-probabilities (float32) at the answer positions of <paramref name="rows"/>, one
    /// tensor per batch, to a safetensors file (atomically), so that the KL of a later model needs no second model in
    /// memory (<see cref="AgainstSaved"/>).</summary>
    public static void SaveBase(CausalLM baseModel, IReadOnlyList<TokenizedExample> rows, string file, int batch = 16)
    {
        var saved = new Dictionary<string, Tensor>();
        try
        {
            Batches(baseModel, rows, batch, (i, b, _, mask) =>
            {
                var pb = LogProbs(baseModel, b).index_select(0, mask.nonzero().squeeze(1));
                saved[$"batch{i}"] = pb.cpu().DetachFromDisposeScope();
            });
            SafeTensors.Save(file, saved);
        }
        finally { foreach (var t in saved.Values) t.Dispose(); }
    }

    /// <summary>The KL of <paramref name="model"/> from the base whose log-probabilities <see cref="SaveBase"/> wrote for the
    /// same rows: the same value as <see cref="OnTask"/> with both models in memory, within float rounding.</summary>
    public static KlResult AgainstSaved(CausalLM model, IReadOnlyList<TokenizedExample> rows, string file, int batch = 16)
    {
        using var saved = SafeTensorFile.Open(file);
        using var tensors = new StreamedTensors(saved);
        return Sum(model, rows, batch, (i, _, device, _) => tensors.TryGetValue($"batch{i}", out var t) ? t.to(device)
            : throw new Checkpoints.CheckpointException($"{file}: no base log-probabilities for batch {i} (written for other rows?)"));
    }

    static KlResult Mean(CausalLM model, CausalLM baseModel, List<TokenizedExample> rows, int batch)
    {
        if (model.Tokenizer.VocabSize != baseModel.Tokenizer.VocabSize)
            throw new ArgumentException($"KL to the base: the models' vocabularies differ ({model.Name}: {model.Tokenizer.VocabSize}, {baseModel.Name}: {baseModel.Tokenizer.VocabSize})");
        using var baseMode = baseModel.Module.EvalMode();
        return Sum(model, rows, batch, (_, b, device, answers) => LogProbs(baseModel, b).to(device).index_select(0, answers));
    }

    /// <summary>Σ over the answer positions of KL(p_model ‖ p_base), the base's log-probabilities at those positions given
    /// per batch by <paramref name="baseAt"/> (batch index, batch, device, the answer positions' indices).</summary>
    static KlResult Sum(CausalLM model, IReadOnlyList<TokenizedExample> rows, int batch, Func<int, Batch, Device, Tensor, Tensor> baseAt)
    {
        double sum = 0;
        long count = 0;
        Batches(model, rows, batch, (i, b, device, mask) =>
        {
            var answers = mask.nonzero().squeeze(1);
            var pm = LogProbs(model, b).index_select(0, answers);
            var pb = baseAt(i, b, device, answers);
            if (pb.shape[0] != pm.shape[0] || pb.shape[1] != pm.shape[1])
                throw new ArgumentException($"KL to the base: batch {i} has {pm.shape[0]} × {pm.shape[1]} answer log-probabilities, the base {pb.shape[0]} × {pb.shape[1]}");
            var kl = (pm.exp() * (pm - pb)).sum(-1);
            sum += kl.to(ScalarType.Float64).sum().item<double>();
            count += pm.shape[0];
        });
        return new KlResult(sum / count, count, rows.Count);
    }

    /// <summary>The rows in batches (longest first, padded), each in a dispose scope under no_grad and eval mode: (batch
    /// index, batch, the model's device, the mask of answer positions among the predicting ones).</summary>
    static void Batches(CausalLM model, IReadOnlyList<TokenizedExample> rows, int batch, Action<int, Batch, Device, Tensor> body)
    {
        using var mode = model.Module.EvalMode();
        using var _ = no_grad();
        int pad = model.Tokenizer.EosId ?? 0;
        var sorted = rows.OrderByDescending(r => r.InputIds.Length).ToList();
        for (int i = 0; i * batch < sorted.Count; i++)
        {
            using var scope = NewDisposeScope();
            using var b = Tokenized.Pad(sorted.Skip(i * batch).Take(batch).ToList(), pad);
            var device = model.Module.Device;
            body(i, b, device, AnswerMask(b, device));
        }
    }

    static Tensor AnswerMask(Batch b, Device device) => b.Labels[.., 1..].reshape(-1).to(device).ne(Tokenized.Ignore);

    /// <summary>float32 log-softmax of the logits at every predicting position of a batch, [positions, vocabulary].</summary>
    static Tensor LogProbs(CausalLM model, Batch b)
    {
        var logits = model.Logits(b.InputIds, b.AttentionMask);
        long v = logits.shape[^1];
        return nn.functional.log_softmax(logits[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32), -1);
    }
}
