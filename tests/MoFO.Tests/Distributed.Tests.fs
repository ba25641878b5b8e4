/// Data-parallel training over MPI: the shard plan, two ranks against one process (MoFO and AdamW), a job that loses a
/// rank, and checkpoints resumed with another number of ranks. The two-rank tests launch `mpirun -n 2` with the CLI
/// (MPICH; `.ci/run` installs it) and are skipped with a line where no mpirun is installed.
module MoFO.Tests.Distributed

open System
open System.Diagnostics
open System.IO
open Expecto
open MoFO
open MoFO.Distributed
open MoFO.Tests.Fixtures
open MoFO.Tests.ModelFixtures

let private dll = typeof<MoFO.Dsl.Cli.Main.MofoArgs>.Assembly.Location

let private mpirun () =
    [ "/usr/bin/mpirun.mpich"; "/usr/bin/mpiexec.hydra"; "/usr/bin/mpirun" ] |> List.tryFind File.Exists
    |> Option.defaultWith (fun () -> skiptest "mpirun (MPICH) is not installed: apt install mpich"; "")

/// Starts `dotnet MoFO.Dsl.dll ARGS` in one process (one torch thread) or under `mpirun -n RANKS`.
let private start (ranks: int) (args: string list) =
    let file, argv = if ranks = 1 then "dotnet", dll :: args else mpirun (), [ "-n"; string ranks; "dotnet"; dll ] @ args
    let psi = ProcessStartInfo(file, argv, WorkingDirectory = repoRoot, RedirectStandardOutput = true, RedirectStandardError = true)
    psi.Environment["MOFO_THREADS"] <- "1"
    let p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p, (fun () -> out.Result + err.Result)

let private finish (p: Process, text: unit -> string) =
    if not (p.WaitForExit(TimeSpan.FromMinutes 5.0)) then
        p.Kill true
        failtest "the run did not finish within 5 minutes"
    let code = p.ExitCode
    p.Dispose()
    code, text ()

let private trainArgs (meth: string) (out: string) (extra: string list) =
    [ "train"; "--model"; requireAsset DataRoot.Assets.Stories260K; "--data"; requireAsset DataRoot.Assets.DprTrain; "--format"; "dpr"
      "--method"; meth; "--steps"; "100"; "--batch-size"; "16"; "--micro-batch-size"; "8"; "--lr"; "1e-3"; "--schedule"; "constant"
      "--max-len"; "128"; "--output"; out ] @ extra

let private weights (file: string) =
    let d = MoFO.Checkpoints.SafeTensors.Load file
    d |> Seq.map (fun kv -> kv.Key, kv.Value.``to``(TorchSharp.torch.ScalarType.Float32).data<float32>().ToArray()) |> Map.ofSeq

/// Runs the same command in one process (into `one`) and on 2 ranks (into `two`); both must exit 0.
let private onOneAndTwo (one: TempDir) (two: TempDir) (args: string -> string list) =
    for ranks, dir in [ 1, one; 2, two ] do
        let code, text = finish (start ranks (args dir.Path))
        Expect.equal code 0 text

/// The largest absolute difference between two weight files, and where.
let private largestDifference (a: string) (b: string) =
    let wa, wb = weights a, weights b
    Expect.equal (Set.ofSeq wa.Keys) (Set.ofSeq wb.Keys) "the same tensors"
    wa |> Seq.map (fun (KeyValue (k, v)) -> (Array.map2 (fun (x: float32) y -> abs (float x - float y)) v wb[k] |> Array.max), k) |> Seq.max

/// The header of a safetensors file (names, dtypes, shapes and offsets).
let private header (file: string) =
    use f = File.OpenRead file
    use r = new BinaryReader(f)
    let n = r.ReadInt64()
    Text.Encoding.UTF8.GetString(r.ReadBytes(int n))

