// Theorem 1 of the MoFO paper: GD-MoFO with η = 1/L, min_{t<T} ‖g_t‖ against T beside the O(T^-1/2) bound.
// Writes results/convergence.json, .md and .html (the output contract in DESIGN.md).
// Build first (./mofo info builds Release), then:  dotnet fsi paper-repro/convergence.fsx [--seed N] [--scale tiny] [--strict]
#r "../src/MoFO.Dsl/bin/Release/net10.0/TorchSharp.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Core.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Plotly.NET.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Dsl.dll"

MoFO.Runtime.init ()
exit (MoFO.Dsl.Repro.Optim.runScript "convergence" fsi.CommandLineArgs)
