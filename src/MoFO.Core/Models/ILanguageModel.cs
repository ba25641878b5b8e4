namespace MoFO.Models;

/// <summary>One multiple-choice / log-likelihood request: the log-probability of <see cref="Continuation"/> given
/// <see cref="Context"/> (lm-evaluation-harness's <c>loglikelihood</c>). The context is tokenized with the model's BOS
/// handling; the continuation's tokens are those that the concatenated text adds after the context's tokens.</summary>
public sealed record LogLikelihoodRequest(string Context, string Continuation);

/// <summary>Sum of the continuation tokens' log-probabilities, the number of those tokens, and whether every
/// continuation token was the greedy (argmax) choice.</summary>
public sealed record LogLikelihoodResult(double LogLikelihood, int TokenCount, bool IsGreedy);

/// <summary>Options of text generation. Temperature 0 means greedy decoding; otherwise temperature and nucleus (top-p)
/// sampling from a generator seeded with <see cref="Seed"/>. Generation stops at EOS, after <see cref="MaxNewTokens"/>
/// tokens, or at the first occurrence of any stop string (which is cut from the returned text).</summary>
public sealed record GenerationOptions(
    int MaxNewTokens = 256,
    double Temperature = 0.0,
    double TopP = 1.0,
    long Seed = 0,
    IReadOnlyList<string>? StopStrings = null);

/// <summary>
/// The text-level interface that the evaluation harnesses and the trainer's reports use: what a model can be asked
/// given text in and text out (after lm-evaluation-harness's <c>LM</c> class). Implementations batch internally.
/// </summary>
public interface ILanguageModel
{
    /// <summary>A short name for reports (e.g. the checkpoint's file or folder name).</summary>
    string Name { get; }

    /// <summary>The longest token sequence the model accepts; longer inputs are truncated from the left.</summary>
    int MaxSequenceLength { get; }

    /// <summary>Log-likelihoods of continuations given contexts, in the order of the requests.</summary>
    IReadOnlyList<LogLikelihoodResult> LogLikelihoods(IReadOnlyList<LogLikelihoodRequest> requests);

    /// <summary>Continuations of the prompts (without the prompt), in the order of the prompts. Sampling with
    /// the same options and seed gives the same texts.</summary>
    IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, GenerationOptions options);

    /// <summary>Token-level log-likelihood of whole texts (each starting from the model's prefix token, usually BOS;
    /// lm-evaluation-harness's <c>loglikelihood_rolling</c>): the sum of log-probabilities and the number of predicted
    /// tokens per text.</summary>
    IReadOnlyList<LogLikelihoodResult> TextLogLikelihoods(IReadOnlyList<string> texts);
}
