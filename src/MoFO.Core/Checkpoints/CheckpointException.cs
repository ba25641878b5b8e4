namespace MoFO.Checkpoints;

/// <summary>A checkpoint, config or tokenizer file that cannot be used. The message names the file, the tensor or field,
/// and the expected form.</summary>
public sealed class CheckpointException(string message, Exception? inner = null) : Exception(message, inner)
{
    public static CheckpointException For(string file, string what, string problem) =>
        new($"{file}: {what}: {problem}");
}
