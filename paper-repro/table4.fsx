// Table 4 of the MoFO paper: the same comparison on Code-Alpaca (MoFO α = 10 %); HumanEval and general capability.
// Writes results/table4.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table4.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table4` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table4" fsi.CommandLineArgs)
