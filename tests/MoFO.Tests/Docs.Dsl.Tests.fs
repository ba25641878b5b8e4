/// docs/dsl.md, the DSL's reference, checked against the DSL itself: every ```fsharp block and every signature bullet
/// type-checks (one generated script, compiled by `dotnet fsi` after scripts/MoFO.fsx, so nothing trains), its measure
/// table is the declarations', every case and field of the types a script uses and every function of the DSL's main
/// modules has its signature there, and the links into it resolve.
module MoFO.Tests.DocsDsl

open System
open System.IO
open System.Reflection
open System.Text
open System.Text.RegularExpressions
open Expecto
open Microsoft.FSharp.Reflection
open MoFO.Dsl
open MoFO.Tests.Fixtures

/// A fenced code block: its info string (`fsharp`, `fsharp names`, `bash`), the page line (1-based) of its first
/// content line, its lines (the fence's indentation removed).
type Block = { Info: string; Line: int; Lines: string list }

/// A signature: a bullet that starts with one (`- `Experiment.withLr : float -> Experiment -> Experiment` — …`) or a
/// table row whose first cell is one (`| `(r: Recipe).Lr : float` | …`): its page line, its name (`Experiment.withLr`,
/// or an instance member `(r: Run).Key`) and its type.
type Signature = { Line: int; Name: string; Type: string }

let private fence = Regex(@"^(\s*)(```+)\s*(.*)$")
let private bullet = Regex(@"^\s*(?:[-*] |\|\s*)`([^`]+?) : ([^`]+)`")
let private valueName = Regex(@"^[A-Za-z_][\w.']*$")
let private memberName = Regex(@"^\((\w+): ([\w.]+)\)\.(\w+)$")

/// The fenced blocks and the signatures (outside blocks) of a Markdown page.
let parse (lines: string[]) : Block list * Signature list =
    let blocks, sigs = ResizeArray<Block>(), ResizeArray<Signature>()
    let mutable i = 0
    while i < lines.Length do
        let m = fence.Match lines[i]
        if m.Success then
            let indent, ticks = m.Groups[1].Value.Length, m.Groups[2].Value
            let closes (l: string) = l.Trim().StartsWith ticks && l.Trim().Trim('`') = ""
            let close = seq { i + 1 .. lines.Length - 1 } |> Seq.tryFind (fun j -> closes lines[j]) |> Option.defaultValue lines.Length
            let strip (l: string) = let n = min indent (l.Length - l.TrimStart().Length) in l.Substring n
            blocks.Add { Info = m.Groups[3].Value.Trim(); Line = i + 2; Lines = [ for j in i + 1 .. close - 1 -> strip lines[j] ] }
            i <- close + 1
        else
            let b = bullet.Match lines[i]
            if b.Success then sigs.Add { Line = i + 1; Name = b.Groups[1].Value.Trim(); Type = b.Groups[2].Value.Trim() }
            i <- i + 1
    List.ofSeq blocks, List.ofSeq sigs

/// The page line a line of the generated script comes from, and what it is ("block 7 (`let e2 = …`)").
type Origin = { What: string; DocLine: int }

/// The check of a signature: a value has the type (`let sig_n : T = Name`), an instance member has it on a value of
/// its type (`fun (r: Run) -> (r.Key : T)`); an error for a bullet whose name is neither form.
let private signatureCheck (n: int) (s: Signature) =
    let mm = memberName.Match s.Name
    if mm.Success then
        let x, t, m = mm.Groups[1].Value, mm.Groups[2].Value, mm.Groups[3].Value
        $"let sig_{n} = fun ({x}: {t}) -> ({x}.{m} : {s.Type})"
    elif valueName.IsMatch s.Name then $"let sig_{n} : {s.Type} = {s.Name}"
    else failtestf "docs/dsl.md line %d: a signature bullet names `Module.value` or `(x: Type).Member`, not `%s`" s.Line s.Name

