/// Continual fine-tuning as values: a task stream, trained in sequence by one method (with Replay, GEM or MTL), its
/// accuracy matrix R with OP and BWT — stored as the runner's own continual.json (read back by the same C# type).
module MoFO.Dsl.Continual

open System
open System.IO
open MoFO
open MoFO.Data
open MoFO.Training

/// A task stream: TRACE's task folders (paper scale), or four real fine-tuning sets of the data root (tiny scale:
/// DPR, GSM8K, MetaMathQA, Code-Alpaca; `train` and `test` seeded examples each, `epochs` per task).
[<RequireQualifiedAccess>]
type Stream =
    | Trace of root: string * tasks: (string * int) list
    | Tiny of train: int * test: int * epochs: int

/// One continual run: the stream, how R is measured, the experiment (model, method, recipe, seed, scale).
type Job = { Stream: Stream; Metric: TaskMetric; Experiment: Experiment }

/// A stream's outcome: R[t, i] (NaN where task i was not yet trained), OP, BWT (NaN for MTL).
type Outcome = { Method: Method; OP: float; BWT: float; R: float[][] }

/// The tasks of a stream.
let tasks (s: Stream) : ContinualTask list =
    match s with
    | Stream.Trace (root, order) ->
        [ for name, epochs in order ->
            let dir = Path.Combine(root, name)
            if not (Directory.Exists dir) then raise (MissingAssetException $"{dir}: TRACE task folder '{name}' is missing")
            ContinualTask(name, InstructionData.Read(dir, DataFormat.Trace, "train"), InstructionData.Read(dir, DataFormat.Trace, "test"), epochs) ]
    | Stream.Tiny (nTrain, nTest, epochs) ->
        let task (d: Dataset) =
            let train, held = Datasets.load d 256
            let pick (xs: TrainingExample list) n seed =
                DataOrder.Epoch(xs.Length, int64 seed, 0) |> Array.truncate n |> Array.map (fun i -> xs[i]) |> ResizeArray
            ContinualTask(d.Name, pick train nTrain 11, pick held.HeldOut nTest 12, epochs)
        [ task Dataset.Dpr; task Dataset.Gsm8kTrain; task (Dataset.MetaMathQA None); task (Dataset.CodeAlpaca None) ]

/// The store's folder of a job: everything that changes its result.
let dir (j: Job) (tasks: ContinualTask list) =
    let e = j.Experiment
    let replay, gem = e.Method.Continual
    let key =
        String.Join("|", [ Identity.trainingKey e; string j.Metric; string replay; string gem ]
                         @ [ for t in tasks -> $"{t.Name}:{t.Train.Count}:{t.Test.Count}:{t.Epochs}" ])
    Store.folder "continual" $"{e.Method.Key}-s{e.Seed}" key

let private summaryFile (j: Job) = if j.Experiment.Method = Method.MTL then "mtl.json" else "continual.json"

let private outcome (m: Method) (s: ContinualSummary) =
    let r = s.Result
    { Method = m; OP = r.OP; BWT = (if m = Method.MTL || not s.BWT.HasValue then nan else s.BWT.Value); R = r.R }

/// Trains the stream (or finds it finished in the store) and returns its outcome.
let run (showProgress: bool) (j: Job) =
    let e = j.Experiment
    let tasks = tasks j.Stream
    let dir = dir j tasks
    let file = Path.Combine(dir, summaryFile j)
    if File.Exists file then outcome e.Method (ContinualSummary.Read file)
    else
        if Directory.Exists dir then Directory.Delete(dir, true)
        let o = Identity.options e showProgress
        MemoryPlanner.CheckRun(e.Model.Path, o, opsPath = (e.Scale.Device.``type`` = TorchSharp.DeviceType.CUDA)) |> ignore
        let dtype = if o.Precision = Precision.BFloat16 then TorchSharp.torch.ScalarType.BFloat16 else TorchSharp.torch.ScalarType.Float32
        use model = MoFO.Models.ModelLoader.Load(e.Model.Path, null, e.Scale.Device, dtype)
        let replay, gem = e.Method.Continual
        let runner =
            ContinualRunner(
                Model = model, Tasks = ResizeArray tasks, Options = o, OutputDir = dir, Metric = j.Metric,
                ReplayPerTask = replay, GemMemoryPerTask = gem, EvalLimit = Nullable(),
                TensorBoardDir =
                    (match Environment.GetEnvironmentVariable "MOFO_TENSORBOARD" with
                     | null | "" -> null
                     | board -> Path.Combine(board, Path.GetFileName(Path.TrimEndingDirectorySeparator dir))))
        if e.Method = Method.MTL then runner.RunMultiTask() |> ignore else runner.Run() |> ignore
        outcome e.Method (ContinualSummary.Read file)
