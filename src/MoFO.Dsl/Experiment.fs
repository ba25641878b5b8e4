/// Experiments as values: a model source, fine-tuning data, a method of the optimizer family, a recipe, measures, a
/// seed and a scale. `Experiment.run` trains (or finds the finished run in the cache), evaluates, and returns a `Run`
/// whose numbers are typed by `Measure`. Runs and evaluations are cached under results/cache, so sweeps resume after
/// an interruption and scripts share their base-model evaluations and common runs.
namespace MoFO.Dsl

open System
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Threading
open MoFO
open MoFO.Data
open MoFO.Evaluation
open MoFO.Models
open MoFO.Training
open MoFO.Dsl.Evals

/// Where the pretrained model comes from.
[<RequireQualifiedAccess>]
type ModelSource =
    /// the real pretrained stories260K (llama2.c) under the data root: the tiny scale
    | Stories260K
    | Llama2c of path: string
    /// a HuggingFace folder (config.json, safetensors, tokenizer): Pythia, TinyLlama, Llama-2
    | HfFolder of path: string
    member m.Path =
        match m with
        | Stories260K -> DataRoot.Require DataRoot.Assets.Stories260K
        | Llama2c p | HfFolder p ->
            if not (File.Exists p || Directory.Exists p) then raise (MissingAssetException $"{p}: the model is missing (expected a llama2.c .bin or an HF folder with config.json)")
            Path.GetFullPath p
    member m.Label =
        match m with
        | Stories260K -> "stories260K"
        | Llama2c p | HfFolder p -> Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath p))

/// The fine-tuning data: its training examples and its held-out examples (the task measures use them).
[<RequireQualifiedAccess>]
type Dataset =
    /// Rahman & Ng's definite pronoun resolution (FLAN's definite_pronoun_resolution source), FLAN-style templates in
    /// rotation; held out: the test split, scored also as a two-choice task
    | Dpr
    /// MetaMathQA in Tulu messages; `path` None = the 1,024-example subset under the data root (tiny: 128 held out)
    | MetaMathQA of path: string option
    /// Code-Alpaca; `path` None = the 2k file under the data root (the two empty outputs dropped; 128 held out)
    | CodeAlpaca of path: string option
    /// GSM8K train (held out: the first 128 test problems)
    | Gsm8kTrain
    /// any file of a supported format, with an optional held-out file (else 128 seeded examples are held out)
    | File of name: string * path: string * format: DataFormat * heldOut: string option
    member d.Name =
        match d with
        | Dpr -> "DPR" | MetaMathQA _ -> "MetaMathQA" | CodeAlpaca _ -> "Code-Alpaca" | Gsm8kTrain -> "GSM8K-train"
        | File (n, _, _, _) -> n
    member d.Key =
        match d with
        | Dpr -> "dpr"
        | MetaMathQA p -> "metamathqa" + (p |> Option.map (fun p -> ":" + Path.GetFullPath p) |> Option.defaultValue "")
        | CodeAlpaca p -> "codealpaca" + (p |> Option.map (fun p -> ":" + Path.GetFullPath p) |> Option.defaultValue "")
        | Gsm8kTrain -> "gsm8k-train"
        | File (n, p, f, h) -> $"""{n}:{Path.GetFullPath p}:{f}:{defaultArg h ""}"""

