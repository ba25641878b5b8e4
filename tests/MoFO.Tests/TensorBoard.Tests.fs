/// TensorBoard event files from training, read back by an independent reader of the format written down here from its
/// public description (TensorFlow's `tensorflow/core/lib/io/record_writer.cc` and `event.proto` / `summary.proto`):
/// each record is a little-endian uint64 length, the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of
/// the data; mask(c) = ((c >>> 15) ||| (c <<< 17)) + 0xa282ead8. The data is a protobuf `Event`: wall_time = 1
/// (double), step = 2 (int64), file_version = 3 (string), summary = 5 (`Summary`: repeated value = 1, each `Value`:
/// tag = 1 (string), simple_value = 2 (float)).
module MoFO.Tests.TensorBoard

open System
open System.IO
open Expecto
open MoFO
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private crcTable =
    Array.init 256 (fun n ->
        let mutable c = uint32 n
        for _ in 1 .. 8 do c <- if c &&& 1u <> 0u then 0x82F63B78u ^^^ (c >>> 1) else c >>> 1
        c)

/// CRC-32C (Castagnoli), reflected, initial and final value 0xFFFFFFFF.
let crc32c (bytes: byte[]) =
    let mutable c = 0xFFFFFFFFu
    for b in bytes do c <- crcTable[int ((c ^^^ uint32 b) &&& 0xFFu)] ^^^ (c >>> 8)
    c ^^^ 0xFFFFFFFFu

let private masked (c: uint32) = ((c >>> 15) ||| (c <<< 17)) + 0xa282ead8u

/// The records of a TFRecord file, each CRC checked.
let records (file: string) =
    let bytes = File.ReadAllBytes file
    let mutable i = 0
    [ while i < bytes.Length do
        let header = bytes[i .. i + 7]
        let length = BitConverter.ToUInt64(header, 0) |> int
        if BitConverter.ToUInt32(bytes, i + 8) <> masked (crc32c header) then failtestf "record at %d: the length's CRC does not match" i
        let data = bytes[i + 12 .. i + 12 + length - 1]
        if BitConverter.ToUInt32(bytes, i + 12 + length) <> masked (crc32c data) then failtestf "record at %d: the data's CRC does not match" i
        yield data
        i <- i + 12 + length + 4 ]

/// A protobuf message as (field number, wire type, value) triples; value: uint64 for varints, bytes otherwise.
let fields (data: byte[]) =
    let mutable i = 0
    let varint () =
        let mutable x = 0UL
        let mutable shift = 0
        let mutable go = true
        while go do
            let b = data[i]
            i <- i + 1
            x <- x ||| (uint64 (b &&& 0x7Fuy) <<< shift)
            shift <- shift + 7
            go <- b &&& 0x80uy <> 0uy
        x
    [ while i < data.Length do
        let key = varint ()
        let field, wire = int (key >>> 3), int (key &&& 7UL)
        match wire with
        | 0 -> yield field, wire, box (varint ())
        | 1 -> yield field, wire, box data[i .. i + 7]; i <- i + 8
        | 2 -> let n = int (varint ()) in yield field, wire, box data[i .. i + n - 1]; i <- i + n
        | 5 -> yield field, wire, box data[i .. i + 3]; i <- i + 4
        | w -> failtestf "unexpected wire type %d" w ]

/// The scalar summaries of an event file: (step, tag, value).
let scalars (file: string) =
    [ for r in records file do
        let f = fields r
        let step = f |> List.tryPick (fun (n, _, v) -> if n = 2 then Some (int64 (unbox<uint64> v)) else None)
        for (n, _, v) in f do
            if n = 5 then
                for (vn, _, value) in fields (unbox<byte[]> v) do
                    if vn = 1 then
                        let vf = fields (unbox<byte[]> value)
                        let tag = vf |> List.pick (fun (k, _, x) -> if k = 1 then Some (Text.Encoding.UTF8.GetString(unbox<byte[]> x)) else None)
                        match vf |> List.tryPick (fun (k, w, x) -> if k = 2 && w = 5 then Some (BitConverter.ToSingle(unbox<byte[]> x, 0)) else None) with
                        | Some x -> yield (defaultArg step 0L, tag, float x)
                        | None -> () ]

[<Tests>]
let tests =
    testList "TensorBoard" [
        test "TensorBoard.crc32c: the reader's CRC-32C gives the standard check value" {
            // CRC-32C of the ASCII digits "123456789" is 0xE3069283 (the catalogue's check value)
            Expect.equal (crc32c (Text.Encoding.ASCII.GetBytes "123456789")) 0xE3069283u "check value"
        }

        test "TensorBoard.train: mofo train --tensorboard writes records that an independent reader parses, with the metrics of every step" {
            use dir = new TempDir()
            let out, board = dir.File "run", dir.File "tb"
            let code, _, err =
                captureConsole (fun () ->
                    MoFO.Dsl.Cli.Main.run [| "train"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--data"; requireAsset DataRoot.Assets.DprTrain
                                             "--format"; "dpr"; "--steps"; "4"; "--batch-size"; "4"; "--lr"; "1e-3"; "--eval-every"; "2"
                                             "--output"; out; "--tensorboard"; board |])
            Expect.equal code 0 err
            let files = Directory.GetFiles(board, "events.out.tfevents.*")
            Expect.equal files.Length 1 "one event file"
            let s = scalars files[0]
            let metrics = MoFO.Training.RunFolder(out).ReadMetrics() |> Seq.toList
            for m in metrics do
                let at tag = s |> List.tryPick (fun (step, t, v) -> if step = int64 m.Step && t = tag then Some v else None)
                Expect.equal (at "train/loss") (Some (float (float32 m.Loss))) $"step {m.Step}: the loss"
                Expect.equal (at "train/learning_rate") (Some (float (float32 m.LearningRate))) $"step {m.Step}: the learning rate"
                Expect.equal (at "train/grad_norm") (Some (float (float32 m.GradNorm))) $"step {m.Step}: the gradient norm"
                Expect.isSome (at "train/tokens_per_second") $"step {m.Step}: tokens/s"
                if m.EvalLoss.HasValue then Expect.equal (at "eval/loss") (Some (float (float32 m.EvalLoss.Value))) $"step {m.Step}: the held-out loss"
            Expect.equal (s |> List.filter (fun (_, t, _) -> t = "eval/loss") |> List.length) 2 "held-out loss at steps 2 and 4"
        }
    ]
