// A first script: reference the built assemblies, start the native runtime, run a backward pass, print the gradient.
//   dotnet fsi scripts/gradient.fsx     (Build.fsx builds MoFO.NET in Release on first use)
#load "Build.fsx"
#r "../src/MoFO.Dsl/bin/Release/net10.0/TorchSharp.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Core.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Dsl.dll"

open TorchSharp

// Under dotnet fsi, TorchSharp cannot find its (patched) native bridge by itself: load it before the first torch call.
MoFO.Runtime.init ()

let x = torch.tensor([| 1.0f; 2.0f; 3.0f |])
let w = torch.tensor([| 0.5f; -1.0f; 2.0f |], requires_grad = true)
let y = (w * x).sum()
y.backward()
let show (t: torch.Tensor) = t.data<float32>().ToArray() |> Array.map string |> String.concat "; "
printfn "y = sum(w * x) = %g" (y.item<float32>())
printfn "gradient: [%s]" (show w.grad)
