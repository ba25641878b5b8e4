// Table 5 of the MoFO paper: continual fine-tuning of TinyLlama-1.1B on the TRACE stream (tiny: stories260K on four
// tasks from the data root); OP and BWT for Full FT, HFT, MoFO (α = 5 %), GEM and Replay alone and with MoFO, and MTL.
// Writes results/table5.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table5.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table5` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table5" fsi.CommandLineArgs)
