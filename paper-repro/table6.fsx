// Table 6 of the MoFO paper: at α = 10 %, MoFO (top-α momentum) against gradient-filtered BCD (top-α gradient) and
// randomized BCD (a random α) on MetaMathQA, with Full FT for reference.
// Writes results/table6.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table6.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table6` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table6" fsi.CommandLineArgs)
