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
      Settings: Settings }

/// A model with its measured values: the base model or a fine-tuned one.
type Run =
    { Label: string
      Method: Method option
      ModelPath: string
      BasePath: string
      Dir: string
      Values: Map<Measure, float>
      /// the training summary (the run folder's train_summary.json); None for the base model and failed runs
      Train: TrainResult option
      Seed: int }
    member r.Item(m: Measure) = r.Values |> Map.tryFind m |> Option.defaultValue nan

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
               else []))

    /// The run's folder in the store.
    let runDir (e: Experiment) = Store.folder "runs" $"{e.Data.Name}-{e.Method.Key}-lr{Store.inv e.Recipe.Lr}-s{e.Seed}" (trainingKey e)

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
