/// lm-evaluation-harness's output formats (v0.4): the results JSON (`results[<task>]` with "<metric>,<filter>" keys,
/// `alias`, `n-shot`, `n-samples`, `higher_is_better`, `versions`, `configs`, `config`, `date`,
/// `total_evaluation_time_seconds`, `group_subtasks`) and the per-task samples files (`samples_<task>_<timestamp>.jsonl`:
/// `doc_id`, `doc`, `target`, `arguments`, `resps`, `filtered_resps`, `filter`, `metrics`, `doc_hash`, `prompt_hash`,
/// `target_hash` and the per-sample metric values), written from a measure's outcome so that numbers can be compared
/// with the harness's and read by the tools built around it. Task names are the harness's (`arc_easy`, `mmlu_<subject>`
/// under the groups `mmlu_stem`, `mmlu_humanities`, `mmlu_social_sciences`, `mmlu_other` and `mmlu`, `gsm8k`,
/// `humaneval`). Where MoFO.NET's protocol differs from the harness's, the `config` block says so.
module MoFO.Dsl.LmEval

open System
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open MoFO
open MoFO.Evaluation

/// The harness's name of a measure's task (its key where the harness has none).
let taskName (m: Measure) = match m.Harness with Some h -> h.Name | None -> m.Key

/// MMLU's subjects by category, as the harness groups them (57 subjects).
let mmluCategories = Harnesses.mmluCategories

/// The harness's hash of a string (hex SHA-256 of its UTF-8 bytes).
let sha256 (s: string) = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes s)).ToLowerInvariant()

/// The standard error of a mean of 0/1 values, as the harness computes it (sample standard deviation / √n).
let stderr (xs: float list) =
    let n = float xs.Length
    if n < 2.0 then nan
    else
        let mean = List.average xs
        sqrt ((xs |> List.sumBy (fun x -> (x - mean) ** 2.0)) / (n - 1.0) / n)

/// One task of a results file.
type TaskResult =
    { Task: string
      Alias: string
      /// "<metric>,<filter>" → value (numbers, or "N/A" for a stderr the harness does not compute)
      Metrics: (string * JsonNode) list
      HigherIsBetter: (string * bool) list
      Version: JsonNode
      /// the harness's output_type (configs)
      OutputType: string
      Shots: int option
      /// (original, effective): the documents of the split and those evaluated (--limit)
      Samples: (int * int) option
      /// the per-document lines of its samples file
      Docs: JsonObject list }

let private num (x: float) : JsonNode = if Double.IsFinite x then JsonValue.Create x else JsonValue.Create "N/A"
let private str (s: string) : JsonNode = JsonValue.Create s
let private arr (xs: JsonNode seq) = JsonArray(xs |> Seq.toArray)

let private docLine (i: int) (doc: JsonObject) (target: string) (targetNode: JsonNode) (arguments: JsonObject) (resps: JsonNode) (filtered: JsonNode)
                    (filter: string) (metrics: (string * float) list) (prompt: string) =
    let o = JsonObject()
    o["doc_id"] <- JsonValue.Create i
    o["doc"] <- doc
    o["target"] <- targetNode
    o["arguments"] <- arguments
    o["resps"] <- resps
    o["filtered_resps"] <- filtered
    o["filter"] <- str filter
    o["metrics"] <- arr (metrics |> List.map (fun (k, _) -> str k))
    o["doc_hash"] <- str (sha256 (doc.ToJsonString(JsonSerializerOptions(WriteIndented = true))))
    o["prompt_hash"] <- str (sha256 prompt)
    o["target_hash"] <- str (sha256 target)
    for k, v in metrics do o[k] <- num v
    o

let private args (pairs: (JsonNode * JsonNode) list) =
    let o = JsonObject()
    pairs |> List.iteri (fun i (a, b) ->
        let g = JsonObject()
        g["arg_0"] <- a
        g["arg_1"] <- b
        o[$"gen_args_{i}"] <- g)
    o

