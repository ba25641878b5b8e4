namespace MoFO.Data;

/// <summary>A piece of an example's text; <see cref="Train"/> says whether its tokens carry loss (answers do, prompts
/// do not). <see cref="EndOfSequence"/> appends the tokenizer's EOS token after the text (trained with the segment).</summary>
public sealed record Segment(string Text, bool Train, bool EndOfSequence = false);

/// <summary>One training example: its segments in order, and where it came from (for error messages).</summary>
public sealed record TrainingExample(IReadOnlyList<Segment> Segments, string Source)
{
    /// <summary>A prompt (no loss) followed by a completion (loss), optionally ended by EOS.</summary>
    public static TrainingExample PromptCompletion(string prompt, string completion, string source, bool eos = true) =>
        new([new Segment(prompt, false), new Segment(completion, true, eos)], source);

    public string Text => string.Concat(Segments.Select(s => s.Text));

    /// <summary>The text of the segments that carry no loss, up to the first trained one.</summary>
    public string Prompt => string.Concat(Segments.TakeWhile(s => !s.Train).Select(s => s.Text));

    /// <summary>The text from the first trained segment on.</summary>
    public string Completion => string.Concat(Segments.SkipWhile(s => !s.Train).Select(s => s.Text));
}

/// <summary>One message of a conversation (Tulu <c>messages</c> format).</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>
/// The Tulu chat template of the MoFO authors' training code (open-instruct): each message is
/// <c>&lt;|system|&gt;\n…\n</c>, <c>&lt;|user|&gt;\n…\n</c> or <c>&lt;|assistant|&gt;\n…&lt;/s&gt;\n</c> with the
/// content stripped, where &lt;/s&gt; is the tokenizer's EOS token. Loss falls on the assistant contents and their EOS
/// only; the role headers, user and system messages are masked.
/// </summary>
public static class TuluTemplate
{
    public static TrainingExample Render(IReadOnlyList<ChatMessage> messages, string source)
    {
        if (messages.Count == 0) throw new DataFormatException(source, null, "a conversation without messages");
        if (!messages.Any(m => m.Role == "assistant")) throw new DataFormatException(source, null, "no assistant message: nothing to train on");
        var segments = new List<Segment>();
        var prompt = new System.Text.StringBuilder();
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system": prompt.Append("<|system|>\n").Append(m.Content.Trim()).Append('\n'); break;
                case "user": prompt.Append("<|user|>\n").Append(m.Content.Trim()).Append('\n'); break;
                case "assistant":
                    var answer = m.Content.Trim();
                    if (answer.Length == 0) throw new DataFormatException(source, null, "an empty assistant message");
                    prompt.Append("<|assistant|>\n");
                    segments.Add(new Segment(prompt.ToString(), false));
                    prompt.Clear();
                    segments.Add(new Segment(answer, true, EndOfSequence: true));
                    prompt.Append('\n');
                    break;
                default:
                    throw new DataFormatException(source, null, $"unknown role \"{m.Role}\" (expected system, user or assistant)");
            }
        }
        // The trailing "\n" after the last EOS carries no information; drop it.
        if (prompt.Length > 0 && prompt.ToString() != "\n") segments.Add(new Segment(prompt.ToString(), false));
        return new TrainingExample(segments, source);
    }

    /// <summary>The prompt that asks the model for a reply to a single user message.</summary>
    public static string UserPrompt(string user) => $"<|user|>\n{user.Trim()}\n<|assistant|>\n";
}
