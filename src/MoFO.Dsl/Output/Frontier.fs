/// Learning–forgetting frontiers: each method over a learning-rate grid and several seeds, forgetting (y) against
/// fine-tuning performance (x). A single learning rate can flatter any method; along the frontier, methods are compared
/// at matched fine-tuning loss.
module MoFO.Dsl.Frontier

open System
open MoFO.Dsl.Evals

/// One fine-tune of the sweep: x = held-out task loss (lower = learned more), y = forgetting (the rise of the
/// pretraining-loss proxy over the base model; lower = forgot less).
type Point = { Method: Method; Lr: float; Seed: int; Learn: float; Forget: float; Run: Run }

/// The sweep as experiments: every method × learning rate × seed (each member at its learning-rate factor: Lion 0.2×, `Recipe.lrFor`).
let experiments (methods: Method list) (lrs: float list) (seeds: int list) (e: Experiment) =
    e |> Experiment.compare methods |> List.collect (Experiment.sweep lrs Experiment.withLr) |> Experiment.seeds seeds

/// Runs the sweep (in parallel, resumable: finished points come from the cache) and returns its points.
let run (methods: Method list) (lrs: float list) (seeds: int list) (e: Experiment) =
    let e = { e with Measures = (e.Measures @ [ Measure.TaskLoss; Measure.PretrainProxy ]) |> List.distinct }
    let baseRun = Experiment.baseline e
    let es = experiments methods lrs seeds e
    let runs = Experiment.runAll es
    let points =
        List.map2 (fun (x: Experiment) (r: Run) ->
            { Method = x.Method; Lr = x.Recipe.Lr; Seed = x.Seed; Learn = r[Measure.TaskLoss]; Forget = r[Measure.PretrainProxy] - baseRun[Measure.PretrainProxy]; Run = r }) es runs
    baseRun, points

/// y(x) of a curve by linear interpolation over its points sorted by x; None outside [min x, max x].
let interpolate (curve: (float * float) list) (x: float) =
    let pts = curve |> List.filter (fun (a, b) -> Double.IsFinite a && Double.IsFinite b) |> List.sortBy fst
    match pts with
    | [] -> None
    | _ when x < fst pts.Head || x > fst (List.last pts) -> None
    | [ (_, y) ] -> Some y
    | _ ->
        pts |> List.pairwise |> List.tryPick (fun ((x0, y0), (x1, y1)) ->
            if x >= x0 && x <= x1 then Some (if x1 = x0 then (y0 + y1) / 2.0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)) else None)

/// The learning–forgetting frontier of a set of (x = task loss, y = forgetting) points: the Pareto-optimal ones (no
/// other point has both a lower loss and less forgetting), sorted by x — along it, forgetting falls as loss rises.
/// A point that learned less *and* forgot more (an over- or under-trained learning rate) is not on the frontier.
let pareto (points: (float * float) list) =
    points
    |> List.filter (fun (a, b) -> Double.IsFinite a && Double.IsFinite b)
    |> List.sortBy (fun (a, b) -> a, b)
    |> List.fold (fun (front, best) (a, b) -> if b < best then (a, b) :: front, b else front, best) ([], infinity)
    |> fst
    |> List.rev

/// How much less `curve` forgets than `reference` at matched learning: the mean of reference(x) − curve(x) over
/// `n` evenly spaced x in the overlap of the x ranges of their frontiers (`pareto`, linearly interpolated; positive =
/// forgets less); None when the ranges do not overlap.
let advantage (reference: (float * float) list) (curve: (float * float) list) (n: int) =
    match pareto reference, pareto curve with
    | [], _ | _, [] -> None
    | reference, curve ->
        // the frontiers are sorted by x: their ranges run from the first point to the last
        let lo, hi = max (fst reference.Head) (fst curve.Head), min (fst (List.last reference)) (fst (List.last curve))
        if lo > hi then None
        else
            let xs = if n <= 1 || lo = hi then [ lo ] else [ for i in 0 .. n - 1 -> lo + (hi - lo) * float i / float (n - 1) ]
            let ds = xs |> List.choose (fun x -> match interpolate reference x, interpolate curve x with Some a, Some b -> Some (a - b, a) | _ -> None)
            if ds.IsEmpty then None
            else Some (ds |> List.averageBy fst, ds |> List.averageBy snd, (lo, hi))

/// The matched-loss comparison of one method with the reference, per seed and over seeds.
type Matched =
    { Method: Method
      /// what the method is compared with ("Full FT", "LoRA (r=8)", "Full FT + WiSE-FT")
      Reference: string
      /// per seed: (mean advantage, the reference's mean forgetting there, the overlap range)
      PerSeed: (int * (float * float * (float * float)) option) list
      Mean: float
      /// mean ± 1.96 standard errors over seeds (NaN with fewer than two seeds)
      BandLow: float
      BandHigh: float
      /// the advantage relative to the reference's forgetting at the same loss
      Relative: float }