/// The lines of a multiple-choice task's samples file.
let private mcDocs (items: McItemResult seq) =
    [ for i, r in Seq.indexed items ->
        let choices = r.Continuations |> Seq.map (fun c -> str (if c.StartsWith " " then c.Substring 1 else c))
        let doc = JsonObject()
        doc["id"] <- str r.Id
        if r.Group <> "" then doc["subject"] <- str r.Group
        doc["context"] <- str r.Context
        doc["choices"] <- arr choices
        doc["gold"] <- JsonValue.Create r.Gold
        let greedy i = if i < r.IsGreedy.Count && r.IsGreedy[i] then "True" else "False"
        let ll (c: int) = arr [ str (r.LogLikelihoods[c].ToString("R", Globalization.CultureInfo.InvariantCulture)); str (greedy c) ]
        let resps = arr [ for c in 0 .. r.LogLikelihoods.Count - 1 -> arr [ ll c ] ]
        let filtered = arr [ for c in 0 .. r.LogLikelihoods.Count - 1 -> ll c ]
        let arguments = args [ for c in r.Continuations -> str r.Context, str c ]
        docLine i doc (string r.Gold) (JsonValue.Create r.Gold) arguments resps filtered "none"
            [ "acc", (if r.Correct then 1.0 else 0.0); "acc_norm", (if r.CorrectNorm then 1.0 else 0.0) ] r.Context ]

let private accEntries (items: McItemResult list) (withNorm: bool) =
    let acc = items |> List.map (fun r -> if r.Correct then 1.0 else 0.0)
    let norm = items |> List.map (fun r -> if r.CorrectNorm then 1.0 else 0.0)
    [ "acc,none", num (List.average acc); "acc_stderr,none", num (stderr acc)
      if withNorm then
          "acc_norm,none", num (List.average norm)
          "acc_norm_stderr,none", num (stderr norm) ]

/// The documents of a split before --limit (for n-samples' "original"), where the measure reads one file.
let private originalCount (m: Measure) (s: Settings) =
    m.Harness |> Option.bind (fun h -> try h.Documents s with _ -> None)

/// The task of a measure with the metrics and documents given (n-shot, n-samples, direction and version from its
/// declaration).
let private taskOf (m: Measure) (s: Settings) (o: Outcome) (metrics: (string * JsonNode) list) (docs: JsonObject list) =
    let name = taskName m
    { Task = name; Alias = name; Metrics = metrics
      HigherIsBetter = [ for (k: string), _ in metrics do if not (k.Contains "_stderr") then k.Split(',')[0], m.HigherIsBetter ] |> List.distinct
      Version = JsonValue.Create (m.Harness |> Option.map (fun h -> h.Version) |> Option.defaultValue 1.0)
      OutputType = (match m.Harness with Some h -> h.OutputType | None -> "multiple_choice")
      Shots = (m.Knobs s).Shots; Samples = Some (defaultArg (originalCount m s) o.Count, o.Count); Docs = docs }

/// A task per subject, a group per category and the group of all (MMLU), with the groups' subtasks.
let private groupedTasks (m: Measure) (s: Settings) (categories: (string * string list) list) (items: McItemResult list) =
    let name = taskName m
    let shots = (m.Knobs s).Shots
    let categoryOf = dict [ for c, subjects in categories do for sub in subjects -> sub, c ]
    let bySubject = items |> List.groupBy (fun r -> r.Group)
    let subjectTasks =
        [ for subject, rs in bySubject ->
            { Task = $"{name}_{subject}"; Alias = $"  - {subject}"; Metrics = accEntries rs false; HigherIsBetter = [ "acc", m.HigherIsBetter ]
              Version = JsonValue.Create 1.0; OutputType = "multiple_choice"; Shots = shots; Samples = Some (rs.Length, rs.Length); Docs = mcDocs rs } ]
    let group (task: string) (alias: string) (rs: McItemResult list) =
        { Task = task; Alias = alias; Metrics = accEntries rs false; HigherIsBetter = [ "acc", m.HigherIsBetter ]; Version = JsonValue.Create 2
          OutputType = "multiple_choice"; Shots = None; Samples = None; Docs = [] }
    let inCategory =
        [ for c, subjects in categories do
            let rs = bySubject |> List.filter (fun (sub, _) -> List.contains sub subjects) |> List.collect snd
            if not rs.IsEmpty then yield c, rs ]
    let groups =
        [ yield group name name items
          for c, rs in inCategory do yield group $"{name}_{c}" $" - {c}" rs ]
    let subtasks =
        [ yield name, [ for c, _ in inCategory -> $"{name}_{c}" ]
          for c, _ in inCategory do
            yield $"{name}_{c}", [ for subject, _ in bySubject do if categoryOf.TryGetValue subject = (true, c) then yield $"{name}_{subject}" ] ]
    groups @ subjectTasks, subtasks

