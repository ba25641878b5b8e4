namespace MoFO.Data;

/// <summary>
/// One multiple-choice item: a context (the formatted question), the choice continuations (without the target
/// delimiter), the index of the correct one, and an optional description line that precedes the few-shot block
/// (MMLU's subject line). <see cref="Group"/> groups items for per-group accuracies (MMLU subjects).
/// </summary>
public sealed record McItem(string Id, string Context, IReadOnlyList<string> Choices, int Gold, string Description = "", string Group = "")
{
    /// <summary>The choice that completes the item correctly (for few-shot examples).</summary>
    public string GoldChoice => Choices[Gold];
}
