namespace MoFO.Data;

/// <summary>One record of Rahman and Ng's definite pronoun resolution data.</summary>
public sealed record DprRecord(string Sentence, string Pronoun, string Candidate1, string Candidate2, string Answer, int Line)
{
    /// <summary>0 when the answer is the first candidate, 1 when the second.</summary>
    public int Gold => Answer == Candidate1 ? 0 : 1;
}

/// <summary>
/// The DPR data (the source of FLAN's <c>definite_pronoun_resolution</c>): blank-line-separated records of four lines
/// — sentence, pronoun, the two candidates separated by a comma, the correct candidate — rendered with several
/// FLAN-style instruction templates (like FLAN's "10templates": each example gets one; the answer is the candidate's
/// text). Template 0 is the prompt of DESIGN.md's pilot.
/// </summary>
public static class Dpr
{
    /// <summary>Prompt templates: {sentence}, {pronoun}, {c1}, {c2}; the completion is " " + the answer.</summary>
    public static readonly IReadOnlyList<string> Templates =
    [
        "Sentence: {sentence}\nWho does \"{pronoun}\" refer to? Options: {c1} or {c2}.\nAnswer:",
        "{sentence}\n\nWho is \"{pronoun}\" in the prior sentence?\nOPTIONS:\n- {c1}\n- {c2}\nAnswer:",
        "{sentence}\nWho is {pronoun} referring to, {c1} or {c2}?\nAnswer:",
        "Read the sentence and say who \"{pronoun}\" is.\n{sentence}\nOptions: {c1}, {c2}\nAnswer:",
        "In \"{sentence}\", does \"{pronoun}\" mean {c1} or {c2}?\nAnswer:",
        "Resolve the pronoun.\nSentence: {sentence}\nPronoun: {pronoun}\nCandidates: {c1}, {c2}\nAnswer:",
    ];

    public static List<DprRecord> Read(string path)
    {
        var lines = TextFiles.ReadAllLines(path);
        var records = new List<DprRecord>();
        int i = 0;
        while (i < lines.Length)
        {
            while (i < lines.Length && lines[i].Trim().Length == 0) i++;
            if (i >= lines.Length) break;
            int start = i;
            var block = new List<string>();
            while (i < lines.Length && lines[i].Trim().Length > 0) block.Add(lines[i++].Trim());
            if (block.Count != 4)
                throw new DataFormatException(path, start + 1, $"a record has {block.Count} lines; expected 4 (sentence, pronoun, \"candidate1,candidate2\", answer)");
            var cands = block[2].Split(',');
            if (cands.Length != 2)
                throw new DataFormatException(path, start + 3, $"candidates \"{block[2]}\" must be two names separated by one comma");
            var c1 = cands[0].Trim();
            var c2 = cands[1].Trim();
            if (block[3] != c1 && block[3] != c2)
                throw new DataFormatException(path, start + 4, $"answer \"{block[3]}\" is neither candidate ({c1}, {c2})");
            records.Add(new DprRecord(block[0], block[1], c1, c2, block[3], start + 1));
        }
        if (records.Count == 0) throw new DataFormatException(path, null, "no records");
        return records;
    }

    public static string Prompt(DprRecord r, int template)
    {
        if (template < 0 || template >= Templates.Count)
            throw new ArgumentException($"DPR template {template} does not exist (0..{Templates.Count - 1})");
        return Templates[template].Replace("{sentence}", r.Sentence).Replace("{pronoun}", r.Pronoun).Replace("{c1}", r.Candidate1).Replace("{c2}", r.Candidate2);
    }

    public static TrainingExample Render(DprRecord r, int template) =>
        TrainingExample.PromptCompletion(Prompt(r, template), " " + r.Answer, $"DPR line {r.Line}");

    /// <summary>DPR as a two-choice task (for accuracy): the prompt of a template, the candidates as choices.</summary>
    public static List<McItem> AsMultipleChoice(IEnumerable<DprRecord> records, int template = 0) =>
        records.Select(r => new McItem($"dpr/{r.Line}", Prompt(r, template), [r.Candidate1, r.Candidate2], r.Gold)).ToList();
}