/// The lines of GSM8K's samples file: a line per document and filter, and its exact-match metrics.
let private answerTask (s: Settings) (items: Gsm8kItemResult list) =
    let strict = items |> List.map (fun r -> if r.StrictCorrect then 1.0 else 0.0)
    let flexible = items |> List.map (fun r -> if r.FlexibleCorrect then 1.0 else 0.0)
    let genArgs =
        let g = JsonObject()
        g["until"] <- arr (Gsm8k.StopStrings |> Seq.map str)
        g["do_sample"] <- JsonValue.Create false
        g["temperature"] <- JsonValue.Create 0.0
        g["max_gen_toks"] <- JsonValue.Create s.Gsm8kMaxNewTokens
        g
    let docs =
        [ for filter, extracted, correct in [ "strict-match", (fun (r: Gsm8kItemResult) -> r.Strict), (fun (r: Gsm8kItemResult) -> r.StrictCorrect)
                                              "flexible-extract", (fun r -> r.Flexible), (fun r -> r.FlexibleCorrect) ] do
            for i, r in List.indexed items ->
                let doc = JsonObject()
                doc["question"] <- str r.Question
                doc["answer"] <- str r.Answer
                docLine i doc r.Answer (str r.Answer) (args [ str r.Prompt, genArgs.DeepClone() ]) (arr [ arr [ str r.Generation ] ])
                    (arr [ str (extracted r) ]) filter [ "exact_match", (if correct r then 1.0 else 0.0) ] r.Prompt ]
    [ "exact_match,strict-match", num (List.average strict); "exact_match_stderr,strict-match", num (stderr strict)
      "exact_match,flexible-extract", num (List.average flexible); "exact_match_stderr,flexible-extract", num (stderr flexible) ], docs

/// The lines of HumanEval's samples file: a line per problem with its completions, and its pass@k metrics.
let private programTask (s: Settings) (o: Outcome) (h: HumanEvalItems) =
    let byTask = h.Results |> List.groupBy (fun r -> r.TaskId) |> dict
    let genArgs =
        let g = JsonObject()
        g["until"] <- arr (HumanEval.StopStrings |> Seq.map str)
        g["do_sample"] <- JsonValue.Create (s.HumanEvalTemperature > 0.0)
        g["temperature"] <- JsonValue.Create s.HumanEvalTemperature
        g["top_p"] <- JsonValue.Create s.HumanEvalTopP
        g["max_gen_toks"] <- JsonValue.Create s.HumanEvalMaxNewTokens
        g
    let docs =
        [ for i, p in List.indexed h.Problems ->
            let rs = match byTask.TryGetValue p.TaskId with | true, rs -> rs | _ -> []
            let c = rs |> List.filter (fun r -> r.Passed) |> List.length
            let doc = JsonObject()
            doc["task_id"] <- str p.TaskId
            doc["prompt"] <- str p.Prompt
            doc["canonical_solution"] <- str p.CanonicalSolution
            doc["test"] <- str p.Test
            doc["entry_point"] <- str p.EntryPoint
            let target = p.Test + "\ncheck(" + p.EntryPoint + ")"
            docLine i doc target (str target) (args [ str p.Prompt, genArgs.DeepClone() ]) (arr [ arr [ for r in rs -> str r.Completion ] ])
                (arr [ arr [ for r in rs -> str (p.Prompt + r.Completion) ] ]) "create_test"
                [ for k in s.HumanEvalKs -> $"pass@{k}", (if rs.Length >= k then PassAtK.Estimate(rs.Length, c, k) else nan) ] p.Prompt ]
    let metrics = [ for k, v in o.Metrics do if k.StartsWith "pass@" then yield $"{k},create_test", num v; yield $"{k}_stderr,create_test", str "N/A" ]
    metrics, docs

