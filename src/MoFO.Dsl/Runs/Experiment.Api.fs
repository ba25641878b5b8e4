namespace MoFO.Dsl

open System

/// Building and running experiments (the DSL's front door): builders, `run`, `runAll` (a sweep, each point in its own
/// process), `baseline`.
[<CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Experiment =
    let create model data method recipe measures (scale: Scale) seed =
        { Model = model; Data = data; Method = method; Recipe = recipe; Measures = measures; Seed = seed; Scale = scale; Settings = Settings.Of scale
          Label = None; Watch = Watching.None }
    /// The run's name in tables, JSON and claims, instead of the method's label and what tells it apart.
    let withLabel (label: string) (e: Experiment) = { e with Label = Some label }
    let withMethod m (e: Experiment) = { e with Method = m }
    let withLr lr (e: Experiment) = { e with Recipe = { e.Recipe with Lr = lr } }
    let withSeed s (e: Experiment) = { e with Seed = s }
    let withMeasures ms (e: Experiment) = { e with Measures = ms }
    let withSettings s (e: Experiment) = { e with Settings = s }
    /// Watches forgetting while the run trains (`mofo train --watch-forgetting … --watch-every`): the measures every
    /// `every` steps and at the end, with the held-out loss beside them; the curve is `Run.Watch`.
    let withWatch (measures: Watch list) (every: int) (e: Experiment) = { e with Watch = { e.Watch with Measures = measures; Every = every } }
    /// A forgetting budget (`--forgetting-budget`): the run stops at the first watch whose rise of `measure` over the
    /// base exceeds `limit` (an accuracy: whose change in points falls below `limit`, ≤ 0) and keeps the model of the last
    /// watch within it (`Run.Budget` says so). Watches `measure` if it is not watched yet (every `Watching.Every` steps).
    let withBudget (measure: Watch) (limit: float) (e: Experiment) =
        { e with
            Watch =
                { e.Watch with
                    Measures = (if List.contains measure e.Watch.Measures then e.Watch.Measures else e.Watch.Measures @ [ measure ])
                    Budget = (e.Watch.Budget |> List.filter (fun (w, _) -> w <> measure)) @ [ measure, limit ] } }
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
    /// The first run of a method among runs; an ArgumentException naming the methods present otherwise.
    let find (m: Method) (runs: Run list) =
        match runs |> List.tryFind (fun r -> r.Method = Some m) with
        | Some r -> r
        | None ->
            let present = String.Join(", ", runs |> List.choose (fun r -> r.Method) |> List.map (fun x -> x.Label))
            raise (System.ArgumentException $"no run of {m.Label} among the runs ({present})")
    /// The runs with a method's runs shown under another label (the paper's names: "Adam" for Full FT).
    let relabel (m: Method) (label: string) (runs: Run list) =
        runs |> List.map (fun r -> if r.Method = Some m then { r with Label = label } else r)
    /// Several experiments, each point in its own process (`Sweep.runAll`), labelled so that the labels tell them apart
    /// (`Labels.distinguish`: the method, then the learning rate, seed, … where they differ).
    let runAll (es: Experiment list) =
        for e in es do Identity.check e
        List.map2 (fun (r: Run) label -> { r with Label = label }) (Sweep.runAll es) (Labels.distinguish es)
    /// The base model on the experiment's measures (cached).
    let baseline (e: Experiment) = Training.baseline e
    /// WiSE-FT: the experiment's fine-tuned model interpolated with its base, θ = (1 − t)·θ_base + t·θ_tuned
    /// (`mofo average`), measured like a run. The averaged folder is kept in the run folder (`wise-t<t>/`) and its
    /// measures cached there; no training beyond the experiment's own.
    let averaged (t: float) (e: Experiment) : Run =
        let tuned = Training.runWith false e
        let dir = System.IO.Path.Combine(tuned.Dir, $"""wise-t{t.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)}""")
        let model = System.IO.Path.Combine(dir, "model")
        if not (System.IO.File.Exists(System.IO.Path.Combine(model, "config.json"))) && MoFO.Distributed.Job.IsRoot then
            if System.IO.Directory.Exists model then System.IO.Directory.Delete(model, true)
            MoFO.Models.WeightAverage.Write(e.Model.Path, tuned.ModelPath, t, model, e.Scale.Device)
        let task = lazy (Some (snd (Datasets.load e.Data e.Recipe.MaxLength)))
        let values = Training.evaluate dir model e.Model.Path e.Scale.Device task e.Settings e.Measures
        { tuned with Label = $"{tuned.Label} · WiSE t={t}"; Key = Identity.keyOf dir; ModelPath = model; Dir = dir; Values = values }
    /// `mofo merge`'s options for a `Merge` of n fine-tunes, a tag for its folder and its label.
    let private mergeOf (how: Merge) =
        let inv (x: float) = x.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)
        match how with
        | Merge.TaskArithmetic ws ->
            MoFO.Models.MergeOptions(MoFO.Models.MergeMethod.TaskArithmetic, List.toArray ws),
            "ta-" + String.Join("_", ws |> List.map inv), "task arithmetic " + String.Join(",", ws |> List.map inv)
        | Merge.Ties d -> MoFO.Models.MergeOptions(MoFO.Models.MergeMethod.Ties, null, d), $"ties-d{inv d}", $"TIES d={inv d}"
        | Merge.Dare (d, seed) ->
            MoFO.Models.MergeOptions(MoFO.Models.MergeMethod.Dare, null, d, int64 seed), $"dare-d{inv d}-s{seed}", $"DARE d={inv d} seed {seed}"
    /// Model merging (`mofo merge`): the experiment's fine-tune and the others' (each trained, cached), all of one base
    /// model, merged by their task vectors τᵢ = θᵢ − θ_base and measured like a run. The merged folder is kept in the
    /// experiment's run folder (`merge-<rule>-<hash of the others' runs>/`) and its measures cached there.
    let merged (how: Merge) (others: Experiment list) (e: Experiment) : Run =
        for o in others do
            if o.Model.Path <> e.Model.Path then
                raise (ArgumentException $"Experiment.merged: {o.Model.Label} is not {e.Model.Label}, the base model of the experiment: fine-tunes of one base are merged")
        let options, tag, how = mergeOf how
        let runs = (e :: others) |> List.map (Training.runWith false)
        options.Check runs.Length
        let tuned = runs.Head
        let dir = IO.Path.Combine(tuned.Dir, $"merge-{tag}-{Store.hash (String.Join('|', runs.Tail |> List.map (fun r -> r.Key)))}")
        let model = IO.Path.Combine(dir, "model")
        if not (IO.File.Exists(IO.Path.Combine(model, "config.json"))) && MoFO.Distributed.Job.IsRoot then
            if IO.Directory.Exists model then IO.Directory.Delete(model, true)
            MoFO.Models.TaskMerge.Write(e.Model.Path, runs |> List.map (fun r -> r.ModelPath) |> List.toArray, options, model, e.Scale.Device)
        let task = lazy (Some (snd (Datasets.load e.Data e.Recipe.MaxLength)))
        let values = Training.evaluate dir model e.Model.Path e.Scale.Device task e.Settings e.Measures
        let label = String.Join(" + ", runs |> List.map (fun r -> r.Label)) + $" · {how}"
        { tuned with Label = label; Key = Identity.keyOf dir; ModelPath = model; Dir = dir; Values = values }
    /// A row from an lm-evaluation-harness results JSON (a model evaluated elsewhere, or by `mofo eval --output`): its
    /// benchmark numbers as MoFO.NET's measures (`LmEval.measuresOf`), to put beside runs in a table.
    let fromLmEval (label: string) (file: string) : Run =
        { Label = label; Key = "lm-eval:" + System.IO.Path.GetFullPath file; Method = None; ModelPath = file; BasePath = ""; Dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath file)
          Values = LmEval.measuresOf file; Train = None; Seed = 0 }
