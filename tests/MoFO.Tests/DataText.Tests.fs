/// Text data is strict UTF-8: a record that is not is an error naming the file and its line.
module MoFO.Tests.DataText

open System
open System.IO
open Expecto
open MoFO.Data
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

[<Tests>]
let tests =
    testList "DataText" [
        test "DataText.utf8: jsonl, DPR text, CSV and JSON arrays with a byte that is not UTF-8 name the file and the line" {
            use dir = new TempDir()
            let good = Text.Encoding.UTF8.GetBytes("{\"prompt\": \"a\", \"completion\": \"b\"}\n")
            let bad = Array.concat [ Text.Encoding.UTF8.GetBytes "{\"prompt\": \"caf"; [| 0xE9uy |]; Text.Encoding.UTF8.GetBytes "\", \"completion\": \"x\"}\n" ]
            // far past the reader's first buffer, so that the line must be found in the bytes
            let jsonl = dir.File "bad.jsonl"
            File.WriteAllBytes(jsonl, Array.concat [ yield! List.replicate 500 good; yield bad; yield good ])
            let e = throwsWith<DataFormatException> (fun () -> InstructionData.Read(jsonl, DataFormat.Jsonl) |> ignore)
            Expect.equal e.Line (System.Nullable 501) $"the line: {e.Message}"
            Expect.stringContains e.Message "not valid UTF-8" "what is wrong"
            Expect.stringContains e.Message "0xE9" "the byte"
            let array = dir.File "bad.json"
            File.WriteAllBytes(array, Array.concat [ Text.Encoding.UTF8.GetBytes "[\n{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n{\"instruction\": \"caf"; [| 0xC3uy; 0x28uy |]; Text.Encoding.UTF8.GetBytes "\", \"input\": \"\", \"output\": \"b\"}\n]\n" ])
            let e = throwsWith<DataFormatException> (fun () -> InstructionData.Read(array, DataFormat.Alpaca) |> ignore)
            Expect.equal e.Line (System.Nullable 3) $"the line: {e.Message}"
            let csv = dir.File "bad.csv"
            File.WriteAllBytes(csv, Array.concat [ Text.Encoding.UTF8.GetBytes "a,b\n1,2\n"; [| 0xFFuy |]; Text.Encoding.UTF8.GetBytes ",3\n" ])
            let e = throwsWith<DataFormatException> (fun () -> Csv.Read csv |> Seq.toList |> ignore)
            Expect.equal e.Line (System.Nullable 3) $"the line: {e.Message}"
            let dpr = dir.File "bad.c.txt"
            File.WriteAllBytes(dpr, Array.concat [ Text.Encoding.UTF8.GetBytes "The cat chased the dog because it was hungry.\nit\ncat,dog\n"; [| 0x80uy |]; Text.Encoding.UTF8.GetBytes "cat\n" ])
            let e = throwsWith<DataFormatException> (fun () -> Dpr.Read dpr |> ignore)
            Expect.equal e.Line (System.Nullable 4) $"the line: {e.Message}"
        }

        test "DataText.bom: a UTF-8 byte-order mark is skipped" {
            use dir = new TempDir()
            let jsonl = dir.File "bom.jsonl"
            File.WriteAllBytes(jsonl, Array.append [| 0xEFuy; 0xBBuy; 0xBFuy |] (Text.Encoding.UTF8.GetBytes "{\"prompt\": \"a\", \"completion\": \"b\"}\n"))
            Expect.equal (InstructionData.Read(jsonl, DataFormat.Jsonl)).Count 1 "one record"
        }
    ]
