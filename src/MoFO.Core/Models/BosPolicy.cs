namespace MoFO.Models;

/// <summary>Whether the harness's requests start with BOS (<see cref="CausalLM.BosPolicy"/>): the tokenizer's default
/// (as current lm-evaluation-harness does), always, or never (as lm-evaluation-harness 0.4.2 does for causal models,
/// the version of published numbers such as the MoFO paper's).</summary>
public enum BosPolicy
{
    /// <summary>The tokenizer's default (<see cref="Tokenization.ITextTokenizer.AddsBosByDefault"/>): BOS for Llama's
    /// SentencePiece, none for GPT-NeoX. Empty contexts and whole texts start from BOS, else EOS.</summary>
    Auto,

    /// <summary>BOS before every context, prompt and text (when the vocabulary has one).</summary>
    Always,

    /// <summary>No BOS added to a non-empty context or prompt; an empty context and a whole text start from EOS
    /// (else BOS), the prefix token of lm-evaluation-harness 0.4.2.</summary>
    Never,
}