/// The script that type-checks a page: MoFO.NET built and loaded, the blocks' `open`s at the top, then one function
/// that is never called (so nothing runs): every signature's check, the `fsharp names` blocks, and every other `fsharp`
/// block as a function inside it (so the names are in scope). A block's `#load` lines are left out. Returns the script and
/// the origin of each of its lines (1-based).
let script (root: string) (blocks: Block list) (sigs: Signature list) : string * Map<int, Origin> =
    let out = ResizeArray<string * Origin option>()
    let add (origin: Origin option) (line: string) = out.Add(line, origin)
    let isOpen (l: string) = l.StartsWith "open "
    let isLoad (l: string) = l.TrimStart().StartsWith "#load"
    let fsharp = blocks |> List.indexed |> List.filter (fun (_, b) -> b.Info = "fsharp" || b.Info.StartsWith "fsharp ")
    let load (p: string) = "#load \"" + Path.Combine(root, p).Replace("\\", "/") + "\""
    add None (load "scripts/Build.fsx")
    add None (load "scripts/MoFO.fsx")
    add None "open MoFO.Dsl"
    for l in fsharp |> List.collect (fun (_, b) -> b.Lines |> List.filter isOpen) |> List.distinct do add None l
    // one declaration: fsi reports every error of a declaration, but stops at the first declaration with errors
    add None "let check () ="
    for n, s in List.indexed sigs do add (Some { What = $"signature `{s.Name} : {s.Type}`"; DocLine = s.Line }) ("    " + signatureCheck (n + 1) s)
    let body (indent: int) (k: int, b: Block) =
        let first = b.Lines |> List.tryFind (fun l -> l.Trim() <> "" && not (isLoad l || isOpen l)) |> Option.defaultValue ""
        for j, l in List.indexed b.Lines do
            if not (isOpen l || isLoad l) then
                add (Some { What = $"block {k + 1} (`{first.Trim()}`)"; DocLine = b.Line + j }) ((if l.Trim() = "" then "" else String(' ', indent)) + l)
    for k, b in fsharp do if b.Info <> "fsharp" then body 4 (k, b)
    for k, b in fsharp do
        if b.Info = "fsharp" then
            add None $"    let example_{k + 1} () ="
            body 8 (k, b)
            add None "        ()"
    add None "    ()"
    let text = String.Join("\n", out |> Seq.map fst) + "\n"
    let origins = out |> Seq.indexed |> Seq.choose (fun (i, (_, o)) -> o |> Option.map (fun o -> i + 1, o)) |> Map.ofSeq
    text, origins

let private diagnostic = Regex(@"\.fsx\((\d+),(\d+)\): (error|warning) (FS\d+): (.*)$")

/// The compile errors of fsi's output (each with the lines of its message), each named by the page line and the block
/// or signature it comes from. (fsi stops at the first declaration with an error: one error at a time.)
let errorsOf (origins: Map<int, Origin>) (output: string) =
    let lines = output.Replace("\r", "").Split('\n')
    [ for i, l in Array.indexed lines do
        let m = diagnostic.Match(l.TrimEnd())
        if m.Success then
            let line = int m.Groups[1].Value
            let where =
                match origins |> Map.tryFind line with
                | Some o -> $"docs/dsl.md line {o.DocLine}, {o.What}"
                | None -> $"generated line {line} (the prelude)"
            let rest = lines |> Array.skip (i + 1) |> Array.takeWhile (fun x -> x.Trim() <> "" && not (diagnostic.IsMatch x)) |> Array.map (fun x -> x.Trim())
            yield $"{where}: {m.Groups[3].Value} {m.Groups[4].Value}: " + String.Join(" ", Array.append [| m.Groups[5].Value.Trim() |] rest) ]

/// Type-checks a page's blocks and signatures; returns fsi's exit code and the errors named by their page lines.
let check (lines: string[]) =
    let blocks, sigs = parse lines
    let text, origins = script repoRoot blocks sigs
    let dir = Path.Combine(Path.GetTempPath(), $"mofo-docs-{Guid.NewGuid():N}")
    Directory.CreateDirectory dir |> ignore
    try
        let file = Path.Combine(dir, "dsl-examples.fsx")
        File.WriteAllText(file, text)
        let code, out, err = runProcess "dotnet" [ "fsi"; "--quiet"; "--warnaserror+"; file ] repoRoot (TimeSpan.FromMinutes 10.0)
        code, errorsOf origins (out + "\n" + err), blocks, sigs, out + err
    finally
        try Directory.Delete(dir, true) with _ -> ()

let private docPath () = Path.Combine(repoRoot, "docs", "dsl.md")
let private docLines () = File.ReadAllLines(docPath ())

/// The types whose every record field (`(x: T).Field`) or union case (`T.Case`) the page must give a signature, by the
/// name the page uses for them.
let private types : (string * Type) list =
    [ "Experiment", typeof<Experiment>; "Run", typeof<Run>; "Method", typeof<Method>; "ModelSource", typeof<ModelSource>; "Merge", typeof<Merge>
      "Dataset", typeof<Dataset>; "Scale", typeof<Scale>; "PaperPaths", typeof<PaperPaths>; "Recipe", typeof<Recipe>
      "Settings", typeof<Settings>; "Measure", typeof<Measure>; "Column", typeof<Column>; "Table", typeof<Table>
      "PaperTable", typeof<PaperTable>; "Frontier.Point", typeof<Frontier.Point>; "Frontier.Matched", typeof<Frontier.Matched>
      "Study.Ctx", typeof<Study.Ctx>; "Study.StudyOutput", typeof<Study.StudyOutput>; "Study.PaperModel", typeof<Study.PaperModel>
      "Study.Kind", typeof<Study.Kind>; "Results.Row", typeof<Results.Row>; "Results.Check", typeof<Results.Check>
      "Results.Report", typeof<Results.Report>; "Results.Options", typeof<Results.Options> ]

