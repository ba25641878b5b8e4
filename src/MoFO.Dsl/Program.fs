module MoFO.Dsl.Program

open System

[<EntryPoint>]
let main argv =
    try
        MoFO.Dsl.Cli.Main.run argv
    with
    | :? MoFO.MissingAssetException as e ->
        eprintfn "mofo: %s" e.Message
        3
    | :? ArgumentException as e ->
        eprintfn "mofo: %s" e.Message
        2
