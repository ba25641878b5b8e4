using System.Text.Json;

namespace MoFO.Data;

/// <summary>The public formats of fine-tuning data that <see cref="InstructionData.Read"/> understands.</summary>
public enum DataFormat
{
    /// <summary>jsonl of <c>{messages: [{role, content}]}</c> (Tulu; MetaMathQA as the MoFO authors ship it).</summary>
    Tulu,
    /// <summary>a JSON array (or jsonl) of <c>{instruction, input, output}</c> (Alpaca, Code-Alpaca), as one user turn and one assistant turn.</summary>
    Alpaca,
    /// <summary>GSM8K jsonl <c>{question, answer}</c>, rendered as the evaluation prompt "Question: …\nAnswer:" + " " + answer.</summary>
    Gsm8k,
    /// <summary>the DPR records (sentence, pronoun, "cand1,cand2", answer), rendered with FLAN-style templates.</summary>
    Dpr,
    /// <summary>a TRACE task folder (train.json, eval.json, test.json: lists of <c>{prompt, answer}</c>) or one of its files.</summary>
    Trace,
    /// <summary>jsonl of <c>{prompt, completion}</c> (also <c>response</c> or <c>answer</c> for the completion).</summary>
    Jsonl,
}

/// <summary>Readers of fine-tuning data; every malformed record is an error naming the file and line.</summary>
public static class InstructionData
{
    public static DataFormat ParseFormat(string name) => name.ToLowerInvariant() switch
    {
        "tulu" => DataFormat.Tulu,
        "alpaca" => DataFormat.Alpaca,
        "gsm8k" => DataFormat.Gsm8k,
        "dpr" => DataFormat.Dpr,
        "trace" => DataFormat.Trace,
        "jsonl" => DataFormat.Jsonl,
        _ => throw new OptionException("Format", $"Format {name}: unknown data format (expected tulu, alpaca, gsm8k, dpr, trace or jsonl)"),
    };

