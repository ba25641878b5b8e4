// Figures 1 and 3 of the MoFO paper: fine-tuning loss and pretraining loss over the plane through the pretrained
// weights and two fine-tuned ones (Adam and Lion; Adam and MoFO), with the distances of each minimum.
// Writes results/figure-landscape.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/figure-landscape.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro figure-landscape` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "figure-landscape" fsi.CommandLineArgs)
