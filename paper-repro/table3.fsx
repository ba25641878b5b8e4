// Table 3 of the MoFO paper: Llama-2-7B (tiny: stories260K) fine-tuned on MetaMathQA with Full FT, HFT, L1 and L2
// regularization toward the pretrained weights, and MoFO (α = 15 %); GSM8K and the change of general capability.
// Writes results/table3.{json,md,html}. Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/table3.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// The pipeline itself: src/MoFO.Dsl/Reproductions/Repro.Paper.fs (the same one `./mofo repro table3` runs).
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

exit (MoFO.Dsl.Cli.Main.script "table3" fsi.CommandLineArgs)
