// Table 6 of the MoFO paper: at α = 10 %, MoFO (top-α momentum) against gradient-filtered BCD (top-α gradient) and
// randomized BCD (a random α) on MetaMathQA, with Full FT for reference.
// Writes results/table6.{json,md,html}. Build once (./mofo info), then:
//   dotnet fsi paper-repro/table6.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Repro.Paper.fs (the same one `./mofo repro table6` runs).
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Repro.All.run "table6" fsi.CommandLineArgs)
