namespace MoFO.Dsl

open System
open System.IO
open System.Text.Json
open System.Text.Json.Serialization
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Dsl.Harnesses

/// Every measure, each declared once: its key, name, direction, unit, what it needs, how it runs, its `mofo eval` task
/// and knobs, and its task in lm-evaluation-harness. Everything else reads the declaration: `mofo eval --task`, the
/// report suites, the lm-eval results and samples files, the tables, the caches. Adding a measure is adding one
/// `declare` here (and its tests). Scripts name them as `Measure.ArcEasy`, so a misspelled measure does not compile.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Measure =
    let private declared = ResizeArray<Measure>()

    /// Adds a measure to `All`, in order; its key, name and `mofo eval` task must be new.
    let private declare (m: Measure) =
        for d in declared do
            let clash = [ m.Key; m.Name ] |> List.exists (fun s -> s = d.Key || s = d.Name)
            if clash || (m.Task.IsSome && m.Task = d.Task) then
                invalidOp $"measure {m.Key} ({m.Name}, task {m.Task}): its key, name or task is already {d.Key}'s"
        declared.Add m
        m

    // ---- the parts that declarations share ----------------------------------------------------------------------------

    /// A measure that reads no file, has no knobs, needs nothing and is not in a suite or `mofo eval`.
    let private plain (key: string) (name: string) (higherIsBetter: bool) (unit: MeasureUnit) (run: Context -> Probe -> Outcome) : Measure =
        { Key = key; Name = name; HigherIsBetter = higherIsBetter; Unit = unit; Suite = None; Needs = []; Task = None; Harness = None
          Assets = (fun _ -> []); Available = (fun _ -> true); Knobs = (fun _ -> EvalKnobs.None); Apply = (fun _ s -> s); Run = run }

    let private asset (a: Asset) = DataRoot.Require a
    let private orElse (k: EvalKnobs) (key: string) (s: Settings) = match k.Data with Some d -> { s with Data = s.Data |> Map.add key d } | None -> s
    let private limitOf (k: EvalKnobs) (key: string) (s: Settings) = match k.Limit with Some n -> s.WithLimit(key, n) | None -> s
    let private shotsOf (k: EvalKnobs) (key: string) (s: Settings) = match k.Shots with Some n -> { s with Shots = s.Shots |> Map.add key n } | None -> s
    let private seedOf (k: EvalKnobs) (s: Settings) = match k.Seed with Some x -> { s with Seed = x } | None -> s
    let private samplesOfKnobs (k: EvalKnobs) (s: Settings) =
        { s with Samples = defaultArg k.Samples s.Samples; SampleTokens = defaultArg k.MaxNewTokens s.SampleTokens }
    let private knobs (s: Settings) (key: string) = { EvalKnobs.None with Limit = s.Limit key; Data = s.DataOf key }
    let private samplesKnobs (s: Settings) (key: string) = { knobs s key with Samples = Some s.Samples; MaxNewTokens = Some s.SampleTokens }
    let private dataFor (s: Settings) (key: string) (fallback: unit -> string) = s.DataOf key |> Option.defaultWith fallback
    let private needData (s: Settings) (key: string) (what: string) =
        s.DataOf key |> Option.defaultWith (fun () -> raise (OptionException("Data", $"Data: {key} needs {what}")))

    /// A benchmark's task in the harness: one task, no subtasks.
    let private harness (name: string) (metrics: string list) (version: float) (outputType: string) (documents: Settings -> int option) =
        Some { Name = name; Metrics = metrics; Version = version; OutputType = outputType; Documents = documents; Categories = [] }

    /// Multiple choice by log-likelihood from one jsonl, acc_norm; `mofo eval --task` is the key with dashes.
    let private choice (key: string) (name: string) (suite: SuiteTag option) (file: Settings -> string) (read: string -> McItem list) : Measure =
        { plain key name true MeasureUnit.Accuracy (fun ctx p ->
              let s = ctx.Settings
              multipleChoice p.Model (key.Replace('_', '-')) (read (file s) |> take (s.Limit key)) (s.ShotsOf key) (int s.Seed)) with
            Suite = suite; Task = Some (key.Replace('_', '-')); Assets = (fun s -> [ file s ])
            Knobs = (fun s -> { knobs s key with Shots = Some (s.ShotsOf key) })
            Apply = (fun k s -> s |> orElse k key |> limitOf k key |> shotsOf k key |> seedOf k) }

    let private arc (key: string) (name: string) (file: Asset) : Measure =
        let path s = dataFor s key (fun () -> asset file)
        { choice key name (Some SuiteTag.Paper) path (fun p -> Arc.Read p |> Seq.toList) with
            Harness = harness key [ "acc_norm,none"; "acc,none" ] 1.0 "multiple_choice" (fun s -> Some (Arc.Read(path s).Count)) }

    /// A measure on seeded samples of the base model (`--samples`, `--max-new-tokens`, `--limit`, `--seed`).
    let private onBaseSamples (key: string) (name: string) (higherIsBetter: bool) (unit: MeasureUnit) (needs: Need list) (run: Context -> Probe -> Outcome) : Measure =
        { plain key name higherIsBetter unit run with
            Needs = needs; Task = Some (key.Replace('_', '-'))
            Knobs = (fun s -> samplesKnobs s key)
            Apply = (fun k s -> s |> samplesOfKnobs k |> limitOf k key |> seedOf k) }

    /// A number of the held-out task fit (computed once for all of them): the first of `metrics` is its value.
    let private onTaskFit (key: string) (name: string) (higherIsBetter: bool) (unit: MeasureUnit) (metrics: (string * (TaskFit -> float)) list) =
        { plain key name higherIsBetter unit (fun _ p ->
              let f = p.Fit.Value
              let values = [ for k, get in metrics -> k, get f ] @ [ "tokens", float f.Tokens ]
              { Value = snd values.Head; Metrics = values; Count = f.Examples; Items = Items.NotKept }) with
            Needs = [ Need.Task ] }

    // ---- the measures ------------------------------------------------------------------------------------------------

    /// MMLU accuracy (the paper: 0-shot)
    let Mmlu =
        let root s = dataFor s "mmlu" (fun () -> Path.GetDirectoryName(asset DataRoot.Assets.MmluTest))
        declare
            { plain "mmlu" "MMLU" true MeasureUnit.Accuracy (fun ctx p -> let s = ctx.Settings in mmlu p.Model (root s) (s.ShotsOf "mmlu") (s.Limit "mmlu")) with
                Suite = Some SuiteTag.Paper; Task = Some "mmlu"; Assets = (fun s -> [ root s ])
                Harness = Some { Name = "mmlu"; Metrics = [ "acc,none" ]; Version = 1.0; OutputType = "multiple_choice"; Documents = (fun _ -> None); Categories = mmluCategories }
                Knobs = (fun s -> { knobs s "mmlu" with Shots = Some (s.ShotsOf "mmlu") })
                Apply = (fun k s -> s |> orElse k "mmlu" |> limitOf k "mmlu" |> shotsOf k "mmlu" |> seedOf k) }

    /// ARC-Easy, acc_norm
    let ArcEasy = declare (arc "arc_easy" "ARC-easy" DataRoot.Assets.ArcEasy)

    /// ARC-Challenge, acc_norm
    let ArcChallenge = declare (arc "arc_challenge" "ARC-challenge" DataRoot.Assets.ArcChallenge)

    /// HellaSwag, acc_norm (its public jsonl must be given: it is not available offline)
    let HellaSwag =
        let file s = needData s "hellaswag" "HellaSwag's public jsonl (hellaswag_val.jsonl; not available offline)"
        let m = choice "hellaswag" "HellaSwag" (Some SuiteTag.Paper) file (fun p -> MoFO.Evaluation.HellaSwag.Read p |> Seq.toList)
        declare
            { m with
                Assets = (fun s -> s.DataOf "hellaswag" |> Option.toList)
                Available = (fun s -> (s.DataOf "hellaswag").IsSome)
                Harness = harness "hellaswag" [ "acc_norm,none"; "acc,none" ] 1.0 "multiple_choice" (fun s -> s.DataOf "hellaswag" |> Option.map (fun f -> MoFO.Evaluation.HellaSwag.Read(f).Count))
                Run = (fun ctx p ->
                    match ctx.Settings.DataOf "hellaswag" with
                    | Some _ -> m.Run ctx p
                    | None -> { Value = nan; Metrics = [ "unavailable", nan ]; Count = 0; Items = Items.Unavailable "HellaSwag is not available offline: give its public jsonl (hellaswag_val.jsonl)" }) }

    /// a user's own multiple-choice jsonl (question, choices, answer), acc_norm
    let Mc =
        declare
            { choice "mc" "multiple choice" None (fun s -> needData s "mc" "a multiple-choice jsonl (question, choices, answer)") (fun p -> McJsonl.Read p |> Seq.toList) with
                Assets = (fun s -> s.DataOf "mc" |> Option.toList); Available = (fun s -> (s.DataOf "mc").IsSome) }

    /// GSM8K, 5-shot greedy exact match (strict)
    let Gsm8k =
        let test s = dataFor s "gsm8k" (fun () -> asset DataRoot.Assets.Gsm8kTest)
        declare
            { plain "gsm8k" "GSM8K" true MeasureUnit.Accuracy (fun ctx p ->
                  let s = ctx.Settings
                  gsm8k p.Model (test s) (s.ShotsOf "gsm8k") s.Gsm8kMaxNewTokens (s.Limit "gsm8k")) with
                Suite = Some SuiteTag.Paper; Task = Some "gsm8k"
                Harness = harness "gsm8k" [ "exact_match,strict-match" ] 3.0 "generate_until" (fun s -> Some (MoFO.Data.Gsm8kData.Read(test s).Count))
                Assets = (fun s -> [ test s; asset DataRoot.Assets.Gsm8kTrain ])
                Knobs = (fun s -> { knobs s "gsm8k" with Shots = Some (s.ShotsOf "gsm8k"); MaxNewTokens = Some s.Gsm8kMaxNewTokens })
                Apply = (fun k s ->
                    { (s |> orElse k "gsm8k" |> limitOf k "gsm8k" |> shotsOf k "gsm8k" |> seedOf k) with
                        Gsm8kMaxNewTokens = defaultArg k.MaxNewTokens s.Gsm8kMaxNewTokens }) }

    /// HumanEval pass@k in the sandbox (paper: pass@10)
    let HumanEval =
        let problems s = dataFor s "humaneval" (fun () -> asset DataRoot.Assets.HumanEval)
        declare
            { plain "humaneval" "HumanEval" true MeasureUnit.Accuracy (fun ctx p ->
                  let s = ctx.Settings
                  humanEval p.Model (problems s) s.HumanEvalSamples s.HumanEvalTemperature s.HumanEvalTopP s.HumanEvalMaxNewTokens
                      s.HumanEvalKs s.Seed (s.Limit "humaneval") s.UnsafeNoSandbox) with
                Suite = Some SuiteTag.Paper; Needs = [ Need.Sandbox ]; Task = Some "humaneval"
                Harness = harness "humaneval" [ "pass@1,*"; "pass@*" ] 1.0 "generate_until" (fun s -> Some (MoFO.Evaluation.HumanEval.ReadProblems(problems s).Count))
                Assets = (fun s -> [ problems s ])
                Knobs = (fun s ->
                    { knobs s "humaneval" with
                        Samples = Some s.HumanEvalSamples; Temperature = Some s.HumanEvalTemperature; TopP = Some s.HumanEvalTopP
                        Ks = Some s.HumanEvalKs; MaxNewTokens = Some s.HumanEvalMaxNewTokens })
                Apply = (fun k s ->
                    { (s |> orElse k "humaneval" |> limitOf k "humaneval" |> seedOf k) with
                        HumanEvalSamples = defaultArg k.Samples s.HumanEvalSamples; HumanEvalTemperature = defaultArg k.Temperature s.HumanEvalTemperature
                        HumanEvalTopP = defaultArg k.TopP s.HumanEvalTopP; HumanEvalKs = defaultArg k.Ks s.HumanEvalKs
                        HumanEvalMaxNewTokens = defaultArg k.MaxNewTokens s.HumanEvalMaxNewTokens }) }

    /// mean token NLL on a text corpus (.txt paragraphs or jsonl "text")
    let Perplexity =
        declare
            { plain "perplexity" "perplexity NLL" false MeasureUnit.Nats (fun ctx p ->
                  let file = needData ctx.Settings "perplexity" "a text corpus (.txt, paragraphs separated by blank lines, or jsonl with \"text\")"
                  perplexity p.Model (readTexts file |> take (ctx.Settings.Limit "perplexity"))) with
                Task = Some "perplexity"
                Assets = (fun s -> s.DataOf "perplexity" |> Option.toList); Available = (fun s -> (s.DataOf "perplexity").IsSome)
                Knobs = (fun s -> knobs s "perplexity")
                Apply = (fun k s -> s |> orElse k "perplexity" |> limitOf k "perplexity") }

    /// mean token NLL of the fine-tuned model on seeded samples of the base model: the data-free pretraining-loss proxy
    let PretrainProxy =
        declare
            { onBaseSamples "pretrain_proxy_nll" "pretrain-proxy NLL" false MeasureUnit.Nats [ Need.BaseSamples ] (fun ctx p ->
                  pretrainProxy p.Model (samplesOf ctx |> take (ctx.Settings.Limit "pretrain_proxy_nll") |> ResizeArray)) with
                Suite = Some SuiteTag.Tiny; Task = Some "pretrain-proxy" }

    /// story cloze built from the base model's samples, acc_norm
    let StoryCloze =
        declare
            { onBaseSamples "story_cloze" "story-cloze" true MeasureUnit.Accuracy [ Need.BaseSamples ] (fun ctx p ->
                  storyCloze p.Model (samplesOf ctx) (int ctx.Settings.Seed) (ctx.Settings.Limit "story_cloze")) with
                Suite = Some SuiteTag.Tiny }

    /// agreement of greedy continuations with the base model's (1 = the base model's stories intact)
    let GreedyIntact =
        declare
            { plain "greedy_intact" "greedy intact" true MeasureUnit.Accuracy (fun ctx p ->
                  greedyIntact p.Model ctx.Base.Value (samplesOf ctx) ctx.Settings.IntactPrompts ctx.Settings.IntactTokens) with
                Suite = Some SuiteTag.Tiny; Needs = [ Need.BaseSamples ] }

    /// L2 distance of the weights from the base model
    let Distance =
        declare
            { plain "distance_l2" "L2 from base" false MeasureUnit.Weights (fun ctx p -> distance p.Model ctx.Base.Value) with
                Needs = [ Need.Base ]; Task = Some "distance" }

    /// mean per-token KL(fine-tuned ‖ base) at the answer positions of the held-out task ("RL's Razor")
    let KlToBase =
        declare
            { plain "kl_to_base" "KL to base (task)" false MeasureUnit.Nats (fun ctx p ->
                  // the fine-tuning task's held-out examples, or (mofo eval) a jsonl of {prompt, completion} given as --data
                  let examples, maxLength =
                      match ctx.Task, ctx.Settings.DataOf "kl_to_base" with
                      | Some _, _ -> let t = taskOf ctx "KL to base" in t.HeldOut, t.MaxLength
                      | None, Some file -> MoFO.Data.InstructionData.Read(file, MoFO.Data.DataFormat.Jsonl) |> Seq.toList |> take (ctx.Settings.Limit "kl_to_base"), 512
                      | None, None -> raise (OptionException("Data", "Data: kl-to-base needs the task's held-out examples (mofo eval: --data, a jsonl of {prompt, completion})"))
                  let r = MoFO.Evaluation.KlToBase.OnTask(p.Model, ctx.Base.Value, ResizeArray examples, maxLength)
                  { Value = r.MeanTokenKl; Metrics = [ "kl_to_base", r.MeanTokenKl; "tokens", float r.Tokens ]; Count = r.Examples; Items = Items.NotKept }) with
                Needs = [ Need.Base; Need.Task ]; Task = Some "kl-to-base"
                Assets = (fun s -> s.DataOf "kl_to_base" |> Option.toList)
                Knobs = (fun s -> knobs s "kl_to_base")
                Apply = (fun k s -> s |> orElse k "kl_to_base" |> limitOf k "kl_to_base") }

    /// mean per-token KL(fine-tuned ‖ base) on seeded samples of the base model
    let KlToBaseSamples =
        declare
            (onBaseSamples "kl_to_base_samples" "KL to base (samples)" false MeasureUnit.Nats [ Need.Base ] (fun ctx p ->
                let samples = samplesOf ctx |> take (ctx.Settings.Limit "kl_to_base_samples") |> ResizeArray
                let r = MoFO.Evaluation.KlToBase.OnTexts(p.Model, ctx.Base.Value, samples)
                { Value = r.MeanTokenKl; Metrics = [ "kl_to_base_samples", r.MeanTokenKl; "tokens", float r.Tokens ]; Count = r.Examples; Items = Items.NotKept }))

    /// held-out loss of the fine-tuning task (answer tokens, teacher-forced)
    let TaskLoss =
        declare (onTaskFit "task_loss" "task loss" false MeasureUnit.Nats [ "task_loss", (fun f -> f.MeanTokenNll); "task_token_acc", (fun f -> f.TokenAccuracy) ])

    /// held-out top-1 accuracy on the answer tokens of the fine-tuning task
    let TaskTokenAccuracy =
        declare (onTaskFit "task_token_acc" "task token acc" true MeasureUnit.Accuracy [ "task_token_acc", (fun f -> f.TokenAccuracy); "task_loss", (fun f -> f.MeanTokenNll) ])

    /// the task's own accuracy where it has one (DPR: the candidate with the higher likelihood)
    let TaskAccuracy =
        declare
            { plain "task_acc" "task acc" true MeasureUnit.Accuracy (fun ctx p ->
                  match (taskOf ctx "task acc").Choices with
                  | Some items -> multipleChoice p.Model "task" items 0 (int ctx.Settings.Seed) |> fun o -> { o with Value = (o.Metrics |> List.find (fun (k, _) -> k = "acc") |> snd) }
                  | None ->
                      let f = p.Fit.Value
                      { Value = f.TokenAccuracy; Metrics = [ "task_token_acc", f.TokenAccuracy ]; Count = f.Examples; Items = Items.NotKept }) with
                Needs = [ Need.Task ] }

    // ---- every measure -----------------------------------------------------------------------------------------------

    /// Every measure, in the order declared.
    let All = List.ofSeq declared

    /// The measure of a key or name; an ArgumentException listing the keys otherwise.
    let Parse (s: string) =
        All |> List.tryFind (fun m -> m.Key = s || m.Name = s)
        |> Option.defaultWith (fun () -> raise (ArgumentException $"""unknown measure '{s}' (expected one of {String.Join(", ", All |> List.map (fun m -> m.Key))})"""))

/// JSON names a measure by its key (`Json.options`: the sweep's point files hold experiments with their measures).
type MeasureJsonConverter() =
    inherit JsonConverter<Measure>()
    override _.Read(reader, _, _) = Measure.Parse(reader.GetString())
    override _.Write(writer, m, _) = writer.WriteStringValue m.Key
    override _.ReadAsPropertyName(reader, _, _) = Measure.Parse(reader.GetString())
    override _.WriteAsPropertyName(writer, m, _) = writer.WritePropertyName m.Key