/// Waits for the run folder's checkpoint, then kills one process of the run with SIGKILL.
let private killAfterCheckpoint (out: string) (pick: int list -> int) =
    let state = Path.Combine(out, "checkpoint", "trainer_state.json")
    let clock = Stopwatch.StartNew()
    while not (File.Exists state) && clock.Elapsed < TimeSpan.FromMinutes 2.0 do Threading.Thread.Sleep 50
    Expect.isTrue (File.Exists state) "a checkpoint was written"
    let pids =
        Process.GetProcessesByName "dotnet"
        |> Array.choose (fun p ->
            try
                let cmd = File.ReadAllText($"/proc/{p.Id}/cmdline").Replace('\000', ' ')
                if cmd.Contains out then Some p.Id else None
            with _ -> None)
        |> Array.toList
    let victim = pick pids
    let killed = Stopwatch.StartNew()
    Process.GetProcessById(victim).Kill()
    killed

let private rankOf (pid: int) =
    try
        File.ReadAllText($"/proc/{pid}/environ").Split('\000') |> Array.tryPick (fun kv -> if kv.StartsWith "PMI_RANK=" then Some (int (kv.Substring 9)) else None)
    with _ -> None

let private single = lazy (
    // the single-process references, one per method (shared by the tests below)
    let dirs = dict [ for m in [ "mofo"; "adamw" ] -> m, Path.Combine(Path.GetTempPath(), $"mofo-dp-ref-{m}-{Guid.NewGuid():N}") ]
    for KeyValue (m, dir) in dirs do
        let code, text = finish (start 1 (trainArgs m dir [ "--save-every"; "10" ]))
        if code <> 0 then failtestf "the single-process %s run failed (%d): %s" m code text
    dirs)

