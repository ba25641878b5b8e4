// Section 4 of the MoFO paper: Adam vs MoFO (α = 50 %) on the two-parameter toy problem.
// Writes results/toy-example.{json,md,html}. Build once (./mofo info), then:
//   dotnet fsi paper-repro/toy-example.fsx [--seed N] [--strict]
// The pipeline itself: src/MoFO.Dsl/Repro.Optim.fs (the same one `./mofo repro toy-example` runs).
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Repro.All.run "toy-example" fsi.CommandLineArgs)
