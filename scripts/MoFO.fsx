// References every assembly a MoFO.NET script needs and starts the native runtime. In your script, at the top level:
//   #load "../scripts/Build.fsx"    // builds MoFO.NET when needed (paths relative to your script)
//   #load "../scripts/MoFO.fsx"
#r "../src/MoFO.Dsl/bin/Release/net10.0/TorchSharp.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Microsoft.ML.Tokenizers.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Parquet.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Plotly.NET.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/DynamicObj.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Giraffe.ViewEngine.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Newtonsoft.Json.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Fable.Core.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/Argu.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/FSharp.SystemTextJson.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Core.dll"
#r "../src/MoFO.Dsl/bin/Release/net10.0/MoFO.Dsl.dll"

MoFO.Runtime.init ()
