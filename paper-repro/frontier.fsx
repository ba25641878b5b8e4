// Beyond the paper: the learning–forgetting frontier of each method on DPR (Pythia-160m; tiny: stories260K). Each
// method runs at three learning rates (the adapters — LoRA, DoRA, PiSSA — at 10× the recipe's); forgetting is the rise
// of the pretraining-loss proxy. The frontiers are compared at matched fine-tuning loss (against Full FT, against Full
// FT + WiSE-FT, MoFO against LoRA), the adapters' points are checked for Pareto dominance by MoFO's, every Full FT
// fine-tune is also averaged with its base (WiSE-FT) and sparsified (TIES, DARE), the sweep asks which measure predicts
// forgetting, and each method's best task loss within a forgetting budget is read off the runs' watches. About 45
// minutes at tiny scale on 2 cores from an empty cache (not part of all.fsx).
// Writes results/frontier.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/frontier.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro frontier` runs this script. Edit the methods, rates, seeds or comparisons below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The methods, rates and seeds. To keep the sweep within 45 minutes on 2 cores, the methods whose earlier frontier
    // numbers are in docs/results.md (MoFO at α = 5 %, L2, Lion, LoRA r = 2, the BCDs) are left out.
    let lora r = Method.LoRA (r, None)
    let mofo = Method.MoFO 0.15
    let methods =
        if c.Smoke then [ Method.FullFT; mofo; lora 2 ]
        else [ Method.FullFT; mofo; Method.HFT; Method.LISA (2, 20); Method.BAdam 50; Method.Spectrum 0.25; lora 8; Method.DoRA 8; Method.PiSSA 8 ]
    // tiny: 1e-4 under-trains, 3e-4 is near the best held-out loss, 1e-3 over-trains DPR (300 steps ≈ 3.6 epochs)
    let lrs = if c.Smoke then [ 1e-3; 3e-3 ] elif c.IsTiny then [ 1e-4; 3e-4; 1e-3 ] else [ 1e-5; 2e-5; 5e-5 ]
    let seeds = if c.Smoke then [ c.Seed ] else [ c.Seed; c.Seed + 1 ]

    // The sweep: every method × rate × seed, measured on the task, on forgetting and on the candidate predictors.
    // Every run watches the pretraining-loss proxy (with the held-out loss) every 50 steps: the budgeted points below.
    let e =
        experiment c Pythia160m Dataset.Dpr DprKind [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.Distance; Measure.KlToBase ]
        |> Experiment.withWatch [ Watch.PretrainProxy ] 50
    let baseRun, points = Frontier.run methods lrs seeds e

    // WiSE-FT: every Full FT fine-tune averaged with the base at t (its cached run, no training).
    let ts = if c.Smoke then [ 0.5 ] else [ 0.25; 0.5; 0.75 ]
    let wise = FrontierReport.wise ts (Frontier.experiments [ Method.FullFT ] lrs seeds e) baseRun
    // TIES (top 20 % of the task vector) and DARE (half of it, rescaled) of every Full FT fine-tune alone: a
    // sparsified task vector, no training.
    let merges = if c.Smoke then [ Merge.Ties 0.2 ] else [ Merge.Ties 0.2; Merge.Dare (0.5, 0) ]
    let merged = FrontierReport.merged merges (Frontier.experiments [ Method.FullFT ] lrs seeds e) baseRun
    let wiseCurve seed =
        (baseRun[Measure.TaskLoss], 0.0)
        :: [ for p in points do if p.Method = Method.FullFT && p.Seed = seed then yield p.Learn, p.Forget ]
        @ [ for w in wise do if w.Seed = seed then yield w.Learn, w.Forget ]

    // The comparisons at matched fine-tuning loss: each method against Full FT; LoRA against MoFO; MoFO and LoRA against
    // Full FT + WiSE-FT. Where LoRA's frontier does not overlap MoFO's: is every LoRA point beaten on both axes?
    let loras = methods |> List.filter (fun m -> match m with Method.LoRA _ | Method.DoRA _ | Method.PiSSA _ -> true | _ -> false)
    let matched =
        (methods |> List.filter (fun m -> m <> Method.FullFT) |> List.map (Frontier.matched Method.FullFT points))
        @ [ for m in loras -> Frontier.matched m points mofo ]
        @ [ for m in mofo :: loras -> Frontier.matchedWith "Full FT + WiSE-FT" wiseCurve points m ]
        @ [ for how in merges -> Frontier.matchedWith $"Full FT + {FrontierReport.mergeName how}" (FrontierReport.mergeCurve how merged) points mofo ]
    let dominance = [ for m in loras -> m, Frontier.dominatedBy mofo points m ]

    // Which measure predicts forgetting: Spearman's ρ over every fine-tune and WiSE-FT point, with a bootstrap band.
    let predictors : (string * (Run -> float)) list =
        [ "L2 distance from base", (fun r -> r[Measure.Distance])
          "updated fraction (entries ever changed)", (fun r -> match r.Train with Some t -> t.TouchedFraction | None -> nan)
          "KL to base on the task's answers", (fun r -> r[Measure.KlToBase]) ]
    let sample = [ for p in points -> p.Forget, p.Run ] @ [ for w in wise -> w.Forget, w.Run ] @ [ for m in merged -> m.Forget, m.Run ]
    let correlations = FrontierReport.correlations predictors sample c.Seed

    // The claims: MoFO (and each method) forgets less at matched loss; MoFO dominates LoRA; KL to base predicts best.
    // The best task loss each method reaches within a forgetting budget (every watch of every run is a candidate).
    let budgets = [ for b in (if c.IsTiny then [ 0.05; 0.1; 0.2 ] else [ 0.02; 0.05; 0.1 ]) do for m in methods -> Frontier.withinBudget b points m ]

    let checks =
        [ for mt in matched -> FrontierReport.matchedCheck mt ]
        @ [ for m in loras -> FrontierReport.dominanceCheck mofo points m ]
        @ [ FrontierReport.predictorCheck "KL to base on the task's answers" correlations ]

    let layout = FrontierReport.markdown e methods lrs seeds baseRun points wise matched dominance mofo correlations budgets (tinyNote c) + FrontierReport.mergedTable merged
    finish c { output "frontier" "Learning–forgetting frontiers at matched fine-tuning loss" with
                 ExtraRows = FrontierReport.rows e.Recipe baseRun points wise matched correlations budgets @ FrontierReport.mergedRows merged; Layout = Some layout; Checks = checks
                 Figure = Some (FrontierReport.figure methods lrs ts baseRun points wise predictors correlations) }))