[<Tests>]
let tests =
    testSequenced <| testList "Distributed" [
        test "Distributed.shardPlan: whole tensors, largest first to the least-loaded rank; balanced, deterministic, every tensor owned once" {
            let numels = [ 100L; 50L; 50L; 10L; 10L; 0L; 7L ]
            let p = ShardPlan(numels, 2)
            // 100 → 0; 50, 50 → 1; 10 → 0 (tie: the lower rank); 10 → 1; 7 → 0 (tie); 0 → 1
            Expect.equal (List.ofSeq p.Owner) [ 0; 1; 1; 0; 1; 1; 0 ] "owners"
            Expect.equal (List.ofSeq p.Load) [ 117L; 110L ] "loads"
            Expect.equal (List.ofSeq (ShardPlan(numels, 2).Owner)) (List.ofSeq p.Owner) "the same plan again"
            let one = ShardPlan(numels, 1)
            Expect.isTrue (one.Owner |> Seq.forall ((=) 0)) "one rank owns everything"
            let many = ShardPlan([ for i in 1L .. 200L -> i * 1000L ], 8)
            Expect.isLessThan many.Imbalance 1.01 $"200 tensors over 8 ranks are balanced within 1 %% ({many.Imbalance})"
        }

        test "Distributed.equal: mpirun -n 2 (one thread per rank), 100 steps of 16 on stories260K + DPR, MoFO and AdamW: the weights of the single process within 1e-5; rank 0 alone writes, in the single process's layout" {
            let refs = single.Force()
            for m in [ "mofo"; "adamw" ] do
                use dir = new TempDir()
                let code, text = finish (start 2 (trainArgs m dir.Path [ "--save-every"; "10" ]))
                Expect.equal code 0 $"{m} on 2 ranks: {text}"
                Expect.stringContains text "2 ranks" "rank 0 says how many ranks run"
                let diff, where = largestDifference (Path.Combine(refs[m], "model", "model.safetensors")) (dir.File "model/model.safetensors")
                Expect.isLessThanOrEqual diff 1e-5 $"{m}: largest difference {diff:G3} ({where})"
                printfn "Distributed.equal: %s, 2 ranks against 1 process after 100 steps: largest |difference| %.3g (%s)" m diff where
                Expect.equal (File.ReadAllLines(dir.File "metrics.jsonl").Length) 100 $"{m}: one metrics line per step (rank 0 alone logs)"
                Expect.equal (header (dir.File "checkpoint/optimizer.safetensors")) (header (Path.Combine(refs[m], "checkpoint", "optimizer.safetensors")))
                    $"{m}: the gathered optimizer state has the single process's names, shapes and layout"
        }

        test "Distributed.kill: kill -9 of one rank mid-run ends the job within 60 s with a message; the checkpoint resumes on 1 rank to the uninterrupted weights" {
            let refs = single.Force()
            use dir = new TempDir()
            let run = start 2 (trainArgs "mofo" dir.Path [ "--save-every"; "10" ])
            let clock = killAfterCheckpoint dir.Path (fun pids -> pids |> List.find (fun p -> rankOf p = Some 1))
            let p, _ = run
            Expect.isTrue (p.WaitForExit(TimeSpan.FromSeconds 60.0)) "the job ended within 60 s"
            let seconds = clock.Elapsed.TotalSeconds
            let code, text = finish run
            Expect.notEqual code 0 "the job failed"
            Expect.isTrue (text.Contains "BAD TERMINATION" || text.Contains "rank") $"a message names the failure: {text}"
            printfn "Distributed.kill: the job ended %.2f s after the kill, exit code %d" seconds code
            let code, text = finish (start 1 (trainArgs "mofo" dir.Path [ "--save-every"; "10"; "--resume" ]))
            Expect.equal code 0 $"resumed on 1 rank: {text}"
            let diff, where = largestDifference (Path.Combine(refs["mofo"], "model", "model.safetensors")) (dir.File "model/model.safetensors")
            Expect.isLessThanOrEqual diff 1e-5 $"resumed 2 → 1: largest difference {diff:G3} ({where})"
        }

        test "Distributed.resume: a single-process checkpoint resumes on 2 ranks to the uninterrupted weights" {
            let refs = single.Force()
            use dir = new TempDir()
            let run = start 1 (trainArgs "mofo" dir.Path [ "--save-every"; "10" ])
            killAfterCheckpoint dir.Path List.head |> ignore
            finish run |> ignore
            let code, text = finish (start 2 (trainArgs "mofo" dir.Path [ "--save-every"; "10"; "--resume" ]))
            Expect.equal code 0 $"resumed on 2 ranks: {text}"
            let diff, where = largestDifference (Path.Combine(refs["mofo"], "model", "model.safetensors")) (dir.File "model/model.safetensors")
            Expect.isLessThanOrEqual diff 1e-5 $"resumed 1 → 2: largest difference {diff:G3} ({where})"
        }

        test "Distributed.zero2: with gradient checkpointing each layer's gradients are summed into their owners in the backward; weights bit-identical to one process (MoFO, 30 steps)" {
            use one = new TempDir()
            use two = new TempDir()
            onOneAndTwo one two (fun dir -> trainArgs "mofo" dir [ "--gradient-checkpointing" ] |> List.map (fun a -> if a = "100" then "30" else a))
            let diff, where = largestDifference (one.File "model/model.safetensors") (two.File "model/model.safetensors")
            Expect.equal diff 0.0 $"bit-identical ({where})"
        }

        test "Distributed.8bit: 8-bit optimizer states sharded by whole tensors over 2 ranks (ZeRO-2): weights bit-identical to one process; the gathered checkpoint holds every tensor's codes and scales (MoFO, 30 steps)" {
            use one = new TempDir()
            use two = new TempDir()
            onOneAndTwo one two (fun dir -> trainArgs "mofo" dir [ "--gradient-checkpointing"; "--optimizer-state"; "8bit"; "--save-every"; "10" ] |> List.map (fun a -> if a = "100" then "30" else a))
            let diff, where = largestDifference (one.File "model/model.safetensors") (two.File "model/model.safetensors")
            Expect.equal diff 0.0 $"bit-identical ({where})"
            let h1, h2 = header (one.File "checkpoint/optimizer.safetensors"), header (two.File "checkpoint/optimizer.safetensors")
            Expect.stringContains h2 "moment0.codes" "the gathered state is 8-bit"
            Expect.equal h2 h1 "the gathered checkpoint has the single process's layout"
            Expect.equal (File.ReadAllBytes(two.File "checkpoint/optimizer.safetensors")) (File.ReadAllBytes(one.File "checkpoint/optimizer.safetensors")) "and its bytes"
        }

        test "Distributed.lora: LoRA (rank 4, dropout 0.1) on 2 ranks ends with the single process's adapters and merged weights (30 steps, within 1e-5)" {
            use one = new TempDir()
            use two = new TempDir()
            let args dir =
                trainArgs "lora" dir [ "--lora-rank"; "4"; "--lora-dropout"; "0.1" ]
                |> List.map (fun a -> if a = "100" then "30" elif a = "1e-3" then "5e-3" else a)
            let code, text = finish (start 1 (args one.Path))
            Expect.equal code 0 text
            let code, text = finish (start 2 (args two.Path))
            Expect.equal code 0 text
            for file in [ "model/adapter_model.safetensors"; "model/model.safetensors" ] do
                let diff, where = largestDifference (one.File file) (two.File file)
                Expect.isLessThanOrEqual diff 1e-5 $"{file}: largest difference {diff:G3} ({where})"
        }

        test "Distributed.plan: the plan is per rank; the state is sharded by the shard plan; ZeRO-2 gradients with checkpointing" {
            let c = MoFO.Models.ModelPresets.Get("llama-2-7b", "Like")
            let inputOn perDevice ranks ckpt =
                MoFO.Training.PlanInput(c, MoFO.Training.Methods.Parse "mofo", MoFO.Training.Precision.BFloat16, 1, 2048, ckpt, Ranks = ranks,
                                        ReduceInBackward = MoFO.Training.MemoryPlanner.ReducesInBackward(ckpt, ranks, 1, ranks), RanksPerDevice = perDevice)
            let input = inputOn 1
            let one, four = MoFO.Training.MemoryPlanner.Plan(input 1 true), MoFO.Training.MemoryPlanner.Plan(input 4 true)
            let shards = ShardPlan(MoFO.Training.MemoryPlanner.ParameterShapes c |> Seq.map (fun struct (_, s) -> Array.fold (*) 1L s) |> Seq.toList, 4)
            Expect.isLessThan (float (four.Part "optimizer state")) (0.26 * float (one.Part "optimizer state")) "a quarter of the moments (and the kernel's buffers)"
            Expect.isGreaterThanOrEqual (four.Part "optimizer state") (shards.Load |> Seq.max |> (*) 8L) "at least the largest share's two float32 moments"
            Expect.isLessThan (float (four.Part "gradients")) (0.35 * float (one.Part "gradients")) "ZeRO-2: about a quarter of the gradients, one layer and the head"
            let noCkpt = MoFO.Training.MemoryPlanner.Plan(input 4 false)
            Expect.equal (noCkpt.Part "gradients") (one.Part "gradients") "without checkpointing every rank holds every gradient during the backward"
            let shared = MoFO.Training.MemoryPlanner.Plan(inputOn 4 4 true)
            Expect.equal shared.DeviceNeed (4L * shared.Peak) "four ranks on one machine's memory need four times a rank's peak"
        }

        test "Distributed.budget: a forgetting budget on 2 ranks stops every rank at the watch the single process stops at, with its kept model" {
            use one = new TempDir()
            use two = new TempDir()
            onOneAndTwo one two (fun dir ->
                trainArgs "mofo" dir [ "--watch-forgetting"; "pretrain-proxy"; "--watch-every"; "3"; "--forgetting-budget"; "pretrain-proxy=0.3" ])
            let summary (dir: TempDir) = MoFO.Training.RunFolder(dir.Path).ReadSummary()
            let s1, s2 = summary one, summary two
            Expect.equal s1.StoppedBy "forgetting budget" "the single process stops by the budget"
            Expect.equal (s2.StoppedBy, s2.Steps, s2.Budget.KeptStep) (s1.StoppedBy, s1.Steps, s1.Budget.KeptStep) "2 ranks stop at the same watch and keep the same step"
            let diff, where = largestDifference (one.File "model/model.safetensors") (two.File "model/model.safetensors")
            Expect.isLessThanOrEqual diff 1e-5 $"the kept models: largest difference {diff:G3} ({where})"
        }

        test "Distributed.errors: a setting two ranks cannot run ends every rank with the usage exit code and one message" {
            use dir = new TempDir()
            let code, text = finish (start 2 (trainArgs "mofo" dir.Path [ "--batch-size"; "1"; "--micro-batch-size"; "1"; "--steps"; "2" ]))
            Expect.equal code 2 $"exit code 2: {text}"
            Expect.stringContains text "--batch-size" "the flag is named"
            Expect.stringContains text "rank" "the rank is named"
        }
    ]
