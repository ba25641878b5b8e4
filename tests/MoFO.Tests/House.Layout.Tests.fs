/// The house's layout, checked on the sources: the models' code knows nothing of adapters, Data does not reach into
/// Evaluation, and the trainer and the memory plan read as short functions (what is trained and how a step runs are
/// objects chosen once, not branches).
module MoFO.Tests.HouseLayout

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open MoFO
open MoFO.Models
open MoFO.Training
open MoFO.Tests.Fixtures

let private core (path: string) = Path.Combine(repoRoot, "src", "MoFO.Core", path)

/// The C# members of a file with their length in lines: a declaration line followed by a "{" line at its indentation,
/// up to the "}" (or "};") at that indentation; type declarations are left out.
let memberLengths (file: string) =
    let lines = File.ReadAllLines file
    let indent (l: string) = l.Length - l.TrimStart().Length
    let isType (l: string) = Regex.IsMatch(l, @"\b(class|record|struct|interface|enum|namespace)\b")
    [ for i in 0 .. lines.Length - 2 do
        let decl = lines[i]
        let t = decl.Trim()
        if t <> "" && not (t.StartsWith "//") && not (t.StartsWith "[") && not (t.StartsWith "{") && not (t.StartsWith "}")
           && not (isType decl) && lines[i + 1].Trim() = "{" && indent lines[i + 1] = indent decl then
            let k = indent decl
            let close = [ i + 2 .. lines.Length - 1 ] |> List.tryFind (fun j -> indent lines[j] = k && (lines[j].Trim() = "}" || lines[j].Trim() = "};"))
            match close with
            | Some j -> yield t, j - i + 1
            | None -> () ]

[<Tests>]
let tests =
    testList "House.layout" [
        test "House.layout.adapters: Llama and GPT-NeoX do not mention LoRA (adapters live in the module tree)" {
            for f in [ "Models/Llama.cs"; "Models/GptNeoX.cs" ] do
                let text = File.ReadAllText(core f)
                Expect.isFalse (text.Contains("lora", StringComparison.OrdinalIgnoreCase)) $"{f} names LoRA"
        }

        test "House.layout.layers: Data does not use Evaluation (no cycle between the two folders)" {
            for f in Directory.GetFiles(core "Data", "*.cs") do
                let uses = File.ReadAllLines f |> Array.filter (fun l -> Regex.IsMatch(l, @"\bEvaluation\.[A-Z]|using MoFO\.Evaluation") && not (l.TrimStart().StartsWith "///"))
                Expect.isEmpty uses $"{Path.GetFileName f} uses Evaluation: {String.Join(' ', uses)}"
        }

        test "House.layout.functions: no function in the trainer, the step executors or the memory plan is over 80 lines" {
            // the scanner finds members: a known long block is measured as such
            let sample = Path.Combine(Path.GetTempPath(), $"mofo-scan-{Guid.NewGuid():N}.cs")
            File.WriteAllLines(sample, [ "class A"; "{"; "    void F()"; "    {"; yield! List.replicate 90 "        x++;"; "    }"; "}" ])
            try Expect.equal (memberLengths sample) [ "void F()", 93 ] "a 93-line method is found and measured"
            finally File.Delete sample
            for f in [ "Training/Trainer.cs"; "Training/StepExecutor.cs"; "Training/MemoryPlan.cs"; "Training/TrainedSet.cs"; "Training/AdapterSet.cs" ] do
                let members = memberLengths (core f)
                Expect.isNonEmpty members $"{f}: members found"
                for name, n in members do Expect.isLessThanOrEqual n 80 $"{f}: {name} is {n} lines"
        }

        test "House.plan.members: the plan's optimizer state is the state each member keeps (the moments its vocabulary line declares, from its class)" {
            let path = requireAsset DataRoot.Assets.Stories260K
            use lm = ModelLoader.Load path
            for m in Methods.Members do
                let o = TrainingOptions(Method = Methods.Parse m.Name, LearningRate = 1e-3, TrackTouched = Nullable false, BatchSize = 1, MaxLength = 16)
                use trained = TrainedSet.Attach(lm, o.Method, o.Seed)
                let struct (opt, terms) = Methods.Create(trained, o)
                use opt = opt
                let kept = opt.Blocks |> Seq.sumBy (fun b -> b.Moments |> Seq.sumBy (fun t -> t.numel() * t.ElementSize))
                // frozen blocks (HFT's; the subset members') hold no moments
                let live = opt.Blocks |> Seq.filter (fun b -> b.Kind <> MoFO.Optim.BlockKind.Frozen) |> Seq.toList
                let n = live |> List.sumBy (fun b -> b.Numel)
                let largest = trained.Parameters |> Seq.map (fun struct (_, p) -> p.numel()) |> Seq.max
                Expect.equal kept (4L * int64 m.Moments * n) $"{m.Name}: {m.Moments} float32 moments per trained entry, as declared"
                let plan = MemoryPlanner.Plan(MemoryPlanner.InputOf(path, o))
                let planned = plan.Part "optimizer state" - m.SelectionBuffers(largest, o.Method.Alpha)
                if live.Length = opt.Blocks.Count then Expect.equal planned kept $"{m.Name}: the plan counts what the optimizer keeps"
                else Expect.isGreaterThanOrEqual planned kept $"{m.Name}: the plan bounds what the optimizer keeps at once"
                for t in terms do (box t :?> IDisposable).Dispose()
        }
    ]
