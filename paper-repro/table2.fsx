// Table 2 of the MoFO paper: the same fine-tune with Adam and with MoFO (α = 15 %); MoFO should reach a similar
// fine-tuning loss at a fraction of Adam's distance from the pretrained model, and forget less.
// Writes results/table2.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table2.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table2` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table2" fsi.CommandLineArgs)