/// The modules whose every public function and value (`M.f`) the page must give a signature, by the name scripts use.
let private modules : (string * string) list =
    [ "Experiment", "MoFO.Dsl.ExperimentModule"; "Recipe", "MoFO.Dsl.RecipeModule"; "Measure", "MoFO.Dsl.MeasureModule"
      "Labels", "MoFO.Dsl.Labels"; "Columns", "MoFO.Dsl.Columns"; "Claims", "MoFO.Dsl.Claims"; "Frontier", "MoFO.Dsl.Frontier"
      "Stats", "MoFO.Dsl.Stats"; "Study", "MoFO.Dsl.Study" ]

/// What the page must document: "(x: T).Field" for record fields, "T.Case" for union cases, "M.f" for module members.
let private required () =
    let ofType (name: string, t: Type) =
        if FSharpType.IsRecord t then [ for f in FSharpType.GetRecordFields t -> $"{name}.{f.Name}", true ]
        else [ for c in FSharpType.GetUnionCases t -> $"{name}.{c.Name}", false ]
    let ofModule (name: string, compiled: string) =
        let t = typeof<Experiment>.Assembly.GetType compiled
        if isNull t then failtestf "module %s (%s) is not in MoFO.Dsl: update the list in Docs.Dsl.Tests.fs" name compiled
        let flags = BindingFlags.Public ||| BindingFlags.Static ||| BindingFlags.DeclaredOnly
        [ for m in t.GetMethods flags do if not m.IsSpecialName then yield $"{name}.{m.Name}", false
          for p in t.GetProperties flags -> $"{name}.{p.Name}", false ]
    (types |> List.collect ofType) @ (modules |> List.collect ofModule) |> List.distinct

/// What a signature documents: "T.Member" for `(x: T).Member`, the name itself otherwise.
let private documented (s: Signature) =
    let mm = memberName.Match s.Name
    if mm.Success then $"{mm.Groups[2].Value}.{mm.Groups[3].Value}" else s.Name

/// GitHub's anchor of a heading: lower case, spaces to dashes, punctuation other than dashes and underscores dropped.
let anchorOf (heading: string) =
    let s = heading.Trim().ToLowerInvariant()
    String(s |> Seq.filter (fun c -> Char.IsLetterOrDigit c || c = ' ' || c = '-' || c = '_') |> Seq.map (fun c -> if c = ' ' then '-' else c) |> Seq.toArray)

