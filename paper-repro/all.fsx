// Every table and figure of the MoFO paper in turn (toy example, convergence, Tables 1–6, Figures 1, 3, 4), then
// results/index.html linking them all with how many claims hold. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/all.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--smoke]
// Runs and evaluations are cached in results/cache: a second run (or one after an interruption) reuses them.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "all" fsi.CommandLineArgs)
