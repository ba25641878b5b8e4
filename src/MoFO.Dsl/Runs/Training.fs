/// Runs one experiment: fine-tunes it (or resumes it, or finds it finished in the store), evaluates the fine-tuned and
/// the base model (cached per model folder and settings), and returns its `Run`.
module MoFO.Dsl.Training

open System
open System.IO
open MoFO
open MoFO.Data
open MoFO.Models
open MoFO.Training

/// Measures a model (cached per folder and settings): the values of `measures`. The task is read only when a measure
/// that needs it is not cached yet.
let evaluate (dir: string) (modelPath: string) (basePath: string) (device: TorchSharp.torch.Device) (task: Lazy<TaskData option>)
             (settings: Settings) (measures: Measure list) : Map<Measure, float> =
    let key = Store.settingsKey settings
    let cached = Store.readEvals dir key
    // the task's measures depend on the task: their cache key names it (the base model serves several tasks)
    let keyOf (m: Measure) =
        if m.Needs |> List.contains Need.Task then
            match task.Value with
            | Some t -> $"{m.Key}@{t.Name}"
            | None -> m.Key
        else m.Key
    // a measure against the base model is zero on the base model itself
    let isZeroOnBase (m: Measure) = Evals.againstBase m && modelPath = basePath
    let todo = measures |> List.filter (fun m -> not (isZeroOnBase m) && not (cached.ContainsKey(keyOf m)))
    let fresh =
        if todo.IsEmpty then []
        else
            use model = ModelLoader.Load(modelPath, null, device)
            let baseModel = lazy (if modelPath = basePath then model else ModelLoader.Load(basePath, null, device))
            try
                let ctx: Context = { Base = baseModel; Task = task.Value; Settings = settings }
                let clock = Diagnostics.Stopwatch.StartNew()
                let outcomes =
                    [ for m, outcome in Evals.measureAll ctx model todo ->
                        // in a data-parallel job every rank measures; rank 0 alone writes the cache
                        if MoFO.Distributed.Job.IsRoot then Store.writeEval dir key (keyOf m) outcome.Value
                        m, outcome ]
                // the same numbers in lm-evaluation-harness's format beside the cache (the benchmarks and the rest)
                let tasks, groups = LmEval.tasksOf settings outcomes
                if MoFO.Distributed.Job.IsRoot && not tasks.IsEmpty then
                    LmEval.writeMerged (Path.Combine(dir, "lm_eval_results.json"))
                        (LmEval.results (Path.GetFullPath modelPath) settings model.BosPolicy None clock.Elapsed.TotalSeconds tasks groups)
                [ for m, o in outcomes -> keyOf m, o.Value ]
            finally
                if baseModel.IsValueCreated && not (obj.ReferenceEquals(baseModel.Value, model)) then baseModel.Value.Dispose()
    let all = Seq.append (Map.toSeq cached) fresh |> Map.ofSeq
    measures
    |> List.map (fun m -> m, (if isZeroOnBase m then 0.0 else all |> Map.tryFind (keyOf m) |> Option.defaultValue nan))
    |> Map.ofList

/// The training examples of an experiment (the recipe's sample fraction and limit applied) and its held-out task.
let data (e: Experiment) =
    let trainSet, task = Datasets.load e.Data e.Recipe.MaxLength
    let trainSet =
        match e.Recipe.SampleFraction with
        | Some f -> DataOrder.Subsample(ResizeArray trainSet, f, int64 e.Seed) |> Seq.toList
        | None -> trainSet
    let trainSet = match e.Recipe.TrainLimit with Some n -> List.truncate n trainSet | None -> trainSet
    trainSet, task

/// Fine-tunes (or resumes, or finds the finished run) and returns the run folder and its summary.
let train (e: Experiment) (showProgress: bool) =
    let folder = RunFolder(Identity.runDir e)
    match folder.FinishedSummary() with
    | null ->
        let trainSet, task = data e
        let o = Identity.options e showProgress
        MemoryPlanner.CheckRun(e.Model.Path, o, opsPath = (e.Scale.Device.``type`` = TorchSharp.DeviceType.CUDA)) |> ignore
        let dtype = if o.Precision = Precision.BFloat16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32
        use model = ModelLoader.Load(e.Model.Path, null, e.Scale.Device, dtype)
        let trainer = Trainer(model, ResizeArray trainSet, ResizeArray task.HeldOut, o, folder.Dir)
        // MOFO_TENSORBOARD=DIR: every run of a script or sweep writes its event files to DIR/<run folder's name>
        match Environment.GetEnvironmentVariable "MOFO_TENSORBOARD" with
        | null | "" -> ()
        | board -> trainer.TensorBoardDir <- Path.Combine(board, Path.GetFileName(Path.TrimEndingDirectorySeparator folder.Dir))
        let resume = File.Exists(Path.Combine(folder.CheckpointDir, "trainer_state.json")) || Directory.Exists(folder.CheckpointDir + ".old")
        if resume then eprintfn "resuming %s from its checkpoint" folder.Dir
        let r = trainer.Run(resume)
        if r.Interrupted then raise (OperationCanceledException $"{folder.Dir}: training was interrupted")
        folder.Dir, r
    | summary -> folder.Dir, summary

/// Evaluates the base model on the experiment's measures (cached by model and settings).
let baseline (e: Experiment) : Run =
    let path = e.Model.Path
    let dir = Identity.baseDir e.Model
    let task = lazy (Some (snd (Datasets.load e.Data e.Recipe.MaxLength)))
    let values = evaluate dir path path e.Scale.Device task e.Settings e.Measures
    { Label = e.Model.Label; Key = Identity.keyOf dir; Method = None; ModelPath = path; BasePath = path; Dir = dir; Values = values; Train = None; Seed = e.Seed }

/// A run without numbers (diverged, or failed in every attempt): every value is NaN.
let failedRun (e: Experiment) =
    let dir = Identity.runDir e
    { Label = Labels.single e; Key = Identity.keyOf dir; Method = Some e.Method; ModelPath = Path.Combine(dir, "model"); BasePath = e.Model.Path; Dir = dir
      Values = e.Measures |> List.map (fun m -> m, nan) |> Map.ofList; Train = None; Seed = e.Seed }

/// Trains and evaluates one experiment. A run that diverged (the trainer stopped on non-finite losses) has NaN values,
/// and its marker file keeps a re-run from training it again.
let runWith (showProgress: bool) (e: Experiment) : Run =
    Identity.check e
    let dir = Identity.runDir e
    let marker = Path.Combine(dir, "diverged.txt")
    if File.Exists marker then failedRun e
    else
        match (try Ok (train e showProgress) with :? TrainingDivergedException as ex -> Error ex.Message) with
        | Error message ->
            eprintfn "%s: diverged (%s); its values are NaN" dir message
            AtomicFile.WriteAllText(marker, message)
            failedRun e
        | Ok (dir, summary) ->
            let task = lazy (Some (snd (Datasets.load e.Data e.Recipe.MaxLength)))
            let modelPath = Path.Combine(dir, "model")
            let values = evaluate dir modelPath e.Model.Path e.Scale.Device task e.Settings e.Measures
            { Label = Labels.single e; Key = Identity.keyOf dir; Method = Some e.Method; ModelPath = modelPath; BasePath = e.Model.Path; Dir = dir; Values = values
              Train = Some summary; Seed = e.Seed }
