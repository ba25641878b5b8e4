namespace MoFO;

/// <summary>
/// A bad value of a named option of the Core API (a field of <c>TrainingOptions</c>, a parameter of a loader, …). The
/// message names the field, the value and the expected form; <see cref="Field"/> lets a front end (the CLI) add the
/// spelling its users type, so Core never names a command-line flag.
/// </summary>
public class OptionException : ArgumentException
{
    readonly string _message;

    public OptionException(string field, string message, Exception? inner = null) : base(message, field, inner)
    {
        _message = message;
        Field = field;
    }

    /// <summary>The Core name of the option (e.g. <c>LearningRate</c>, <c>Method</c>).</summary>
    public string Field { get; }

    /// <summary>The message alone (without ArgumentException's "(Parameter '…')" suffix).</summary>
    public override string Message => _message;
}

/// <summary>
/// An error that a named option of the Core API would avoid (e.g. <c>resume</c> for a folder that holds a
/// checkpoint, <c>skipEmpty</c> for a record without an answer). Exceptions that carry such a remedy implement this,
/// so a front end can name the option as its users spell it.
/// </summary>
public interface IRemedy
{
    /// <summary>The Core name of the option that avoids the error, or null.</summary>
    string? Remedy { get; }
}

/// <summary>A run folder that cannot be used as asked: it already holds a checkpoint (<see cref="Remedy"/>
/// <c>Resume</c>), or it has none to resume from.</summary>
public sealed class RunFolderException(string message, string? remedy = null) : InvalidOperationException(message), IRemedy
{
    public string? Remedy { get; } = remedy;
}
