/// Experiments as values: a model source, fine-tuning data, a method of the optimizer family, a recipe, measures, a
/// seed and a scale. `Experiment.run` trains (or finds the finished run in the store), evaluates, and returns a `Run`
/// whose numbers are typed by `Measure`; `Experiment.runAll` runs a sweep, each point in a process of its own.
namespace MoFO.Dsl

open System
open System.IO
open MoFO.Training

/// One fine-tuning experiment.
type Experiment =
    { Model: ModelSource
      Data: Dataset
      Method: Method
      Recipe: Recipe
      Measures: Measure list
      Seed: int
      Scale: Scale
      /// how the measures run (limits, shots, samples): `Settings.Of scale` unless a study overrides it
      Settings: Settings
      /// the run's name in tables, JSON and claims (`Experiment.withLabel`); None: the method's label, followed by
      /// whatever tells it apart from the experiments it is run with (`Labels.distinguish`)
      Label: string option
      /// forgetting watched while the run trains, and the budgets that stop it (`Experiment.withWatch`,
      /// `Experiment.withBudget`); `Watching.None` by default
      Watch: Watching }

/// A model with its measured values: the base model or a fine-tuned one.
type Run =
    { /// the run's name in tables and claims (display only: results are keyed by `Key`)
      Label: string
      /// the run's identity, stable across processes: its folder in the store (`runs/<name>-<hash>`), `base/…` for a base
      /// model; results rows are keyed by it
      Key: string
      Method: Method option
      ModelPath: string
      BasePath: string
      Dir: string
      Values: Map<Measure, float>
      /// the training summary (the run folder's train_summary.json); None for the base model and failed runs
      Train: TrainResult option
      Seed: int }
    member r.Item(m: Measure) = r.Values |> Map.tryFind m |> Option.defaultValue nan
    /// The forgetting watch's curve (`Experiment.withWatch`): the base at step 0, then every watch — the step's training
    /// loss, the held-out loss, each watched measure and its rise over the base. Empty when the run watched nothing.
    member r.Watch : WatchPoint list =
        if String.IsNullOrEmpty r.Dir || not (Directory.Exists r.Dir) then [] else ForgettingWatch.Curve r.Dir |> List.ofSeq
    /// The forgetting budget that stopped the run (`Experiment.withBudget`): the measure, its rise, the limit, the step
    /// that exceeded it and the step whose model the run kept; None when no budget stopped it.
    member r.Budget : BudgetStop option = r.Train |> Option.bind (fun t -> Option.ofObj t.Budget)

/// The identity of runs in the store, and the trainer's options of an experiment.
module Identity =
    /// The identity of a training run: everything that changes its weights.
    let trainingKey (e: Experiment) =
        let r = e.Recipe
        String.Join("|",
            [ e.Model.Path; e.Data.Key; e.Method.Key; Store.inv r.Lr; string r.Steps; string r.Epochs; string r.BatchSize; string r.MaxLength
              string r.Schedule; Store.inv r.WarmupRatio; Store.inv r.WeightDecay; Store.inv r.MaxGradNorm; Store.inv (Recipe.lrFor e.Method r)
              string r.TrainLimit; string r.SampleFraction; string e.Seed; "v2" ]
            @ (if r.Precision <> Precision.Float32 || r.GradientCheckpointing then
                   [ string r.Precision; string r.BFloat16Update; string r.GradientCheckpointing ]
               else [])
            @ (if r.OptimizerState <> MoFO.Optim.MomentStorage.Float32 then [ string r.OptimizerState ] else [])
            // a budget changes the weights (the run stops early); a watch changes what the run folder holds (the curve)
            @ (if e.Watch.Measures.IsEmpty then []
               else [ "watch:" + String.Join(",", e.Watch.Measures |> List.map (fun w -> w.Name)) + $"/{e.Watch.Every}"
                      "budget:" + String.Join(",", e.Watch.Budget |> List.map (fun (w, x) -> $"{w.Name}={Store.inv x}")) ]))

    /// The run's folder in the store (named with the learning rate the method runs at: `Recipe.lrFor`).
    let runDir (e: Experiment) = Store.folder "runs" $"{e.Data.Name}-{e.Method.Key}-lr{Store.inv (Recipe.lrFor e.Method e.Recipe)}-s{e.Seed}" (trainingKey e)

    /// A run's key: its folder relative to the store (a folder outside it: its full path).
    let keyOf (dir: string) =
        let rel = System.IO.Path.GetRelativePath(Store.root (), System.IO.Path.GetFullPath dir)
        (if rel.StartsWith ".." || System.IO.Path.IsPathRooted rel then System.IO.Path.GetFullPath dir else rel).Replace('\\', '/')

    /// The base model's folder in the store (its evaluations).
    let baseDir (model: ModelSource) = Store.folder "base" model.Label model.Path

    /// The trainer's options of an experiment (the method's Core description, the recipe, the seed).
    let options (e: Experiment) (showProgress: bool) =
        let r = e.Recipe
        TrainingOptions(
            Method = e.Method.Spec, LearningRate = Recipe.lrFor e.Method r, Steps = Option.toNullable r.Steps, Epochs = r.Epochs,
            BatchSize = r.BatchSize, MicroBatchSize = min r.BatchSize r.MicroBatchSize, MaxLength = r.MaxLength, Schedule = r.Schedule,
            WarmupRatio = r.WarmupRatio, WeightDecay = r.WeightDecay, MaxGradNorm = r.MaxGradNorm, Seed = int64 e.Seed,
            ShowProgress = showProgress, SaveEvery = (match r.Steps with Some s when s >= 100 -> 50 | _ -> 0))
            .WithScale(r.Precision, r.BFloat16Update, r.GradientCheckpointing, Nullable())
            .WithOptimizerState(r.OptimizerState)
            .WithWatch(e.Watch.Measures |> List.map (fun w -> w.Name) |> ResizeArray, e.Watch.Every,
                       e.Watch.Budget |> List.map (fun (w, x) -> Collections.Generic.KeyValuePair(w.Name, x)) |> Collections.Generic.Dictionary)

    /// Checks an experiment's settings before anything runs (the recipe and method as Core validates them, and what
    /// only the recipe has): an OptionException on the field, which a script's guard names in its words (`Recipe.Lr`).
    let check (e: Experiment) =
        Recipe.check e.Recipe
        (options e false).Validate()