/// The methods compared in the paper. Replay, GEM and MTL are continual-learning strategies (Table 5).
[<RequireQualifiedAccess>]
type Method =
    | FullFT
    | MoFO of alpha: float
    | HFT
    | L1 of lambda: float
    | L2 of lambda: float
    | Lion
    | GradBCD of alpha: float
    | RandomBCD of alpha: float
    | Replay of perTask: int * Method
    | GEM of memory: int * Method
    | MTL
    member m.Label =
        let pct (a: float) = (a * 100.0).ToString("0.##", Globalization.CultureInfo.InvariantCulture) + "%"
        match m with
        | FullFT -> "Full FT" | MoFO a -> $"MoFO (α={pct a})" | HFT -> "HFT" | L1 _ -> "L1-regularization" | L2 _ -> "L2-regularization"
        | Lion -> "Lion" | GradBCD a -> $"Gradient-filtered BCD (α={pct a})" | RandomBCD a -> $"Randomized BCD (α={pct a})"
        | Replay (_, FullFT) -> "Replay" | Replay (_, inner) -> $"Replay + {inner.Label}"
        | GEM (_, FullFT) -> "GEM" | GEM (_, inner) -> $"GEM + {inner.Label}"
        | MTL -> "MTL"
    member m.Key =
        match m with
        | FullFT -> "adamw" | MoFO a -> $"mofo{a}" | HFT -> "hft" | L1 l -> $"l1-{l}" | L2 l -> $"l2-{l}" | Lion -> "lion"
        | GradBCD a -> $"gradbcd{a}" | RandomBCD a -> $"randbcd{a}" | Replay (n, i) -> $"replay{n}-{i.Key}" | GEM (n, i) -> $"gem{n}-{i.Key}"
        | MTL -> "mtl"
    /// The optimizer-family member, α, λ1 and λ2 (the base optimizer of Replay / GEM).
    member m.Member : MoFO.Training.Method * float option * float option * float option =
        match m with
        | FullFT | MTL -> MoFO.Training.Method.AdamW, None, None, None
        | MoFO a -> MoFO.Training.Method.MoFO, Some a, None, None
        | HFT -> MoFO.Training.Method.HFT, None, None, None
        | L1 l -> MoFO.Training.Method.L1, None, Some l, None
        | L2 l -> MoFO.Training.Method.L2, None, None, Some l
        | Lion -> MoFO.Training.Method.Lion, None, None, None
        | GradBCD a -> MoFO.Training.Method.GradBCD, Some a, None, None
        | RandomBCD a -> MoFO.Training.Method.RandomBCD, Some a, None, None
        | Replay (_, inner) | GEM (_, inner) -> inner.Member

/// How to fine-tune: the paper's knobs. `Lion` runs at `Lr · LionLrScale` (Lion's authors advise a 3–10× smaller step).
type Recipe =
    { Lr: float
      Steps: int option
      Epochs: int
      BatchSize: int
      MicroBatchSize: int
      MaxLength: int
      Schedule: Schedule
      WarmupRatio: float
      WeightDecay: float
      MaxGradNorm: float
      LionLrScale: float
      /// train on at most this many examples (None: all)
      TrainLimit: int option
      /// MetaMathQA at paper scale: the paper trains on a seeded 10 %
      SampleFraction: float option }
    static member Default =
        { Lr = 2e-5; Steps = None; Epochs = 2; BatchSize = 128; MicroBatchSize = 4; MaxLength = 1024; Schedule = Schedule.Cosine
          WarmupRatio = 0.0; WeightDecay = 0.0; MaxGradNorm = 1.0; LionLrScale = 0.2; TrainLimit = None; SampleFraction = None }

/// The paper's models and data at paper scale (from a JSON config file or flags); None = not given.
type PaperPaths =
    { Pythia160m: string option
      Llama2_7b: string option
      TinyLlama: string option
      MetaMathQA: string option
      CodeAlpaca: string option
      Trace: string option
      HellaSwag: string option
      Device: string option }
    static member Empty =
        { Pythia160m = None; Llama2_7b = None; TinyLlama = None; MetaMathQA = None; CodeAlpaca = None; Trace = None; HellaSwag = None; Device = None }

[<RequireQualifiedAccess>]
type Scale =
    | Tiny
    | Paper of PaperPaths
    member s.Name = match s with Tiny -> "tiny" | Paper _ -> "paper"
    member s.Settings =
        match s with
        | Tiny -> Settings.Tiny
        | Paper p -> { Settings.Paper with HellaSwagData = p.HellaSwag }

/// One fine-tuning experiment.
type Experiment =
    { Model: ModelSource
      Data: Dataset
      Method: Method
      Recipe: Recipe
      Measures: Measure list
      Seed: int
      Scale: Scale
      /// how the measures run (limits, shots, samples): `Scale.Settings` unless a study overrides it
      Settings: Settings }

