// Table 1 of the MoFO paper: Pythia-160m (tiny: stories260K) fine-tuned on FLAN's definite pronoun resolution with
// Adam and with Lion; commonsense accuracy (HellaSwag, ARC-easy, ARC-challenge) before and after, plus the tiny-scale
// signal (held-out DPR loss and accuracy, pretraining-loss proxy, story cloze, greedy intactness, distance).
// Writes results/table1.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table1.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table1` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table1" fsi.CommandLineArgs)
