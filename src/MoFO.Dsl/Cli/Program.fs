module MoFO.Dsl.Program

[<EntryPoint>]
let main argv = MoFO.Dsl.Cli.Main.run argv