/// The matched-loss comparison of `m`'s points with a reference curve per seed (`referenceCurve seed`: its
/// (task loss, forgetting) points, of which the frontier is taken).
let matchedWith (referenceName: string) (referenceCurve: int -> (float * float) list) (points: Point list) (m: Method) =
    let seeds = points |> List.filter (fun p -> p.Method = m) |> List.map (fun p -> p.Seed) |> List.distinct |> List.sort
    let curve seed = points |> List.filter (fun p -> p.Method = m && p.Seed = seed) |> List.map (fun p -> p.Learn, p.Forget)
    let per = [ for s in seeds -> s, advantage (referenceCurve s) (curve s) 9 ]
    let vals = per |> List.choose (fun (_, a) -> a |> Option.map (fun (d, _, _) -> d))
    let refs = per |> List.choose (fun (_, a) -> a |> Option.map (fun (_, r, _) -> r))
    let mean = if vals.IsEmpty then nan else List.average vals
    let se =
        if vals.Length < 2 then nan
        else sqrt ((vals |> List.sumBy (fun v -> (v - mean) ** 2.0)) / float (vals.Length - 1) / float vals.Length)
    { Method = m; Reference = referenceName; PerSeed = per; Mean = mean; BandLow = mean - 1.96 * se; BandHigh = mean + 1.96 * se
      Relative = (if refs.IsEmpty then nan else mean / List.average refs) }

/// How much less `m` forgets than the `reference` method at matched fine-tuning loss (`matchedWith`).
let matched (reference: Method) (points: Point list) (m: Method) =
    let curve seed = points |> List.filter (fun p -> p.Method = reference && p.Seed = seed) |> List.map (fun p -> p.Learn, p.Forget)
    matchedWith reference.Label curve points m

/// The points of `m` that a point of `by` with the same seed beats on both task loss and forgetting, and all of `m`'s
/// points: where two frontiers do not overlap in task loss, dominance still compares them.
let dominatedBy (by: Method) (points: Point list) (m: Method) =
    let mine = points |> List.filter (fun p -> p.Method = m)
    let beaten = mine |> List.filter (fun p -> points |> List.exists (fun q -> q.Method = by && q.Seed = p.Seed && q.Learn < p.Learn && q.Forget < p.Forget))
    beaten, mine

/// The best held-out task loss a method reaches within a forgetting budget (a rise of the pretraining-loss proxy of at
/// most `Budget` nats/token over the base), per seed over the sweep's learning rates, and its mean over seeds.
type WithinBudget =
    { Method: Method
      Budget: float
      /// per seed: (the best task loss, the learning rate the method ran at (`Recipe.lrFor`), the step of that model:
      /// 0 is the base), or None when no model of the seed stays within the budget
      PerSeed: (int * (float * float * int) option) list
      /// the mean over the seeds that have one (NaN when none has)
      Mean: float }

/// The models of a point that a budget can keep, as (task loss, forgetting, step): every watch of a run that watched the
/// pretraining-loss proxy (`Experiment.withWatch [ Watch.PretrainProxy ]`; the base at step 0 included: what a budgeted
/// run keeps when its first watch is already over), else the final model alone.
let budgetCandidates (p: Point) =
    let watched = p.Run.Watch |> List.filter (fun w -> w.Rise.ContainsKey Watch.PretrainProxy.Name && w.HeldOutLoss.HasValue)
    match watched with
    | [] -> [ p.Learn, p.Forget, (match p.Run.Train with Some t -> t.Steps | None -> 0) ]
    | ws -> [ for w in ws -> w.HeldOutLoss.Value, w.Rise[Watch.PretrainProxy.Name], w.Step ]

/// "The best task loss within a forgetting budget": for each seed, the lowest task loss among the method's models
/// (`budgetCandidates`: each watch of each learning rate's run, or each final model) whose forgetting is at most `budget`.
let withinBudget (budget: float) (points: Point list) (m: Method) =
    let mine = points |> List.filter (fun p -> p.Method = m)
    let seeds = mine |> List.map (fun p -> p.Seed) |> List.distinct |> List.sort
    let per =
        [ for s in seeds ->
            let within =
                [ for p in mine do
                    if p.Seed = s then
                        for loss, forget, step in budgetCandidates p do
                            if Double.IsFinite loss && Double.IsFinite forget && forget <= budget then yield loss, p.Lr * p.Method.LrScale, step ]
            s, (if within.IsEmpty then None else Some (List.minBy (fun (l, _, _) -> l) within)) ]
    let found = per |> List.choose (fun (_, b) -> b |> Option.map (fun (l, _, _) -> l))
    { Method = m; Budget = budget; PerSeed = per; Mean = (if found.IsEmpty then nan else List.average found) }