/// The tasks of a measure's outcome, written from its items: one for most measures; for a task with categories
/// (MMLU) its subjects, its categories and the group of all.
let tasks (m: Measure) (s: Settings) (o: Outcome) : TaskResult list * (string * string list) list =
    let one metrics docs = [ taskOf m s o metrics docs ], [ taskName m, [] ]
    match o.Items, m.Harness with
    | Items.Choices items, Some h when not h.Categories.IsEmpty -> groupedTasks m s h.Categories items
    | Items.Choices items, _ -> one (accEntries items true) (mcDocs items)
    | Items.Answers items, _ -> answerTask s items ||> one
    | Items.Programs h, _ -> programTask s o h ||> one
    | (Items.NotKept | Items.PerTensor _ | Items.PerPrompt _ | Items.Unavailable _), _ -> one [ for k, v in o.Metrics -> $"{k},none", num v ] []

/// The tasks of several measures' outcomes in one results file: the evaluations of the model's outputs (a measure in
/// weight space, the distance, is left out).
let tasksOf (s: Settings) (outcomes: (Measure * Outcome) list) =
    let parts = outcomes |> List.filter (fun (m, _) -> m.Unit <> MeasureUnit.Weights) |> List.map (fun (m, o) -> tasks m s o)
    parts |> List.collect fst, parts |> List.collect snd

/// The `config` value of a BOS policy: `mofo eval --add-bos`'s spelling (auto, true, false).
let bosText (policy: MoFO.Models.BosPolicy) =
    match policy with
    | MoFO.Models.BosPolicy.Always -> "true"
    | MoFO.Models.BosPolicy.Never -> "false"
    | _ -> "auto"

/// The results JSON of some tasks of one model: the harness's top-level keys, plus the evaluation's `config` (with
/// `add_bos`, the model's BOS policy).
let results (model: string) (s: Settings) (addBos: MoFO.Models.BosPolicy) (limit: int option) (seconds: float) (ts: TaskResult list) (groups: (string * string list) list) =
    let root = JsonObject()
    let section (f: TaskResult -> JsonNode option) =
        let o = JsonObject()
        for t in ts do f t |> Option.iter (fun v -> o[t.Task] <- v)
        o
    root["results"] <- section (fun t ->
        let o = JsonObject()
        o["alias"] <- str t.Alias
        for k, v in t.Metrics do o[k] <- v.DeepClone()
        Some o)
    let gs = JsonObject()
    for g, subs in groups do gs[g] <- arr (subs |> List.map str)
    root["group_subtasks"] <- gs
    root["configs"] <- section (fun t ->
        if t.Docs.IsEmpty && t.Samples.IsNone then None
        else
            let o = JsonObject()
            o["task"] <- str t.Task
            o["num_fewshot"] <- (match t.Shots with Some n -> JsonValue.Create n :> JsonNode | None -> null)
            o["output_type"] <- str t.OutputType
            o["target_delimiter"] <- str " "
            o["fewshot_delimiter"] <- str "\n\n"
            Some o)
    root["versions"] <- section (fun t -> Some (t.Version.DeepClone()))
    root["n-shot"] <- section (fun t -> t.Shots |> Option.map (fun n -> JsonValue.Create n :> JsonNode))
    root["higher_is_better"] <- section (fun t ->
        let o = JsonObject()
        for k, v in t.HigherIsBetter do o[k] <- JsonValue.Create v
        Some o)
    root["n-samples"] <- section (fun t ->
        t.Samples |> Option.map (fun (original, effective) ->
            let o = JsonObject()
            o["original"] <- JsonValue.Create original
            o["effective"] <- JsonValue.Create effective
            o :> JsonNode))
    let config = JsonObject()
    config["model"] <- str "mofo"
    config["model_args"] <- str $"pretrained={model}"
    config["batch_size"] <- JsonValue.Create 16
    config["limit"] <- (match limit with Some n -> JsonValue.Create n :> JsonNode | None -> null)
    config["random_seed"] <- JsonValue.Create s.Seed
    config["fewshot_seed"] <- JsonValue.Create s.Seed
    config["bootstrap_iters"] <- JsonValue.Create 0
    config["gen_kwargs"] <- null
    config["add_bos"] <- str (bosText addBos)
    config["differences_from_lm_eval"] <-
        str ("MoFO.NET's own implementation of the harness's prompts and metrics (docs/evaluation.md): GSM8K's few-shot set is drawn "
             + "once with a fixed seed and shared by every question (the harness draws per question with Python's RNG); "
             + "HumanEval's stderr is not computed; group stderrs are those of the pooled documents; docs are MoFO.NET's "
             + "renderings of the rows, so doc_hash differs from the harness's")
    root["config"] <- config
    root["model_name"] <- str model
    root["date"] <- JsonValue.Create (float (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()) / 1000.0)
    root["total_evaluation_time_seconds"] <- str (seconds.ToString("R", Globalization.CultureInfo.InvariantCulture))
    root

