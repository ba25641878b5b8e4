// Figures 1 and 3 of the MoFO paper: the fine-tuning loss and the pretraining loss over the plane through the
// pretrained model and two fine-tuned ones — Adam and Lion (Figure 1), Adam and MoFO (Figure 3) — with their distances
// from the pretrained model (Pythia-160m on DPR; tiny: stories260K). Writes results/figure-landscape.{json,md,html}.
// Builds MoFO.NET on first use, then runs:
//   dotnet fsi paper-repro/figure-landscape.fsx [--scale tiny|paper] [--seed N] [--config paper.json] [--strict] [--smoke]
// `./mofo repro figure-landscape` runs this script. Edit the models compared, the grid or the claims below and run it again.
#load "../scripts/Build.fsx"
#load "../scripts/MoFO.fsx"

open System
open Plotly.NET
open MoFO.Dsl
open MoFO.Dsl.Study

exit (MoFO.Dsl.Cli.Main.study fsi.CommandLineArgs (fun c ->

    // The fine-tunes: Adam, Lion and MoFO (α = 15 %) on DPR, as in Tables 1 and 2.
    let e = experiment c Pythia160m Dataset.Dpr DprKind [ Measure.TaskLoss; Measure.TaskAccuracy; Measure.PretrainProxy; Measure.StoryCloze; Measure.GreedyIntact; Measure.Distance ]
    let runs = e |> Experiment.compare [ Method.FullFT; Method.Lion; Method.MoFO 0.15 ] |> Experiment.runAll
    let adam, lion, mofo = Experiment.find Method.FullFT runs, Experiment.find Method.Lion runs, Experiment.find (Method.MoFO 0.15) runs

    // The plane: an n × n grid; the fine-tuning loss on held-out DPR examples, the pretraining-loss proxy on base-model samples.
    let n, heldOut, nSamples = (if c.Smoke then 3, 8, 4 elif c.IsTiny then 13, 128, 32 else 9, 256, 32)
    let _, task = Experiment.load e.Data e.Recipe.MaxLength
    let task = { task with HeldOut = List.truncate heldOut task.HeldOut }
    let samples =
        use b = MoFO.Models.ModelLoader.Load(e.Model.Path)
        Harnesses.baseSamples b c.Settings.Samples c.Settings.SampleTokens c.Settings.Seed c.Settings.Cache |> Seq.truncate nSamples |> ResizeArray
    eprintfn "landscape: Figure 1 (Adam, Lion), %d × %d points" n n
    let fig1 = Landscape.compute e.Model.Path adam.ModelPath lion.ModelPath task samples n 0.25
    eprintfn "landscape: Figure 3 (Adam, MoFO), %d × %d points" n n
    let fig3 = Landscape.compute e.Model.Path adam.ModelPath mofo.ModelPath task samples n 0.25

    // The rows: distance and both losses at the pretrained model and each fine-tuned one.
    let row name dist (ft: float, pt: float) = Results.row name [ "distance", dist; "finetune loss", ft; "pretrain loss (proxy)", pt ]
    let rows =
        [ row "pretrained" 0.0 fig3.AtOrigin; row "Figure 1: Adam" fig1.DistanceA fig1.AtA; row "Figure 1: Lion" fig1.DistanceB fig1.AtB
          row "Figure 3: Adam" fig3.DistanceA fig3.AtA; row "Figure 3: MoFO" fig3.DistanceB fig3.AtB ]

    // The paper's claims, and a check that the plane passes through the models themselves.
    let directAdam, directMofo = Landscape.direct adam.ModelPath task samples, Landscape.direct mofo.ModelPath task samples
    let rel a b = abs (a - b) / max 1e-9 (abs b)
    let checks =
        [ Results.check "Figure 1(a): Adam and Lion reach similar fine-tuning loss (within 15 %)" (rel lion[Measure.TaskLoss] adam[Measure.TaskLoss] <= 0.15)
              $"held-out task loss: Adam {adam[Measure.TaskLoss]:F4}, Lion {lion[Measure.TaskLoss]:F4}"
          Results.check "Figure 1(a): Adam's minimum is closer to the pretrained model than Lion's" (fig1.DistanceA < fig1.DistanceB)
              $"distance: Adam {fig1.DistanceA:F3}, Lion {fig1.DistanceB:F3}"
          Results.check "Figure 1(b): the closer minimum (Adam) has the lower pretraining loss" (adam[Measure.PretrainProxy] < lion[Measure.PretrainProxy])
              $"pretrain proxy: Adam {adam[Measure.PretrainProxy]:F4}, Lion {lion[Measure.PretrainProxy]:F4}"
          Results.check "Figure 3(a): MoFO and Adam both reach low fine-tuning loss (MoFO within 10 % of Adam)" (mofo[Measure.TaskLoss] <= 1.10 * adam[Measure.TaskLoss])
              $"held-out task loss: Adam {adam[Measure.TaskLoss]:F4}, MoFO {mofo[Measure.TaskLoss]:F4}"
          Results.check "Figure 3(b): MoFO's distance from the pretrained model is a small fraction of Adam's (paper ≈ 20 %; here at most 50 %)" (fig3.DistanceB <= 0.5 * fig3.DistanceA)
              $"MoFO {fig3.DistanceB:F3}, Adam {fig3.DistanceA:F3}: {100.0 * fig3.DistanceB / fig3.DistanceA:F1} %%"
          Results.check "Figure 3(b): MoFO's minimum has the lower pretraining loss" (mofo[Measure.PretrainProxy] < adam[Measure.PretrainProxy])
              $"pretrain proxy: Adam {adam[Measure.PretrainProxy]:F4}, MoFO {mofo[Measure.PretrainProxy]:F4}"
          Results.check "the plane passes through the trained models (losses at their coordinates equal the models' own, within 1e-4 relative)"
              (rel (fst fig3.AtA) (fst directAdam) <= 1e-4 && rel (fst fig3.AtB) (fst directMofo) <= 1e-4 && rel (snd fig3.AtB) (snd directMofo) <= 1e-4)
              $"fine-tune loss on the {heldOut}-example subset: Adam {fst fig3.AtA:F5} in the plane vs {fst directAdam:F5} loaded; MoFO {fst fig3.AtB:F5} vs {fst directMofo:F5}; MoFO's pretrain proxy {snd fig3.AtB:F5} vs {snd directMofo:F5}" ]

    // The figure: four contours.
    let figure =
        Chart.Grid(2, 2, SubPlotTitles = [ "Figure 1(a): fine-tuning loss"; "Figure 1(b): pretraining loss (proxy)"; "Figure 3(a): fine-tuning loss"; "Figure 3(b): pretraining loss (proxy)" ])
            [ Landscape.contour fig1 fig1.Finetune "fine-tune" "Adam" "Lion"
              Landscape.contour fig1 fig1.Pretrain "pretrain" "Adam" "Lion"
              Landscape.contour fig3 fig3.Finetune "fine-tune" "Adam" "MoFO"
              Landscape.contour fig3 fig3.Pretrain "pretrain" "Adam" "MoFO" ]
        |> Chart.withTitle "Loss landscapes on the plane through the pretrained model and two fine-tuned models (coordinates: weight distance)"
        |> Chart.withSize (1200, 1000)
    let note = $"Grid {n} × {n}; fine-tuning loss on {heldOut} held-out DPR examples, pretraining-loss proxy on {nSamples} base-model samples."

    finish c { output "figure-landscape" "Figures 1 and 3 — loss landscapes through the pretrained, Adam, Lion and MoFO weights" with
                 ExtraRows = rows; Checks = checks; Notes = [ note; tinyNote c ]; Figure = Some figure }))
