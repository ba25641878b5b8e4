using MoFO.Data;

namespace MoFO.Evaluation;

/// <summary>
/// MMLU in lm-evaluation-harness's default form: per subject the description "The following are multiple choice
/// questions (with answers) about {subject}.\n\n", the item "{question}\nA. …\nB. …\nC. …\nD. …\nAnswer:", choices
/// " A" … " D", few-shot examples the first k of the subject's dev split. Reads both CSV layouts: the original
/// release (no header; question, four choices, answer letter) and a header <c>question,choice0..choice3,answer</c>
/// with a 0-based answer index.
/// </summary>
public static class Mmlu
{
    public static readonly string[] Letters = ["A", "B", "C", "D"];

    /// <summary>The subject of a file named <c>{subject}_{split}.csv</c>.</summary>
    public static string SubjectOf(string path)
    {
        var name = Path.GetFileNameWithoutExtension(path);
        foreach (var split in new[] { "_test", "_dev", "_val" })
            if (name.EndsWith(split, StringComparison.Ordinal)) return name[..^split.Length];
        return name;
    }

    public static string Description(string subject) =>
        $"The following are multiple choice questions (with answers) about {subject.Replace('_', ' ')}.\n\n";

    public static string FormatQuestion(string question, IReadOnlyList<string> choices) =>
        question.Trim() + string.Concat(choices.Select((c, i) => $"\n{Letters[i]}. {c}")) + "\nAnswer:";

    /// <summary>Reads one subject's CSV file.</summary>
    public static List<McItem> ReadFile(string path)
    {
        var subject = SubjectOf(path);
        var items = new List<McItem>();
        bool first = true, headerLayout = false;
        foreach (var (line, f) in Csv.Read(path))
        {
            if (first)
            {
                first = false;
                if (f.Length > 0 && f[0].Trim().Equals("question", StringComparison.OrdinalIgnoreCase))
                {
                    headerLayout = true;
                    if (f.Length != 6) throw new DataFormatException(path, line, $"header has {f.Length} columns; expected question,choice0,choice1,choice2,choice3,answer");
                    continue;
                }
            }
            if (f.Length != 6)
                throw new DataFormatException(path, line, $"{f.Length} fields; expected 6 (question, four choices, answer)");
            var answer = f[5].Trim();
            int gold;
            if (headerLayout)
            {
                if (!int.TryParse(answer, out gold) || gold < 0 || gold > 3)
                    throw new DataFormatException(path, line, $"answer '{answer}' must be a 0-based index 0..3 in this layout");
            }
            else
            {
                gold = Array.IndexOf(Letters, answer.ToUpperInvariant());
                if (gold < 0) throw new DataFormatException(path, line, $"answer '{answer}' must be one of A, B, C, D");
            }
            var choices = f[1..5];
            items.Add(new McItem($"{Path.GetFileNameWithoutExtension(path)}/{items.Count}", FormatQuestion(f[0], choices), Letters, gold, Description(subject), subject));
        }
        return items;
    }

    /// <summary>All subjects of a split folder (e.g. <c>mmlu/test</c>), sorted by subject.</summary>
    public static List<McItem> ReadSplit(string folder, IReadOnlyCollection<string>? subjects = null)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"{folder}: MMLU split folder not found (expected {{subject}}_{{split}}.csv files)");
        var files = Directory.GetFiles(folder, "*.csv").OrderBy(f => f, StringComparer.Ordinal).ToList();
        if (files.Count == 0) throw new DataFormatException(folder, null, "no .csv files (expected {subject}_{split}.csv)");
        return files.Where(f => subjects is null || subjects.Contains(SubjectOf(f))).SelectMany(ReadFile).ToList();
    }

    /// <summary>An evaluator over the test split with k shots from the dev split (first k per subject).</summary>
    public static McSummary Evaluate(Models.ILanguageModel model, string root, int shots, int? limit, ConsoleProgress? progress = null)
    {
        var test = ReadSplit(Path.Combine(root, "test"));
        if (limit is int n) test = LimitPerGroup(test, n);
        Dictionary<string, List<McItem>> dev = new();
        if (shots > 0)
            dev = ReadSplit(Path.Combine(root, "dev")).GroupBy(i => i.Group).ToDictionary(g => g.Key, g => g.ToList());
        var evaluator = new MultipleChoiceEvaluator { Shots = shots, Sampler = FewShotSampler.FirstN };
        return evaluator.Evaluate(model, "mmlu", test,
            item => dev.TryGetValue(item.Group, out var pool) ? pool : throw new DataFormatException(Path.Combine(root, "dev"), null, $"no dev examples for subject '{item.Group}'"),
            progress);
    }

    /// <summary>The first n items of every group: a limit that keeps all subjects represented.</summary>
    public static List<McItem> LimitPerGroup(IEnumerable<McItem> items, int n) =>
        items.GroupBy(i => i.Group).SelectMany(g => g.Take(n)).ToList();
}
