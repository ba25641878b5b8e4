/// What every reproduction shares: the scale (tiny, or paper with its config of paths), the recipes of each scale,
/// and the writing of a study's result (the output contract of DESIGN.md).
module MoFO.Dsl.Study

open System
open System.Diagnostics
open System.IO
open System.Text
open System.Text.Json
open MoFO
open MoFO.Training
open MoFO.Dsl.Results

/// A study's context: the script options, the scale with its paths, the evaluation settings.
type Ctx =
    { Options: Options
      Scale: Scale
      Settings: Settings
      Clock: Stopwatch }
    member c.Seed = c.Options.Seed
    member c.Smoke = c.Options.Smoke
    member c.IsTiny = match c.Scale with Scale.Tiny -> true | _ -> false

/// The keys of the paper-scale config file (JSON) and what each names.
let configKeys =
    [ "pythia160m", "Pythia-160m as an HF folder (config.json, model.safetensors, tokenizer.json)"
      "llama2_7b", "Llama-2-7B as an HF folder"
      "tinyllama", "TinyLlama-1.1B as an HF folder"
      "metamathqa", "the full MetaMathQA (395K; jsonl of Tulu messages or the original json)"
      "code_alpaca", "the full Code-Alpaca (20K; json)"
      "trace", "the TRACE benchmark folder (one sub-folder per task with train.json and test.json)"
      "hellaswag", "HellaSwag's public jsonl (hellaswag_val.jsonl)"
      "device", "cpu or cuda" ]

/// The default config: paper-repro/paper.json at the repository root.
let defaultConfig () =
    Path.Combine(defaultArg (Option.ofObj (DataRoot.RepositoryRoot())) (Directory.GetCurrentDirectory()), "paper-repro", "paper.json")

/// Reads the paper-scale config (a JSON object of the keys in `configKeys`; unknown keys are an error).
let readConfig (path: string) : PaperPaths =
    if not (File.Exists path) then
        let keys = String.Join(", ", configKeys |> List.map fst)
        raise (MissingAssetException $"{path}: the paper-scale config is missing. Write a JSON object with the paths of the paper's models and data (keys: {keys}; see paper-repro/README.md) and pass it with --config.")
    use doc = (try JsonDocument.Parse(File.ReadAllText path) with :? JsonException as e -> raise (MoFO.Data.DataFormatException(path, Nullable(), $"not valid JSON: {e.Message}")))
    if doc.RootElement.ValueKind <> JsonValueKind.Object then raise (MoFO.Data.DataFormatException(path, Nullable(), "expected a JSON object of paths"))
    let dir = Path.GetDirectoryName(Path.GetFullPath path)
    let mutable p = PaperPaths.Empty
    for prop in doc.RootElement.EnumerateObject() do
        if prop.Value.ValueKind <> JsonValueKind.String then raise (MoFO.Data.DataFormatException(path, Nullable(), $"field '{prop.Name}': expected a string path"))
        let v = prop.Value.GetString()
        let full = if prop.Name = "device" then v else Path.GetFullPath(Path.Combine(dir, v))
        p <-
            match prop.Name with
            | "pythia160m" -> { p with Pythia160m = Some full }
            | "llama2_7b" -> { p with Llama2_7b = Some full }
            | "tinyllama" -> { p with TinyLlama = Some full }
            | "metamathqa" -> { p with MetaMathQA = Some full }
            | "code_alpaca" -> { p with CodeAlpaca = Some full }
            | "trace" -> { p with Trace = Some full }
            | "hellaswag" -> { p with HellaSwag = Some full }
            | "device" -> { p with Device = Some v }
            | k ->
                let keys = String.Join(", ", configKeys |> List.map fst)
                raise (MoFO.Data.DataFormatException(path, Nullable(), $"unknown field '{k}' (expected one of {keys})"))
    p

/// The context of a script's options.
let context (o: Options) =
    let scale =
        match o.Scale with
        | "paper" -> Scale.Paper(readConfig (defaultArg o.Config (defaultConfig ())))
        | _ -> Scale.Tiny
    let settings =
        if o.Smoke then
            { Settings.Tiny with
                Limits = Map.ofList [ "arc_easy", 8; "arc_challenge", 8; "mmlu", 1; "gsm8k", 2; "humaneval", 2 ]
                Gsm8kMaxNewTokens = 16; HumanEvalMaxNewTokens = 16; Samples = 12; SampleTokens = 100; IntactPrompts = 4; IntactTokens = 16; TaskLimit = Some 16 }
        else Settings.Of scale
    { Options = o; Scale = scale; Settings = settings; Clock = Stopwatch.StartNew() }

