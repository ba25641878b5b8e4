// Section 4 of the MoFO paper: Adam vs MoFO (α = 50 %) on the two-parameter toy problem.
// Writes results/toy-example.json, .md and .html (the output contract in DESIGN.md).
// Build first (./mofo info builds Release), then:  dotnet fsi paper-repro/toy-example.fsx [--seed N] [--scale tiny] [--strict]
#r "../src/MoFO.Dsl/bin/Release/net10.0/TorchSharp.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Core.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Plotly.NET.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Dsl.dll"

MoFO.Runtime.init ()
exit (MoFO.Dsl.Repro.Optim.runScript "toy-example" fsi.CommandLineArgs)