[<Tests>]
let tests =
    testList "Docs" [
        test "Docs.dsl.examples: every fsharp block and every signature of docs/dsl.md type-checks against the DSL" {
            let clock = Diagnostics.Stopwatch.StartNew()
            let code, errors, blocks, sigs, output = check (docLines ())
            let compiled = blocks |> List.filter (fun b -> b.Info = "fsharp" || b.Info.StartsWith "fsharp ")
            Expect.isGreaterThan compiled.Length 10 "docs/dsl.md has its examples in fsharp blocks"
            Expect.isGreaterThan sigs.Length 100 "docs/dsl.md has its signatures in bullets"
            let shown = if errors.IsEmpty then output else String.Join("\n", errors)
            Expect.equal code 0 $"docs/dsl.md does not compile against the DSL:\n{shown}"
            printfn "Docs.dsl.examples: %d blocks and %d signatures type-checked in %.1f s" compiled.Length sigs.Length clock.Elapsed.TotalSeconds
        }

        test "Docs.dsl.checker: a misspelled function in a block, or a wrong signature, fails the check, named by its page line" {
            let names = [| "```fsharp names"; "let e = Experiment.create ModelSource.Stories260K Dataset.Dpr Method.FullFT Recipe.Paper [] Scale.Tiny 0"; "```" |]
            let misspelt =
                Array.concat [ [| "# a page"; ""; "- `Experiment.withLr : float -> Experiment -> Experiment` — right"; "" |]; names
                               [| ""; "```fsharp"; "open MoFO.Dsl.Study"; "let e2 = e |> Experiment.withLr 3e-4"; "let e3 = e |> Experiment.withLR 3e-4"; "```"
                                  "```text"; "not F# at all"; "```" |] ]
            let code, errors, blocks, sigs, output = check misspelt
            Expect.equal (blocks |> List.map (fun b -> b.Info, b.Line)) [ "fsharp names", 6; "fsharp", 10; "text", 15 ] "the blocks, their info strings and first lines"
            Expect.equal (sigs |> List.map (fun s -> s.Line, s.Name, s.Type)) [ 3, "Experiment.withLr", "float -> Experiment -> Experiment" ] "the signatures"
            Expect.notEqual code 0 "a page with a misspelled function does not compile"
            let named = errors |> List.tryFind (fun e -> e.StartsWith "docs/dsl.md line 12, block 2 (`let e2 = e |> Experiment.withLr 3e-4`)")
            Expect.isTrue (named |> Option.exists (fun e -> e.Contains "withLR")) $"the misspelling is named by its line and block:\n{String.Join('\n', errors)}\n{output}"
            let wrong = Array.concat [ [| "- `(r: Run).Key : int` — wrong: a run's key is a string" |]; names; [| "```fsharp"; "let e2 = e |> Experiment.withLr 3e-4"; "```" |] ]
            let code, errors, _, _, output = check wrong
            Expect.notEqual code 0 "a page with a wrong signature does not compile"
            Expect.isTrue (errors |> List.exists (fun e -> e.StartsWith "docs/dsl.md line 1, signature `(r: Run).Key : int`: error FS0001" && e.Contains "'string'"))
                $"the wrong signature is named by its line:\n{String.Join('\n', errors)}\n{output}"
        }

        test "Docs.dsl.measures: the measure table lists every declared measure with its key, name and direction" {
            let rows =
                [ for l in docLines () do
                    if l.StartsWith "| `Measure." then
                        let cells = l.Trim('|').Split('|') |> Array.map (fun c -> c.Trim().Trim('`'))
                        yield cells[0].Split(" : ")[0], (cells[1], cells[2], cells[3]) ]
            let declared =
                let t = typeof<Experiment>.Assembly.GetType "MoFO.Dsl.MeasureModule"
                [ for p in t.GetProperties(BindingFlags.Public ||| BindingFlags.Static) do
                    if p.PropertyType = typeof<Measure> then
                        let m = p.GetValue null :?> Measure
                        yield $"Measure.{p.Name}", (m.Key, m.Name, (if m.HigherIsBetter then "higher" else "lower")) ]
            Expect.equal declared.Length Measure.All.Length "every declared measure is a named value of module Measure"
            Expect.equal (rows |> List.map fst) (declared |> List.map fst) "the table's measures, in the order declared"
            Expect.equal rows declared "each row's key, name and direction (higher or lower is better) are its declaration's"
        }

        test "Docs.dsl.complete: every case and field of a script's types and every function of the main modules has a signature" {
            let _, sigs = parse (docLines ())
            let have = sigs |> List.map documented |> Set.ofList
            let missing = required () |> List.filter (fun (n, _) -> not (have.Contains n))
            let show (n: string, isField) =
                let i = n.LastIndexOf '.'
                if isField then $"`({Char.ToLowerInvariant n[0]}: {n.Substring(0, i)}).{n.Substring(i + 1)} : …`" else $"`{n} : …`"
            Expect.isEmpty missing $"""docs/dsl.md lacks the signature bullets of: {String.Join(", ", missing |> List.map show)}"""
        }

        test "Docs.dsl.links: README links docs/dsl.md, and every link into it from README and docs/ names one of its headings" {
            let readme = File.ReadAllText(Path.Combine(repoRoot, "README.md"))
            Expect.stringContains readme "[docs/dsl.md](docs/dsl.md)" "README's documentation table links the DSL reference"
            let anchors =
                docLines () |> Array.choose (fun l -> let m = Regex.Match(l, @"^#{1,6} (.*)$") in if m.Success then Some (anchorOf m.Groups[1].Value) else None) |> Set.ofArray
            let files = Path.Combine(repoRoot, "README.md") :: List.ofArray (Directory.GetFiles(Path.Combine(repoRoot, "docs"), "*.md"))
            let broken =
                [ for f in files do
                    for m in Regex.Matches(File.ReadAllText f, @"\((?:docs/)?dsl\.md#([^)]+)\)|\]\(#([^)]+)\)") do
                        let a = if m.Groups[1].Success then m.Groups[1].Value else m.Groups[2].Value
                        let intoDsl = m.Groups[1].Success || Path.GetFileName f = "dsl.md"
                        if intoDsl && not (anchors.Contains a) then yield $"{Path.GetFileName f}: #{a}" ]
            Expect.isEmpty broken $"""links into docs/dsl.md name its headings; these do not: {String.Join(", ", broken)}"""
        }
    ]
