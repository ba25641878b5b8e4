// Section 4 of the MoFO paper: Adam vs MoFO (α = 50 %) on the two-parameter toy problem.
// Writes results/toy-example.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/toy-example.fsx [--seed N] [--strict]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Optim.fs (the same one `./mofo repro toy-example` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "toy-example" fsi.CommandLineArgs)
