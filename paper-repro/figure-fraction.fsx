// Figure 4 of the MoFO paper: MoFO's update fraction α from 5 % to 80 % (and Full FT as 100 %) on MetaMathQA:
// (a) fine-tuning performance and (b) forgetting of general capability against α.
// Writes results/figure-fraction.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/figure-fraction.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro figure-fraction` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "figure-fraction" fsi.CommandLineArgs)