    /// <summary>Reads the training examples of a file (or, for TRACE, a task folder's split).</summary>
    /// <param name="skipEmpty">drop records whose answer is empty instead of failing on them (Code-Alpaca has two).</param>
    public static List<TrainingExample> Read(string path, DataFormat format, string split = "train", int dprTemplate = -1, bool skipEmpty = false)
    {
        if (format != DataFormat.Trace && !File.Exists(path))
            throw new FileNotFoundException($"{Path.GetFullPath(path)}: data file not found", path);
        if (path.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase)) return ReadParquet(path, format, skipEmpty);
        return format switch
        {
            DataFormat.Tulu => ReadTulu(path, skipEmpty),
            DataFormat.Alpaca => ReadAlpaca(path, skipEmpty),
            DataFormat.Gsm8k => Gsm8kData.Read(path)
                .Select(g => TrainingExample.PromptCompletion(Gsm8kData.FormatQuestion(g.Question), " " + g.Answer, g.Id)).ToList(),
            DataFormat.Dpr => Dpr.Read(path).Select((r, i) => Dpr.Render(r, dprTemplate >= 0 ? dprTemplate : i % Dpr.Templates.Count)).ToList(),
            DataFormat.Trace => ReadTrace(path, split, skipEmpty),
            DataFormat.Jsonl => ReadPromptCompletion(path, skipEmpty),
            _ => throw new ArgumentOutOfRangeException(nameof(format)),
        };
    }

    public static List<TrainingExample> ReadTulu(string path, bool skipEmpty = false)
    {
        var list = new List<TrainingExample>();
        foreach (var l in JsonLines.Read(path))
        {
            var msgs = l.Field("messages");
            if (msgs.ValueKind != JsonValueKind.Array) throw l.Error("field \"messages\" must be an array of {role, content}");
            var messages = new List<ChatMessage>();
            foreach (var m in msgs.EnumerateArray())
            {
                if (m.ValueKind != JsonValueKind.Object || !m.TryGetProperty("role", out var role) || !m.TryGetProperty("content", out var content)
                    || role.ValueKind != JsonValueKind.String || content.ValueKind != JsonValueKind.String)
                    throw l.Error("each message must be an object with string fields \"role\" and \"content\"");
                messages.Add(new ChatMessage(role.GetString()!, content.GetString()!));
            }
            if (skipEmpty && messages.Any(m => m.Role == "assistant" && m.Content.Trim().Length == 0)) continue;
            try { list.Add(TuluTemplate.Render(messages, $"{path}:{l.Line}")); }
            catch (DataFormatException e) { throw l.Error(e.Message[(e.File.Length + 2)..]); }
        }
        return NonEmpty(list, path);
    }

    public static List<TrainingExample> ReadAlpaca(string path, bool skipEmpty = false)
    {
        IEnumerable<(int Line, JsonElement Value)> records;
        var text = TextFiles.ReadAllText(path).TrimStart();
        if (text.StartsWith('['))
        {
            JsonDocument doc;
            try { doc = JsonDocument.Parse(text); }
            catch (JsonException e) { throw new DataFormatException(path, (int?)(e.LineNumber + 1), $"not valid JSON ({e.Message})", e); }
            records = doc.RootElement.EnumerateArray().Select((v, i) => (i, v.Clone())).ToList();
            doc.Dispose();
        }
        else records = JsonLines.Read(path).Select(l => (l.Line, l.Value));
        var list = new List<TrainingExample>();
        bool array = text.StartsWith('[');
        foreach (var (pos, v) in records)
        {
            string where = array ? $"record {pos}" : $"line {pos}";
            string Field(string name, bool required)
            {
                if (v.ValueKind != JsonValueKind.Object) throw new DataFormatException(path, array ? null : pos, $"{where}: expected an object {{instruction, input, output}}");
                if (!v.TryGetProperty(name, out var f))
                {
                    if (required) throw new DataFormatException(path, array ? null : pos, $"{where}: missing field \"{name}\"");
                    return "";
                }
                if (f.ValueKind != JsonValueKind.String) throw new DataFormatException(path, array ? null : pos, $"{where}: field \"{name}\" must be a string");
                return f.GetString()!;
            }
            var instruction = Field("instruction", true);
            var input = Field("input", false);
            var output = Field("output", true);
            if (output.Trim().Length == 0)
            {
                if (skipEmpty) continue;
                throw new DataFormatException(path, array ? null : pos, $"{where}: empty \"output\" (skipEmpty drops records without an answer)").WithRemedy("skipEmpty");
            }
            var user = input.Trim().Length > 0 ? instruction.Trim() + "\n\n" + input.Trim() : instruction.Trim();
            list.Add(TuluTemplate.Render([new ChatMessage("user", user), new ChatMessage("assistant", output)], $"{path} {where}"));
        }
        return NonEmpty(list, path);
    }

    public static List<TrainingExample> ReadPromptCompletion(string path, bool skipEmpty = false)
    {
        var list = new List<TrainingExample>();
        foreach (var l in JsonLines.Read(path))
        {
            var prompt = l.String("prompt");
            var field = new[] { "completion", "response", "answer" }.FirstOrDefault(l.Has)
                ?? throw l.Error("missing the completion: expected a string field \"completion\", \"response\" or \"answer\"");
            var completion = l.String(field);
            if (completion.Length == 0)
            {
                if (skipEmpty) continue;
                throw l.Error($"empty \"{field}\" (skipEmpty drops records without an answer)").WithRemedy("skipEmpty");
            }
            list.Add(TrainingExample.PromptCompletion(prompt, completion, $"{path}:{l.Line}"));
        }
        return NonEmpty(list, path);
    }

    /// <summary>A TRACE split: <c>{folder}/{split}.json</c>, a JSON list of <c>{prompt, answer}</c>.</summary>
    public static List<TrainingExample> ReadTrace(string path, string split, bool skipEmpty = false)
    {
        var file = Directory.Exists(path) ? Path.Combine(path, split + ".json") : path;
        if (!File.Exists(file)) throw new FileNotFoundException($"{Path.GetFullPath(file)}: TRACE split not found (a task folder holds train.json, eval.json and test.json)", file);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(TextFiles.ReadAllText(file)); }
        catch (JsonException e) { throw new DataFormatException(file, (int?)(e.LineNumber + 1), $"not valid JSON ({e.Message})", e); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new DataFormatException(file, null, "expected a JSON list of {prompt, answer}");
        var list = new List<TrainingExample>();
        int i = 0;
        foreach (var v in doc.RootElement.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Object || !v.TryGetProperty("prompt", out var p) || !v.TryGetProperty("answer", out var a)
                || p.ValueKind != JsonValueKind.String || a.ValueKind != JsonValueKind.String)
                throw new DataFormatException(file, null, $"record {i}: expected string fields \"prompt\" and \"answer\"");
            if (a.GetString()!.Length == 0)
            {
                if (skipEmpty) { i++; continue; }
                throw new DataFormatException(file, null, $"record {i}: empty \"answer\" (skipEmpty drops records without an answer)").WithRemedy("skipEmpty");
            }
            list.Add(TrainingExample.PromptCompletion(p.GetString()!, a.GetString()!, $"{file} record {i}"));
            i++;
        }
        return NonEmpty(list, file);
    }

    /// <summary>Parquet files (HF datasets): tulu reads a <c>messages</c> column; alpaca instruction/input/output;
    /// gsm8k question/answer; jsonl prompt/completion (or response/answer).</summary>
    public static List<TrainingExample> ReadParquet(string path, DataFormat format, bool skipEmpty = false)
    {
        var list = new List<TrainingExample>();
        if (format == DataFormat.Tulu)
        {
            var convs = ParquetData.ReadMessages(path);
            for (int i = 0; i < convs.Count; i++)
            {
                if (skipEmpty && convs[i].Any(m => m.Role == "assistant" && m.Content.Trim().Length == 0)) continue;
                try { list.Add(TuluTemplate.Render(convs[i], $"{path} row {i}")); }
                catch (DataFormatException e) { throw new DataFormatException(path, null, $"row {i}: {e.Message[(e.File.Length + 2)..]}"); }
            }
            return NonEmpty(list, path);
        }
        var rows = ParquetData.ReadStringColumns(path);
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            string prompt, answer;
            switch (format)
            {
                case DataFormat.Alpaca:
                    var instruction = ParquetData.Field(row, path, i, "instruction");
                    var input = row.TryGetValue("input", out var inp) ? inp ?? "" : "";
                    answer = ParquetData.Field(row, path, i, "output");
                    prompt = input.Trim().Length > 0 ? instruction.Trim() + "\n\n" + input.Trim() : instruction.Trim();
                    if (answer.Trim().Length == 0) { if (skipEmpty) continue; throw new DataFormatException(path, null, $"row {i}: empty \"output\""); }
                    list.Add(TuluTemplate.Render([new ChatMessage("user", prompt), new ChatMessage("assistant", answer)], $"{path} row {i}"));
                    continue;
                case DataFormat.Gsm8k:
                    prompt = Gsm8kData.FormatQuestion(ParquetData.Field(row, path, i, "question"));
                    answer = " " + ParquetData.Field(row, path, i, "answer");
                    break;
                case DataFormat.Jsonl:
                    prompt = ParquetData.Field(row, path, i, "prompt");
                    answer = ParquetData.Field(row, path, i, "completion", "response", "answer");
                    break;
                default:
                    throw new ArgumentException($"{path}: format {format} is not read from parquet (tulu, alpaca, gsm8k and jsonl are)");
            }
            if (answer.Trim().Length == 0) { if (skipEmpty) continue; throw new DataFormatException(path, null, $"row {i}: empty answer"); }
            list.Add(TrainingExample.PromptCompletion(prompt, answer, $"{path} row {i}"));
        }
        return NonEmpty(list, path);
    }

    static List<TrainingExample> NonEmpty(List<TrainingExample> list, string path) =>
        list.Count > 0 ? list : throw new DataFormatException(path, null, "no examples");
}
