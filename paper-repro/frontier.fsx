// Beyond the paper: learning–forgetting frontiers. Each method (Full FT, MoFO at α = 15 % and 5 %, HFT, L2, gradient-
// filtered and randomized BCD, Lion) is fine-tuned on DPR at three learning rates and two seeds; forgetting (the rise
// of the pretraining-loss proxy) is plotted against the held-out fine-tuning loss, and each method is compared with
// Full FT at matched fine-tuning loss (interpolated along each seed's frontier), with a band over seeds.
// Writes results/frontier.{json,md,html}. Points run in parallel (one per core) and are cached in results/cache:
// an interrupted sweep re-run continues from the finished points. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/frontier.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Frontier.fs (the same one `./mofo repro frontier` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "frontier" fsi.CommandLineArgs)
