// Theorem 1 of the MoFO paper: GD-MoFO with η = 1/L, min_{t<T} ‖g_t‖ against T beside the O(T^-1/2) bound.
// Writes results/convergence.{json,md,html}. Build once (./mofo info), then:
//   dotnet fsi paper-repro/convergence.fsx [--seed N] [--strict]
// The pipeline itself: src/MoFO.Dsl/Repro.Optim.fs (the same one `./mofo repro convergence` runs).
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Repro.All.run "convergence" fsi.CommandLineArgs)