/// A path the paper scale needs from its config, or an error naming the key, what it is and the config file.
let require (c: Ctx) (key: string) (value: PaperPaths -> string option) =
    match c.Scale with
    | Scale.Tiny -> invalidOp "require: only at paper scale"
    | Scale.Paper p ->
        let what = configKeys |> List.tryFind (fun (k, _) -> k = key) |> Option.map snd |> Option.defaultValue key
        let file = defaultArg c.Options.Config (defaultConfig ())
        match value p with
        | None -> raise (MissingAssetException $"{file}: paper scale needs '{key}' ({what}), which the config does not give")
        | Some path when not (File.Exists path || Directory.Exists path) -> raise (MissingAssetException $"{path}: '{key}' in {file} ({what}) does not exist")
        | Some path -> path

/// The pretrained models of the paper's experiments, and their tiny stand-in.
type PaperModel = Pythia160m | Llama2_7b | TinyLlama

let model (c: Ctx) (m: PaperModel) =
    match c.Scale with
    | Scale.Tiny -> ModelSource.Stories260K
    | Scale.Paper _ ->
        match m with
        | Pythia160m -> ModelSource.HfFolder(require c "pythia160m" (fun p -> p.Pythia160m))
        | Llama2_7b -> ModelSource.HfFolder(require c "llama2_7b" (fun p -> p.Llama2_7b))
        | TinyLlama -> ModelSource.HfFolder(require c "tinyllama" (fun p -> p.TinyLlama))

/// The fine-tuning sets: the data root's subsets at tiny scale, the config's full sets at paper scale.
let metaMathQA (c: Ctx) = if c.IsTiny then Dataset.MetaMathQA None else Dataset.MetaMathQA(Some (require c "metamathqa" (fun p -> p.MetaMathQA)))
let codeAlpaca (c: Ctx) = if c.IsTiny then Dataset.CodeAlpaca None else Dataset.CodeAlpaca(Some (require c "code_alpaca" (fun p -> p.CodeAlpaca)))

/// The recipes. Tiny: the pilot of DESIGN.md (lr 1e-3 constant, Lion 0.2×; DPR 300 steps of 16; instruction data
/// 150 steps of 8 at ≤ 320 tokens). Paper: Appendix B (lr 2e-5 cosine, 2 epochs, batch 128 for MetaMathQA (a seeded
/// 10 %) and 64 for Code-Alpaca, 1024 tokens). Smoke (CI): 3 steps of 4. Every one starts from `Recipe.Paper` (the tiny
/// and smoke ones keep its 2 epochs: with `Steps` set they count only in each run's identity in the store).
type Kind = DprKind | MathKind | CodeKind

let recipe (c: Ctx) (k: Kind) =
    let d = Recipe.Paper
    if c.Smoke then { d with Lr = 1e-3; Steps = Some 3; BatchSize = 4; MicroBatchSize = 4; MaxLength = 128; Schedule = Schedule.Constant }
    elif c.IsTiny then
        match k with
        | DprKind -> { d with Lr = 1e-3; Steps = Some 300; BatchSize = 16; MicroBatchSize = 16; MaxLength = 128; Schedule = Schedule.Constant }
        | MathKind | CodeKind -> { d with Lr = 1e-3; Steps = Some 150; BatchSize = 8; MicroBatchSize = 8; MaxLength = 320; Schedule = Schedule.Constant }
    else
        match k with
        | DprKind -> { d with Lr = 2e-5; Epochs = 3; BatchSize = 16; MicroBatchSize = 16; MaxLength = 256 }
        | MathKind -> { d with SampleFraction = Some 0.1 }
        | CodeKind -> { d with BatchSize = 64 }

/// An experiment of this study's scale, seed and settings.
let experiment (c: Ctx) (m: PaperModel) (data: Dataset) (k: Kind) (measures: Measure list) =
    { Experiment.create (model c m) data Method.FullFT (recipe c k) measures c.Scale c.Seed with Settings = c.Settings }

