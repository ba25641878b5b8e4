/// How each `Dataset` is read: its training examples and its held-out task (the task measures use it).
module MoFO.Dsl.Datasets

open MoFO
open MoFO.Data

/// The first `n` of a seeded permutation are held out; the rest train.
let private split (all: System.Collections.Generic.List<TrainingExample>) (n: int) =
    let order = DataOrder.Epoch(all.Count, 0L, 0)
    let held = order |> Array.truncate n |> Array.map (fun i -> all[i]) |> Array.toList
    let heldSet = System.Collections.Generic.HashSet(order |> Array.truncate n)
    let train = [ for i in 0 .. all.Count - 1 do if not (heldSet.Contains i) then all[i] ]
    train, held

/// Training and held-out examples of a dataset, and the task's multiple-choice form where it has one.
let load (d: Dataset) (maxLength: int) : TrainingExample list * TaskData =
    let task heldOut choices = { Name = d.Name; HeldOut = heldOut; Choices = choices; MaxLength = maxLength }
    match d with
    | Dataset.Dpr ->
        let trainPath = DataRoot.Require DataRoot.Assets.DprTrain
        let testPath = DataRoot.Require DataRoot.Assets.DprTest
        let train = InstructionData.Read(trainPath, DataFormat.Dpr) |> Seq.toList
        let held = InstructionData.Read(testPath, DataFormat.Dpr, "eval", 0) |> Seq.toList
        train, task held (Some (Dpr.AsMultipleChoice(Dpr.Read testPath, 0) |> Seq.toList))
    | Dataset.MetaMathQA None ->
        let t, h = split (InstructionData.Read(DataRoot.Require DataRoot.Assets.MetaMathQA, DataFormat.Tulu)) 128
        t, task h None
    | Dataset.MetaMathQA (Some p) ->
        // the full MetaMathQA trains; the authors' 1,024-example validation subset under the data root is held out
        let train = InstructionData.Read(p, (if p.EndsWith ".json" then DataFormat.Alpaca else DataFormat.Tulu)) |> Seq.toList
        train, task (InstructionData.Read(DataRoot.Require DataRoot.Assets.MetaMathQA, DataFormat.Tulu) |> Seq.toList) None
    | Dataset.CodeAlpaca p ->
        let path = p |> Option.defaultWith (fun () -> DataRoot.Require DataRoot.Assets.CodeAlpaca)
        let t, h = split (InstructionData.Read(path, DataFormat.Alpaca, skipEmpty = true)) 128
        t, task h None
    | Dataset.Gsm8kTrain ->
        let train = InstructionData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTrain, DataFormat.Gsm8k) |> Seq.toList
        let held = InstructionData.Read(DataRoot.Require DataRoot.Assets.Gsm8kTest, DataFormat.Gsm8k) |> Seq.truncate 128 |> Seq.toList
        train, task held None
    | Dataset.File (_, path, format, heldOut) ->
        match heldOut with
        | Some h -> InstructionData.Read(path, format) |> Seq.toList, task (InstructionData.Read(h, format, "eval") |> Seq.toList) None
        | None ->
            let t, h = split (InstructionData.Read(path, format)) 128
            t, task h None
