// Load the real stories260K model from the data root and continue a prompt greedily.
//   dotnet fsi scripts/generate.fsx ["Once upon a time"]
#load "Build.fsx"
#load "MoFO.fsx"

open MoFO
open MoFO.Models

let prompt = match fsi.CommandLineArgs with [| _; p |] -> p | _ -> "Once upon a time"
let model = ModelLoader.Load(DataRoot.Require DataRoot.Assets.Stories260K)
let text = model.Generate([ prompt ], GenerationOptions(MaxNewTokens = 40)).[0]
printfn "%s%s" prompt text