/// What a fine-tune ended with.
type TrainInfo = { FinalLoss: float; HeldOutLoss: float; Distance: float; Steps: int; Seconds: float; TouchedFraction: float }

/// A model with its measured values: the base model or a fine-tuned one.
type Run =
    { Label: string
      Method: Method option
      ModelPath: string
      BasePath: string
      Dir: string
      Values: Map<Measure, float>
      Train: TrainInfo option
      Seed: int }
    member r.Item(m: Measure) = r.Values |> Map.tryFind m |> Option.defaultValue nan

module Experiment =
    let private inv (x: float) = x.ToString("R", Globalization.CultureInfo.InvariantCulture)

    /// The cache folder: results/cache (MOFO_CACHE overrides).
    let cacheRoot () =
        match Environment.GetEnvironmentVariable "MOFO_CACHE" with
        | null | "" -> Settings.DefaultCache
        | p -> Path.GetFullPath p

    let private hash (s: string) =
        Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes s)).Substring(0, 12).ToLowerInvariant()

    /// The identity of a training run: everything that changes its weights.
    let trainingKey (e: Experiment) =
        let r = e.Recipe
        String.Join("|",
            [ e.Model.Path; e.Data.Key; e.Method.Key; inv r.Lr; string r.Steps; string r.Epochs; string r.BatchSize; string r.MaxLength
              string r.Schedule; inv r.WarmupRatio; inv r.WeightDecay; inv r.MaxGradNorm; inv r.LionLrScale; string r.TrainLimit
              string r.SampleFraction; string e.Seed; "v1" ])

    let runDir (e: Experiment) =
        let slug = $"{e.Data.Name}-{e.Method.Key}-lr{inv e.Recipe.Lr}-s{e.Seed}".ToLowerInvariant() |> String.map (fun c -> if Char.IsLetterOrDigit c || c = '.' || c = '-' then c else '_')
        Path.Combine(cacheRoot (), "runs", $"{slug}-{hash (trainingKey e)}")

    let baseDir (model: ModelSource) =
        Path.Combine(cacheRoot (), "base", $"{model.Label}-{hash model.Path}")

    /// The settings that change a measure's number (the evaluation cache is keyed by them).
    let settingsKey (s: Settings) =
        hash (String.Join("|", [ string s.ArcLimit; string s.MmluPerSubject; string s.HellaSwagData; string s.HellaSwagLimit; string s.Gsm8kLimit
                                 string s.Gsm8kShots; string s.Gsm8kMaxNewTokens; string s.HumanEvalLimit; string s.HumanEvalSamples
                                 inv s.HumanEvalTemperature; string s.HumanEvalK; string s.HumanEvalMaxNewTokens; string s.Samples
                                 string s.SampleTokens; string s.IntactPrompts; string s.IntactTokens; string s.Seed; string s.TaskLimit; "v1" ]))

    // ---- data ------------------------------------------------------------------------------------------------------

    /// The first `n` of a seeded permutation are held out; the rest train.
    let private split (all: Collections.Generic.List<TrainingExample>) (n: int) =
        let order = DataOrder.Epoch(all.Count, 0L, 0)
        let held = order |> Array.truncate n |> Array.map (fun i -> all[i]) |> Array.toList
        let heldSet = Collections.Generic.HashSet(order |> Array.truncate n)
        let train = [ for i in 0 .. all.Count - 1 do if not (heldSet.Contains i) then all[i] ]
        train, held

    /// Training and held-out examples of a dataset, and the task's multiple-choice form where it has one.
    let load (d: Dataset) (maxLength: int) : TrainingExample list * TaskData =
        let task heldOut choices = { Name = d.Name; HeldOut = heldOut; Choices = choices; MaxLength = maxLength }
        match d with
        | Dataset.Dpr ->
            let trainPath = DataRoot.Require DataRoot.Assets.DprTrain
            let testPath = DataRoot.Require DataRoot.Assets.DprTest
            let train = InstructionData.Read(trainPath, DataFormat.Dpr) |> Seq.toList
            let held = InstructionData.Read(testPath, DataFormat.Dpr, "eval", 0) |> Seq.toList
            train, task held (Some (Dpr.AsMultipleChoice(Dpr.Read testPath, 0) |> Seq.toList))
        | Dataset.MetaMathQA None ->
            let t, h = split (InstructionData.Read(DataRoot.Require DataRoot.Assets.MetaMathQA, DataFormat.Tulu)) 128
            t, task h None
        | Dataset.MetaMathQA (Some p) ->
            // the full MetaMathQA trains; the authors' 1,024-example validation subset under the data root is held out
            let train = InstructionData.Read(p, (if p.EndsWith ".json" then DataFormat.Alpaca else DataFormat.Tulu)) |> Seq.toList
            train, task (InstructionData.Read(DataRoot.Require DataRoot.Assets.MetaMathQA, DataFormat.Tulu) |> Seq.toList) None
        | Dataset.CodeAlpaca p ->
            let path = p |> Option.defaultWith (fun () -> DataRoot.Require DataRoot.Assets.CodeAlpaca)
            let t, h = split (InstructionData.Read(path, DataFormat.Alpaca, skipEmpty = true)) 128
            t, task h None
        | Dataset.Gsm8kTrain ->
            let train = InstructionData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain, DataFormat.Gsm8k) |> Seq.toList
            let held = InstructionData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTest, DataFormat.Gsm8k) |> Seq.truncate 128 |> Seq.toList
            train, task held None
        | Dataset.File (_, path, format, heldOut) ->
            match heldOut with
            | Some h -> InstructionData.Read(path, format) |> Seq.toList, task (InstructionData.Read(h, format, "eval") |> Seq.toList) None
            | None ->
                let t, h = split (InstructionData.Read(path, format)) 128
                t, task h None

    // ---- options ---------------------------------------------------------------------------------------------------

    let options (e: Experiment) (showProgress: bool) =
        let r = e.Recipe
        let lr = match e.Method with Method.Lion -> r.Lr * r.LionLrScale | _ -> r.Lr
        let core, alpha, l1, l2 = e.Method.Member
        TrainingOptions(
                Method = core, Alpha = defaultArg alpha 0.15, L1Lambda = defaultArg l1 1e-6, L2Lambda = defaultArg l2 1e-3,
                LearningRate = lr, Steps = Option.toNullable r.Steps, Epochs = r.Epochs, BatchSize = r.BatchSize,
                MicroBatchSize = min r.BatchSize r.MicroBatchSize, MaxLength = r.MaxLength, Schedule = r.Schedule,
                WarmupRatio = r.WarmupRatio, WeightDecay = r.WeightDecay, MaxGradNorm = r.MaxGradNorm, Seed = int64 e.Seed,
                ShowProgress = showProgress, SaveEvery = (match r.Steps with Some s when s >= 100 -> 50 | _ -> 0))

    let device (s: Scale) =
        match s with
        | Scale.Paper p -> MoFO.Runtime.device p.Device
        | Scale.Tiny -> TorchSharp.torch.CPU

    // ---- evaluation cache ------------------------------------------------------------------------------------------

    let private evalFile dir = Path.Combine(dir, "evals.json")

    let private readEvals dir (key: string) : Map<string, float> =
        let f = evalFile dir
        if not (File.Exists f) then Map.empty
        else
            use doc = JsonDocument.Parse(File.ReadAllText f)
            match doc.RootElement.TryGetProperty key with
            | true, e -> e.EnumerateObject() |> Seq.map (fun p -> p.Name, (if p.Value.ValueKind = JsonValueKind.Number then p.Value.GetDouble() else nan)) |> Map.ofSeq
            | _ -> Map.empty

    let private evalLock = obj ()

    let private writeEval dir (key: string) (measure: string) (value: float) =
        lock evalLock (fun () ->
            let f = evalFile dir
            let all =
                if File.Exists f then
                    use doc = JsonDocument.Parse(File.ReadAllText f)
                    doc.RootElement.EnumerateObject()
                    |> Seq.map (fun p -> p.Name, (p.Value.EnumerateObject() |> Seq.map (fun q -> q.Name, (if q.Value.ValueKind = JsonValueKind.Number then q.Value.GetDouble() else nan)) |> Map.ofSeq))
                    |> Map.ofSeq
                else Map.empty
            let inner = all |> Map.tryFind key |> Option.defaultValue Map.empty |> Map.add measure value
            let all = all |> Map.add key inner
            use ms = new MemoryStream()
            (use w = new Utf8JsonWriter(ms, JsonWriterOptions(Indented = true))
             w.WriteStartObject()
             for KeyValue (k, m) in all do
                 w.WritePropertyName k
                 w.WriteStartObject()
                 for KeyValue (n, v) in m do
                     if Double.IsFinite v then w.WriteNumber(n, v) else w.WriteNull n
                 w.WriteEndObject()
             w.WriteEndObject())
            Directory.CreateDirectory dir |> ignore
            AtomicFile.WriteAllText(f, Encoding.UTF8.GetString(ms.ToArray())))

    /// Measures a model (cached per folder and settings): the values of `measures`.
    let evaluate (dir: string) (modelPath: string) (basePath: string) (device: TorchSharp.torch.Device) (task: TaskData option)
                 (settings: Settings) (measures: Measure list) : Map<Measure, float> =
        let key = settingsKey settings
        let cached = readEvals dir key
        // the task's measures depend on the task: their cache key names it (the base model serves several tasks)
        let keyOf (m: Measure) =
            match m, task with
            | (Measure.TaskLoss | Measure.TaskTokenAccuracy | Measure.TaskAccuracy), Some t -> $"{m.Key}@{t.Name}"
            | _ -> m.Key
        let todo = measures |> List.filter (fun m -> not (cached.ContainsKey(keyOf m))) |> List.filter (fun m -> m <> Measure.Distance || modelPath <> basePath)
        let fresh =
            if todo.IsEmpty then []
            else
                use model = ModelLoader.Load(modelPath, null, device)
                let baseModel = lazy (if modelPath = basePath then model else ModelLoader.Load(basePath, null, device))
                try
                    let ctx = { Base = baseModel; Task = task; Settings = settings }
                    [ for m, outcome in measureAll ctx model todo ->
                        writeEval dir key (keyOf m) outcome.Value
                        keyOf m, outcome.Value ]
                finally
                    if baseModel.IsValueCreated && not (obj.ReferenceEquals(baseModel.Value, model)) then baseModel.Value.Dispose()
        let all = Seq.append (Map.toSeq cached) fresh |> Map.ofSeq
        measures
        |> List.map (fun m ->
            m, (if m = Measure.Distance && modelPath = basePath then 0.0 else all |> Map.tryFind (keyOf m) |> Option.defaultValue nan))
        |> Map.ofList

    // ---- training --------------------------------------------------------------------------------------------------

    let private readTrainInfo (dir: string) =
        let f = Path.Combine(dir, "train_summary.json")
        if not (File.Exists f) || not (Directory.Exists(Path.Combine(dir, "model"))) then None
        else
            use doc = JsonDocument.Parse(File.ReadAllText f)
            let r = doc.RootElement
            let num (name: string) = match r.TryGetProperty name with | true, v when v.ValueKind = JsonValueKind.Number -> v.GetDouble() | _ -> nan
            if r.GetProperty("interrupted").GetBoolean() then None
            else
                let seconds =
                    let m = Path.Combine(dir, "metrics.jsonl")
                    if File.Exists m then
                        match File.ReadLines m |> Seq.tryLast with
                        | Some l -> (use d = JsonDocument.Parse l in d.RootElement.GetProperty("elapsedSeconds").GetDouble())
                        | None -> nan
                    else nan
                Some { FinalLoss = num "finalLoss"; HeldOutLoss = num "evalLoss"; Distance = num "distance"; Steps = int (num "steps")
                       Seconds = seconds; TouchedFraction = num "touchedFraction" }

    /// Fine-tunes (or resumes, or finds the finished run) and returns the run folder and what training ended with.
    let train (e: Experiment) (showProgress: bool) =
        let dir = runDir e
        match readTrainInfo dir with
        | Some info -> dir, info
        | None ->
            let trainSet, task = load e.Data e.Recipe.MaxLength
            let trainSet =
                match e.Recipe.SampleFraction with
                | Some f -> DataOrder.Subsample(ResizeArray trainSet, f, int64 e.Seed) |> Seq.toList
                | None -> trainSet
            let trainSet = match e.Recipe.TrainLimit with Some n -> List.truncate n trainSet | None -> trainSet
            let o = options e showProgress
            use model = ModelLoader.Load(e.Model.Path, null, device e.Scale, TorchSharp.torch.ScalarType.Float32)
            let trainer = Trainer(model, ResizeArray trainSet, ResizeArray task.HeldOut, o, dir)
            let resume = File.Exists(Path.Combine(dir, "checkpoint", "trainer_state.json")) || Directory.Exists(Path.Combine(dir, "checkpoint.old"))
            if resume then eprintfn "resuming %s from its checkpoint" dir
            let r = trainer.Run(resume)
            if r.Interrupted then raise (OperationCanceledException $"{dir}: training was interrupted")
            dir, (readTrainInfo dir |> Option.get)

    /// Evaluates the base model on the experiment's measures (cached by model and settings).
    let baseline (e: Experiment) : Run =
        let path = e.Model.Path
        let _, task = load e.Data e.Recipe.MaxLength
        let dir = baseDir e.Model
        let values = evaluate dir path path (device e.Scale) (Some task) e.Settings e.Measures
        { Label = e.Model.Label; Method = None; ModelPath = path; BasePath = path; Dir = dir; Values = values; Train = None; Seed = e.Seed }

    /// Trains and evaluates one experiment.
    /// A run that diverged (the trainer stopped on non-finite losses): every value is NaN, and the marker file keeps a
    /// re-run from training it again.
    let private divergedRun (e: Experiment) (dir: string) =
        { Label = e.Method.Label; Method = Some e.Method; ModelPath = Path.Combine(dir, "model"); BasePath = e.Model.Path; Dir = dir
          Values = e.Measures |> List.map (fun m -> m, nan) |> Map.ofList; Train = None; Seed = e.Seed }

    let runWith (showProgress: bool) (e: Experiment) : Run =
        let dir = runDir e
        let marker = Path.Combine(dir, "diverged.txt")
        if File.Exists marker then divergedRun e dir
        else
            match (try Ok (train e showProgress) with :? TrainingDivergedException as ex -> Error ex.Message) with
            | Error message ->
                eprintfn "%s: diverged (%s); its values are NaN" dir message
                AtomicFile.WriteAllText(marker, message)
                divergedRun e dir
            | Ok (dir, info) ->
                let _, task = load e.Data e.Recipe.MaxLength
                let modelPath = Path.Combine(dir, "model")
                let values = evaluate dir modelPath e.Model.Path (device e.Scale) (Some task) e.Settings e.Measures
                { Label = e.Method.Label; Method = Some e.Method; ModelPath = modelPath; BasePath = e.Model.Path; Dir = dir; Values = values
                  Train = Some info; Seed = e.Seed }

    let run (e: Experiment) = runWith true e

    /// How many experiments run at once: on CPU at tiny scale, one per core (each with one intra-op thread: a tiny model
    /// does not use two cores well); otherwise one. MOFO_PARALLEL overrides.
    let parallelism (scale: Scale) =
        match Environment.GetEnvironmentVariable "MOFO_PARALLEL" with
        | null | "" -> (match scale with Scale.Tiny -> max 1 Environment.ProcessorCount | Scale.Paper _ -> 1)
        | s -> (match Int32.TryParse s with | true, n when n >= 1 -> n | _ -> raise (ArgumentException $"MOFO_PARALLEL={s}: expected a positive integer"))

    let private printLock = obj ()

    /// Runs one point, retrying (up to three times) after a native libtorch error. TorchSharp 0.107 can hand libtorch
    /// a Scalar whose memory was already released when several threads allocate (a "Scalar.h" check fails); the point's
    /// run is checkpointed and resumes bit-identically, so a retry gives the same result as an uninterrupted run.
    let private withRetry (label: string) (f: unit -> 'b) =
        let rec attempt n =
            try f ()
            with :? Runtime.InteropServices.ExternalException as ex when n < 3 ->
                let first = ex.Message.Split('\n')[0]
                lock printLock (fun () -> eprintfn "native error in %s (%s); retrying from its checkpoint (attempt %d of 3)" label first (n + 1))
                attempt (n + 1)
        attempt 1

    /// Maps `f` over `xs` on `par` threads (each torch call with one intra-op thread; progress bars off), printing a
    /// line per finished item; the first failure stops the others after their current item and is re-raised.
    let parallelMap (par: int) (label: 'a -> string) (f: bool -> 'a -> 'b) (xs: 'a list) : 'b list =
        let items = List.toArray xs
        if par <= 1 || items.Length <= 1 then
            items |> Array.mapi (fun i x ->
                eprintfn "[%d/%d] %s" (i + 1) items.Length (label x)
                withRetry (label x) (fun () -> f true x)) |> Array.toList
        else
            let results = Array.zeroCreate items.Length
            let errors = Collections.Concurrent.ConcurrentQueue<exn>()
            let next = ref -1
            let finished = ref 0
            let threads0 = TorchSharp.torch.get_num_threads ()
            let progress0 = ConsoleProgress.Enabled
            TorchSharp.torch.set_num_threads 1
            ConsoleProgress.Enabled <- false
            let clock = Diagnostics.Stopwatch.StartNew()
            let worker () =
                let mutable go = true
                while go do
                    let i = Interlocked.Increment next
                    if i >= items.Length || not errors.IsEmpty then go <- false
                    else
                        try
                            results[i] <- withRetry (label items[i]) (fun () -> f false items[i])
                            let d = Interlocked.Increment finished
                            lock printLock (fun () -> eprintfn "[%d/%d, %.0f s] done: %s" d items.Length clock.Elapsed.TotalSeconds (label items[i]))
                        with ex -> errors.Enqueue ex
            try
                let ts = [ for _ in 1 .. min par items.Length -> Thread(worker, 64 * 1024 * 1024) ]
                for t in ts do t.Start()
                for t in ts do t.Join()
            finally
                TorchSharp.torch.set_num_threads threads0
                ConsoleProgress.Enabled <- progress0
            match errors.TryPeek() with
            | true, ex -> raise (AggregateException("an item of the sweep failed (finished ones are cached; re-run to continue): " + ex.Message, ex))
            | _ -> List.ofArray results

    /// Runs several experiments (in parallel where `parallelism` allows) and returns their runs in order. Finished
    /// points come from the cache; an interrupted sweep re-run continues where it stopped.
    let runAll (es: Experiment list) : Run list =
        match es with
        | [] -> []
        | first :: _ ->
            let label (e: Experiment) = $"{e.Data.Name} · {e.Method.Label} · lr {e.Recipe.Lr:G3} · seed {e.Seed}"
            let distinct = List.distinct es
            let runs = parallelMap (parallelism first.Scale) label runWith distinct
            let byExp = List.zip distinct runs |> dict
            es |> List.map (fun e -> byExp[e])

    // ---- builders --------------------------------------------------------------------------------------------------

    let create model data method recipe measures (scale: Scale) seed =
        { Model = model; Data = data; Method = method; Recipe = recipe; Measures = measures; Seed = seed; Scale = scale; Settings = scale.Settings }
    let withMethod m (e: Experiment) = { e with Method = m }
    let withLr lr (e: Experiment) = { e with Recipe = { e.Recipe with Lr = lr } }
    let withSeed s (e: Experiment) = { e with Seed = s }
    let withMeasures ms (e: Experiment) = { e with Measures = ms }
    /// One experiment per method.
    let compare (methods: Method list) (e: Experiment) = methods |> List.map (fun m -> withMethod m e)
    /// One experiment per value, from a function of it (a sweep over α, a learning rate, λ, …).
    let sweep (values: 'a list) (f: 'a -> Experiment -> Experiment) (e: Experiment) = values |> List.map (fun v -> f v e)
    /// Every experiment over several seeds.
    let seeds (ss: int list) (es: Experiment list) = [ for e in es do for s in ss -> withSeed s e ]