/// A note on the benchmark columns at tiny scale.
let tinyNote (c: Ctx) =
    if c.IsTiny then
        "At tiny scale (stories260K, 260K parameters) the paper's benchmark columns run through the real harnesses but sit at chance "
        + "(ARC, MMLU, HellaSwag: 25 %; GSM8K, HumanEval: 0 %), on fixed subsets (ARC: first 500; MMLU: first 4 per subject; GSM8K: first 24; "
        + "HumanEval: first 16, greedy pass@1); HellaSwag is not available offline, so Commonsense is the mean of the ARC columns. "
        + "The signal is in the second table: the task's held-out loss and accuracy, the pretraining-loss proxy (mean NLL on 64 base-model "
        + "samples; lower = less forgetting), story cloze and greedy intactness (1 = the base model's stories intact), and the distance."
        + (if c.Smoke then " SMOKE RUN (CI): 3 training steps and tiny evaluation subsets; the numbers mean nothing." else "")
    else ""

/// Rows of several tables merged per run (the JSON contract's rows): a run's row holds its values in every table.
let mergeRows (tables: Table list) : Row list =
    tables |> List.collect Table.rows
    |> List.groupBy (fun r -> r.Key, r.Method)
    |> List.map (fun ((k, m), rs) ->
        { Key = k; Method = m
          Metrics = rs |> List.collect (fun r -> r.Metrics) |> List.distinctBy fst
          Names = rs |> List.collect (fun r -> r.Names) |> List.distinctBy fst })

/// What a study writes (`finish`): results/<Name>.json, .md and .html and the console's table. Build it with
/// `Study.output name title` and set what the study has: `{ Study.output "table3" "Table 3 — …" with Tables = …; Checks = … }`.
type StudyOutput =
    { /// the results' file name: results/<Name>.{json,md,html}
      Name: string
      /// the study's title: the heading of the Markdown and the HTML page (and the page's title)
      Title: string
      /// the study's tables (each a base row, then its runs over its columns); the JSON rows are their runs' values
      Tables: Table list
      /// the paper's own numbers for the same columns, shown beside the tables
      Paper: PaperTable option
      /// the paper's claims as checks of this run (`Claims.*`, `Results.check`)
      Checks: Check list
      /// paragraphs after the tables (what the tiny scale shows, caveats); the training summary of the tables' runs
      /// is added by `finish`
      Notes: string list
      /// a figure of the study's own (a frontier, a landscape, a curve over α); None: the tables' measures, each on its
      /// own axis
      Figure: Plotly.NET.GenericChart option
      /// rows beyond the tables' (figures of other shape: a frontier's points, a landscape's losses), shown as a plain
      /// table unless the study gives its own `Layout`
      ExtraRows: Row list
      /// the study's own Markdown for its rows, in place of the plain table of `ExtraRows` (a frontier's tables)
      Layout: string option }

/// An output with a name and a title and nothing else yet.
let output (name: string) (title: string) =
    { Name = name; Title = title; Tables = []; Paper = None; Checks = []; Notes = []; Figure = None; ExtraRows = []; Layout = None }

/// What the parentheses in a study's tables mean (the rule of `Table.change`).
let private changeLegend =
    "In parentheses: the change from the base model's row, shown where the base's value is a measurement other than 0 "
    + "(a change from 0 would repeat the value, as in the distance from the base)."

let private hasChanges (tables: Table list) = tables |> List.exists (fun t -> t.Base.IsSome && not t.Rows.IsEmpty)

/// The Markdown of a study: its tables, what their parentheses mean, its other rows, the paper's table, the notes
/// (blank ones left out).
let layout (tables: Table list) (extra: Row list) (paper: PaperTable option) (notes: string list) =
    let sb = StringBuilder()
    for t in tables do sb.AppendLine(Table.markdown t) |> ignore
    if hasChanges tables then sb.AppendLine(changeLegend).AppendLine() |> ignore
    if not extra.IsEmpty then sb.AppendLine(Results.markdownTable extra) |> ignore
    paper |> Option.iter (fun p -> sb.AppendLine(Table.paperMarkdown p) |> ignore)
    for n in notes |> List.filter (String.IsNullOrWhiteSpace >> not) do sb.AppendLine(n.Trim()).AppendLine() |> ignore
    sb.ToString()