/// Writes a samples file per task that has documents (`samples_<task>_<timestamp>.jsonl` beside the results file);
/// returns their paths.
let writeSamples (folder: string) (timestamp: string) (ts: TaskResult list) =
    [ for t in ts do
        if not t.Docs.IsEmpty then
            let path = Path.Combine(folder, $"samples_{t.Task}_{timestamp}.jsonl")
            AtomicFile.WriteAllLines(path, t.Docs |> List.map (fun d -> d.ToJsonString()))
            yield path ]

/// A task's headline metrics from a results file of the harness (or of `mofo eval`): "<metric>,<filter>" → value.
let readResults (file: string) =
    let root =
        try JsonNode.Parse(File.ReadAllText file)
        with :? JsonException as e -> raise (MoFO.Data.DataFormatException(file, Nullable(), $"not valid JSON ({e.Message})", e))
    match root with
    | :? JsonObject as o when o.ContainsKey "results" ->
        [ for KeyValue (task, v) in o["results"].AsObject() ->
            task, [ for KeyValue (k, x) in v.AsObject() do
                      match x with
                      | :? JsonValue as jv when jv.GetValueKind() = JsonValueKind.Number -> yield k, jv.GetValue<float>()
                      | _ -> () ] ]
    | _ -> raise (MoFO.Data.DataFormatException(file, Nullable(), "expected lm-evaluation-harness's results JSON (an object with \"results\")"))

/// Whether a harness metric key is one of a declaration's keys (a key ending in `*` stands for every key it begins).
let private keyMatches (pattern: string) (key: string) =
    if pattern.EndsWith "*" then key.StartsWith(pattern.TrimEnd '*', StringComparison.Ordinal) else key = pattern

/// The measures of a results file of the harness (or of `mofo eval --output`) with the value each has in MoFO.NET,
/// read from the metric keys its declaration names (ARC and HellaSwag acc_norm, MMLU acc, GSM8K strict exact match,
/// HumanEval pass@1 or the first pass@k).
let measuresOf (file: string) : Map<Measure, float> =
    let results = readResults file |> dict
    [ for m in Measure.All do
        match m.Harness with
        | Some h ->
            match results.TryGetValue h.Name with
            | true, ms ->
                let value = h.Metrics |> List.tryPick (fun p -> ms |> List.tryFind (fun (k, _) -> keyMatches p k) |> Option.map snd)
                match value with Some v -> yield m, v | None -> ()
            | _ -> ()
        | None -> () ]
    |> Map.ofList

/// Writes a results file, keeping the tasks of an earlier file at the same path that this one does not measure again
/// (the DSL measures a model a few measures at a time, as its cache fills).
let writeMerged (path: string) (root: JsonObject) =
    if File.Exists path then
        try
            match JsonNode.Parse(File.ReadAllText path) with
            | :? JsonObject as old ->
                for section in [ "results"; "group_subtasks"; "configs"; "versions"; "n-shot"; "higher_is_better"; "n-samples" ] do
                    match old[section], root[section] with
                    | (:? JsonObject as o), (:? JsonObject as n) ->
                        for KeyValue (k, v) in Seq.toList o do
                            if not (n.ContainsKey k) then n[k] <- v.DeepClone()
                    | _ -> ()
            | _ -> ()
        with :? JsonException -> ()
    AtomicFile.WriteAllText(path, root.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
