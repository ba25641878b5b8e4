namespace MoFO;

/// <summary>A real asset that the project reads from the data root (see shared/data/SOURCES.md).</summary>
public sealed record Asset(string RelativePath, string Description)
{
    public string FullPath => Path.Combine(DataRoot.Path, RelativePath);
    public bool Present => File.Exists(FullPath) || Directory.Exists(FullPath);
}

/// <summary>Raised when a real asset is missing under the data root; its message is one line that says what to do.</summary>
public sealed class MissingAssetException(string message, string? remedy = null) : FileNotFoundException(message), IRemedy
{
    /// <summary>The option that would point to the asset (e.g. <c>DataRoot</c>, <c>tokenizerPath</c>), or null.</summary>
    public string? Remedy { get; } = remedy;
}

/// <summary>
/// The one configurable root of the real models, tokenizers and datasets. Resolution order: <see cref="Override"/>
/// (the CLI's <c>--data-root</c>), the environment variable <c>MOFO_DATA</c>, then <c>../shared/data</c> relative to the
/// repository root (the folder holding <c>MoFO.sln</c>, searched upwards from the current directory and from this
/// assembly's folder).
/// </summary>
public static class DataRoot
{
    public const string EnvironmentVariable = "MOFO_DATA";

    /// <summary>Set by the caller (the CLI's data-root flag); takes precedence over the environment.</summary>
    public static string? Override { get; set; }

    public static string Path => Resolve().Path;

    /// <summary>Where the root came from: "DataRoot.Override", "MOFO_DATA" or "default (../shared/data beside the repository)".</summary>
    public static string Source => Resolve().Source;

    static (string Path, string Source) Resolve()
    {
        if (!string.IsNullOrWhiteSpace(Override)) return (System.IO.Path.GetFullPath(Override), "DataRoot.Override");
        var env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return (System.IO.Path.GetFullPath(env), EnvironmentVariable);
        var repo = RepositoryRoot();
        var root = repo is null
            ? System.IO.Path.GetFullPath(System.IO.Path.Combine("..", "shared", "data"))
            : System.IO.Path.GetFullPath(System.IO.Path.Combine(repo, "..", "shared", "data"));
        return (root, "default (../shared/data beside the repository)");
    }

    /// <summary>The repository root (the folder with MoFO.sln) above the current directory or this assembly, or null.</summary>
    public static string? RepositoryRoot()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory, System.IO.Path.GetDirectoryName(typeof(DataRoot).Assembly.Location) })
        {
            for (var d = string.IsNullOrEmpty(start) ? null : new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(System.IO.Path.Combine(d.FullName, "MoFO.sln"))) return d.FullName;
        }
        return null;
    }

    /// <summary>The full path of an asset, or a <see cref="MissingAssetException"/> naming the path and how to set the root.</summary>
    public static string Require(string relativePath)
    {
        var full = System.IO.Path.Combine(Path, relativePath);
        if (File.Exists(full) || Directory.Exists(full)) return full;
        throw new MissingAssetException(MissingMessage(full), remedy: "DataRoot");
    }

    public static string Require(Asset asset) => Require(asset.RelativePath);

    public static string MissingMessage(string fullPath) =>
        $"missing asset: {fullPath} (data root {Path}, from {Source}); set {EnvironmentVariable}=/path/to/data or DataRoot.Override";

    /// <summary>The real assets listed in shared/data/SOURCES.md.</summary>
    public static class Assets
    {
        public static readonly Asset Stories260K = new("models/stories260K/stories260K.bin", "stories260K llama2.c checkpoint");
        public static readonly Asset Tok512 = new("models/stories260K/tok512.model", "stories260K SentencePiece tokenizer");
        public static readonly Asset Llama2Tokenizer = new("tokenizers/llama2/tokenizer.model", "Llama-2 SentencePiece tokenizer");
        public static readonly Asset HumanEval = new("benchmarks/humaneval/HumanEval.jsonl.gz", "HumanEval, 164 problems");
        public static readonly Asset Gsm8kTrain = new("benchmarks/gsm8k/train.jsonl", "GSM8K train");
        public static readonly Asset Gsm8kTest = new("benchmarks/gsm8k/test.jsonl", "GSM8K test");
        public static readonly Asset MmluTest = new("benchmarks/mmlu/test", "MMLU test CSVs");
        public static readonly Asset MmluDev = new("benchmarks/mmlu/dev", "MMLU dev CSVs");
        public static readonly Asset ArcEasy = new("benchmarks/arc/arc_easy/test.jsonl", "ARC-Easy test");
        public static readonly Asset ArcChallenge = new("benchmarks/arc/arc_challenge/test.jsonl", "ARC-Challenge test");
        public static readonly Asset MetaMathQA = new("finetune/metamathqa/metamathqa_val_dataset.jsonl", "MetaMathQA subset (Tulu messages)");
        public static readonly Asset CodeAlpaca = new("finetune/code_alpaca/code_alpaca_2k.json", "Code-Alpaca 2k");
        public static readonly Asset DprTrain = new("finetune/definite_pronoun_resolution/train.c.txt", "DPR train");
        public static readonly Asset DprTest = new("finetune/definite_pronoun_resolution/test.c.txt", "DPR test");

        public static IReadOnlyList<Asset> All { get; } =
        [
            Stories260K, Tok512, Llama2Tokenizer, HumanEval, Gsm8kTrain, Gsm8kTest, MmluTest, MmluDev,
            ArcEasy, ArcChallenge, MetaMathQA, CodeAlpaca, DprTrain, DprTest,
        ];
    }
}