/// The training summary of each run, as a list under a "Training" heading (steps, seconds, final train loss, touched
/// fraction, run folder); "" when no run has one, so no empty heading is written.
let trainingNote (runs: Run list) =
    let sb = StringBuilder()
    let trained = runs |> List.filter (fun r -> r.Train.IsSome) |> List.distinctBy (fun r -> r.Key)
    if not trained.IsEmpty then sb.AppendLine("## Training").AppendLine() |> ignore
    for r in trained do
        match r.Train with
        | Some t ->
            let loss = t.FinalLoss.GetValueOrDefault nan
            let folder = Path.GetRelativePath(Directory.GetCurrentDirectory(), r.Dir)
            sb.AppendLine($"- {r.Label} (seed {r.Seed}): {t.Steps} steps in {t.ElapsedSeconds:F0} s, final train loss {loss:F4}, entries ever updated {100.0 * t.TouchedFraction:F1} %%, run folder `{folder}`") |> ignore
        | None -> ()
    sb.ToString()

/// The HTML page of a study after its title: each table with its figures (each measure on its own axis; task loss
/// against forgetting where the table has both), the paper's table, the study's own figure (unless it is one of the
/// tables' figures), the checks, the notes.
let private page (o: StudyOutput) (notes: string list) (report: Report) : Block list =
    let tableFigures t = [ Table.chart t; Table.scatter t ] |> List.choose id
    let drawn = o.Tables |> List.collect tableFigures |> List.map Plotly.NET.GenericChart.toJson |> Set.ofList
    let own = o.Figure |> Option.filter (fun f -> not (drawn.Contains(Plotly.NET.GenericChart.toJson f)))
    // without tables: the notes (the report's layout) or else its rows, the figure, the checks
    if o.Tables.IsEmpty && o.Paper.IsNone && o.ExtraRows.IsEmpty && o.Layout.IsNone then Results.blocks report own
    else
        let legendAfter = o.Tables |> List.tryFindIndex (fun t -> hasChanges [ t ])
        [ for i, t in List.indexed o.Tables do
            Block.Html (Table.html t)
            if legendAfter = Some i then Block.Html $"<p class=\"legend\">{Html.enc changeLegend}</p>"
            yield! tableFigures t |> List.map Block.Figure
          match o.Layout with
          | Some l -> Block.Html (Html.ofMarkdown l)
          | None -> if not o.ExtraRows.IsEmpty then Block.Html (Html.ofMarkdown (Results.markdownTable o.ExtraRows))
          match o.Paper with Some p -> Block.Html (Table.paperHtml p) | None -> ()
          match own with Some f -> Block.Figure f | None -> ()
          Block.Html (Html.checks o.Checks)
          for n in notes do Block.Html (Html.ofMarkdown n) ]

/// Writes a study's result (JSON, Markdown, HTML), prints it; returns the exit code (1 under --strict when a claim
/// does not hold). Two rows with one label are an error naming both runs.
let finish (c: Ctx) (o: StudyOutput) =
    let runs = o.Tables |> List.collect (fun t -> t.Rows)
    let notes = o.Notes @ [ trainingNote runs ] |> List.filter (String.IsNullOrWhiteSpace >> not)
    let laidOut = not (o.Tables.IsEmpty && o.Paper.IsNone && notes.IsEmpty && o.ExtraRows.IsEmpty && o.Layout.IsNone)
    let report =
        { Name = o.Name; Title = o.Title; Scale = c.Scale.Name; Seed = c.Seed; Rows = mergeRows o.Tables @ o.ExtraRows
          Paper = o.Paper |> Option.map (Table.paperRows (o.Tables |> List.collect (fun t -> t.Columns))); Checks = o.Checks
          ElapsedSeconds = c.Clock.Elapsed.TotalSeconds
          Layout = (if laidOut then Some (layout o.Tables (if o.Layout.IsSome then [] else o.ExtraRows) o.Paper (Option.toList o.Layout @ notes)) else None) }
    Results.finishWith c.Options report (page o notes report)