/// Labels that tell runs apart: a run is named by its method, followed by whatever differs between it and the runs it
/// is run with under the same method name (the learning rate it runs at, the seed, the data, …), unless the experiment
/// carries its own label (`Experiment.withLabel`). Labels are for display; results are keyed by `Run.Key`.
module Labels =
    let private g (x: float) = x.ToString("G3", Globalization.CultureInfo.InvariantCulture)

    /// What can tell an experiment apart from another, in the order a label lists them: the data, the model, the learning
    /// rate the method runs at (`Recipe.lrFor`: LoRA's is 10× the recipe's), the length of training, the batch, the
    /// other recipe knobs, the seed.
    let parts (e: Experiment) =
        let r = e.Recipe
        [ e.Data.Name
          e.Model.Label
          $"lr {g (Recipe.lrFor e.Method r)}"
          (match r.Steps with Some s -> $"{s} steps" | None -> $"{r.Epochs} epochs")
          $"batch {r.BatchSize}"
          $"max length {r.MaxLength}"
          $"{r.Schedule} schedule".ToLowerInvariant()
          $"warmup {g r.WarmupRatio}"
          $"weight decay {g r.WeightDecay}"
          $"clip {g r.MaxGradNorm}"
          (match r.Precision with Precision.BFloat16 -> $"bf16 ({r.BFloat16Update})" | _ -> "fp32")
          (match r.OptimizerState with MoFO.Optim.MomentStorage.Blockwise8Bit -> "8-bit states" | _ -> "fp32 states")
          (match r.TrainLimit with Some n -> $"{n} examples" | None -> "all examples")
          (match r.SampleFraction with Some f -> $"{g (100.0 * f)} %% of the data" | None -> "all of the data")
          (match e.Watch.Budget with
           | [] -> "no budget"
           | b -> "budget " + String.Join(", ", b |> List.map (fun (w, x) -> $"{w.Name} {g x}")))
          $"seed {e.Seed}" ]

    /// The label of one experiment on its own: its own label, else its method's.
    let single (e: Experiment) = e.Label |> Option.defaultValue e.Method.Label

    /// The labels of experiments run together, in order: an experiment's own label as it is; otherwise its method's
    /// label followed by each part (`parts`) that differs among the experiments of that method label without a label
    /// of their own. Experiments that differ only in what a label does not show (the measures, the evaluation
    /// settings) get the same label.
    let distinguish (es: Experiment list) =
        let unlabelled = es |> List.filter (fun e -> e.Label.IsNone)
        es |> List.map (fun e ->
            match e.Label with
            | Some l -> l
            | None ->
                let mine = parts e
                let others = unlabelled |> List.filter (fun o -> o.Method.Label = e.Method.Label) |> List.map parts
                let differing = mine |> List.indexed |> List.filter (fun (i, v) -> others |> List.exists (fun o -> o[i] <> v)) |> List.map snd
                String.Join(" · ", e.Method.Label :: differing))
