namespace MoFO.Dsl

/// Building and running experiments (the DSL's front door): builders, `run`, `runAll` (a sweep, each point in its own
/// process), `baseline`.
[<CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Experiment =
    let create model data method recipe measures (scale: Scale) seed =
        { Model = model; Data = data; Method = method; Recipe = recipe; Measures = measures; Seed = seed; Scale = scale; Settings = Settings.Of scale }
    let withMethod m (e: Experiment) = { e with Method = m }
    let withLr lr (e: Experiment) = { e with Recipe = { e.Recipe with Lr = lr } }
    let withSeed s (e: Experiment) = { e with Seed = s }
    let withMeasures ms (e: Experiment) = { e with Measures = ms }
    let withSettings s (e: Experiment) = { e with Settings = s }
    /// One experiment per method.
    let compare (methods: Method list) (e: Experiment) = methods |> List.map (fun m -> withMethod m e)
    /// One experiment per value, from a function of it (a sweep over α, a learning rate, λ, …).
    let sweep (values: 'a list) (f: 'a -> Experiment -> Experiment) (e: Experiment) = values |> List.map (fun v -> f v e)
    /// Every experiment over several seeds.
    let seeds (ss: int list) (es: Experiment list) = [ for e in es do for s in ss -> withSeed s e ]

    /// Training and held-out examples of a dataset (`Datasets.load`).
    let load (d: Dataset) (maxLength: int) = Datasets.load d maxLength
    let trainingKey (e: Experiment) = Identity.trainingKey e
    let runDir (e: Experiment) = Identity.runDir e
    let options (e: Experiment) (showProgress: bool) = Identity.options e showProgress

    /// Trains and evaluates one experiment in this process (cached: a finished run is read from the store).
    let runWith (showProgress: bool) (e: Experiment) = Training.runWith showProgress e
    let run (e: Experiment) = Training.runWith true e
    /// Several experiments, each point in its own process (`Sweep.runAll`).
    let runAll (es: Experiment list) = Sweep.runAll es
    /// The base model on the experiment's measures (cached).
    let baseline (e: Experiment) = Training.baseline e
