using MoFO.Data;
using MoFO.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace MoFO.Evaluation;

/// <summary>Held-out fine-tuning performance, teacher-forced: the mean token NLL of the answer tokens (the trainer's
/// held-out loss) and the fraction of answer tokens the model predicts greedily (top-1) — the task measure a tiny model
/// can show where exact-match accuracy stays at zero.</summary>
public sealed record TaskFit(double MeanTokenNll, double TokenAccuracy, long Tokens, int Examples);

public static class TaskMetrics
{
    /// <summary>Scores examples with the same tokenization and label masking as training (<see cref="Tokenized.Encode"/>,
    /// truncated to <paramref name="maxLength"/>); examples with no answer token inside the window are skipped.</summary>
    public static TaskFit Fit(CausalLM model, IReadOnlyList<TrainingExample> examples, int maxLength = 512, int batch = 16)
    {
        if (examples.Count == 0) throw new ArgumentException("TaskMetrics.Fit: no held-out examples");
        var rows = examples.Select(e => Tokenized.Encode(e, model.Tokenizer, Math.Min(maxLength, model.MaxSequenceLength)))
            .Where(t => t.TrainedTokens > 0).ToList();
        if (rows.Count == 0) throw new ArgumentException($"TaskMetrics.Fit: none of the {examples.Count} examples keeps an answer token within {maxLength} tokens");
        using var mode = model.Module.EvalMode();
        using var _ = no_grad();
        double nll = 0; long correct = 0, count = 0;
        int pad = model.Tokenizer.EosId ?? 0;
        // Longest first so that a batch pads little.
        rows.Sort((a, b) => b.InputIds.Length.CompareTo(a.InputIds.Length));
        for (int i = 0; i < rows.Count; i += batch)
        {
            using var scope = NewDisposeScope();
            using var b = Tokenized.Pad(rows.Skip(i).Take(batch).ToList(), pad);
            var logits = model.Logits(b.InputIds, b.AttentionMask);
            var v = logits.shape[^1];
            var shifted = logits[.., ..^1, ..].reshape(-1, v).to(ScalarType.Float32);
            var labels = b.Labels[.., 1..].reshape(-1).to(logits.device);
            var mask = labels.ne(Tokenized.Ignore);
            count += mask.sum().item<long>();
            nll += nn.functional.cross_entropy(shifted, labels, ignore_index: Tokenized.Ignore, reduction: nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
            correct += shifted.argmax(-1).eq(labels).logical_and(mask).sum().item<long>();
        }
        return new TaskFit(nll / count, (double)correct / count, count, rows.Count);
    }
}
