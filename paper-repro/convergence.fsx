// Theorem 1 of the MoFO paper: GD-MoFO with η = 1/L, min_{t<T} ‖g_t‖ against T beside the O(T^-1/2) bound.
// Writes results/convergence.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/convergence.fsx [--seed N] [--strict]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Optim.fs (the same one `./mofo repro convergence` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "convergence" fsi.CommandLineArgs)
