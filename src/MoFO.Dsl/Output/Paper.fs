/// The MoFO paper's reported numbers (Chen et al., 2024), encoded once, with the column headers of our tables
/// (`Measure.Name`, "Commonsense", "Average", "OP", "BWT"), so that a reproduction prints beside them.
module MoFO.Dsl.Paper

open MoFO.Dsl.Evals

let private hs, ae, ac = Measure.HellaSwag.Name, Measure.ArcEasy.Name, Measure.ArcChallenge.Name
let private gsm, mmlu, he = Measure.Gsm8k.Name, Measure.Mmlu.Name, Measure.HumanEval.Name
let private cs, avg = "Commonsense", "Average"

/// Table 1: Pythia-160m on FLAN's definite pronoun resolution, Adam vs Lion (accuracies, %).
let table1 =
    { Caption = "Table 1 — Pythia-160m after fine-tuning on FLAN DPR with Adam and Lion"
      Rows =
        [ "Pythia-160m", [ hs, 30.1; ae, 39.6; ac, 23.8; avg, 31.2 ]
          "Adam", [ hs, 28.3; ae, 37.4; ac, 22.1; avg, 29.3 ]
          "Lion", [ hs, 26.5; ae, 29.0; ac, 24.1; avg, 26.5 ] ] }

/// Table 2: Pythia-160m, Adam vs MoFO.
let table2 =
    { Caption = "Table 2 — Pythia-160m after fine-tuning on FLAN DPR with Adam and MoFO"
      Rows =
        [ "Pythia-160m", [ hs, 30.1; ae, 39.6; ac, 23.8; avg, 31.2 ]
          "Adam", [ hs, 28.3; ae, 37.4; ac, 22.1; avg, 29.3 ]
          "MoFO", [ hs, 29.9; ae, 42.0; ac, 22.9; avg, 31.6 ] ] }

/// Table 3: Llama-2-7B fine-tuned on MetaMathQA.
let table3 =
    { Caption = "Table 3 — Llama-2-7B fine-tuned on MetaMathQA (GSM8K; general capability)"
      Rows =
        [ "Llama-2-7B", [ gsm, 13.7; cs, 65.6; mmlu, 42.0; he, 24.2; avg, 43.9 ]
          "Full FT", [ gsm, 49.4; cs, 62.3; mmlu, 36.6; he, 16.1; avg, 38.3 ]
          "HFT", [ gsm, 47.5; cs, 65.5; mmlu, 42.3; he, 23.6; avg, 43.8 ]
          "L1-regularization", [ gsm, 39.0; cs, 65.1; mmlu, 38.3; he, 27.4; avg, 43.6 ]
          "L2-regularization", [ gsm, 44.5; cs, 65.5; mmlu, 39.2; he, 25.9; avg, 43.5 ]
          "MoFO (α=15%)", [ gsm, 47.7; cs, 65.7; mmlu, 42.7; he, 24.6; avg, 44.3 ] ] }

/// Table 4: Llama-2-7B fine-tuned on Code-Alpaca.
let table4 =
    { Caption = "Table 4 — Llama-2-7B fine-tuned on Code-Alpaca (HumanEval pass@10; general capability)"
      Rows =
        [ "Llama-2-7B", [ he, 24.2; cs, 65.6; mmlu, 42.0; gsm, 13.7; avg, 40.4 ]
          "Full FT", [ he, 27.7; cs, 65.2; mmlu, 39.6; gsm, 5.5; avg, 36.8 ]
          "HFT", [ he, 30.9; cs, 68.3; mmlu, 40.6; gsm, 6.8; avg, 38.6 ]
          "L1-regularization", [ he, 33.8; cs, 67.6; mmlu, 41.3; gsm, 5.1; avg, 38.0 ]
          "L2-regularization", [ he, 30.8; cs, 66.1; mmlu, 42.5; gsm, 7.6; avg, 38.7 ]
          "MoFO (α=10%)", [ he, 33.7; cs, 67.3; mmlu, 42.7; gsm, 8.0; avg, 39.3 ] ] }

/// Table 5: TinyLlama-1.1B on the TRACE stream (OP and BWT, %).
let table5 =
    { Caption = "Table 5 — TinyLlama-1.1B, continual fine-tuning on TRACE"
      Rows =
        [ "Full FT", [ "OP", 38.4; "BWT", -10.3 ]
          "HFT", [ "OP", 39.9; "BWT", -10.1 ]
          "MoFO (α=5%)", [ "OP", 41.3; "BWT", -5.4 ]
          "GEM", [ "OP", 40.8; "BWT", -8.5 ]
          "GEM + MoFO (α=5%)", [ "OP", 41.7; "BWT", -6.7 ]
          "Replay", [ "OP", 45.5; "BWT", 4.7 ]
          "Replay + MoFO (α=5%)", [ "OP", 47.0; "BWT", 4.8 ]
          "MTL", [ "OP", 50.8 ] ] }

/// Table 6: update strategies at α = 10 % on MetaMathQA.
let table6 =
    { Caption = "Table 6 — Llama-2-7B on MetaMathQA: MoFO vs gradient-filtered and randomized BCD (α = 10 %)"
      Rows =
        [ "Llama-2-7B", [ gsm, 13.7; cs, 65.6; mmlu, 42.0; he, 24.2; avg, 43.9 ]
          "Full FT", [ gsm, 49.4; cs, 62.3; mmlu, 36.6; he, 16.1; avg, 38.3 ]
          "Randomized BCD (α=10%)", [ gsm, 35.0; cs, 65.8; mmlu, 41.1; he, 25.1; avg, 44.0 ]
          "Gradient-filtered BCD (α=10%)", [ gsm, 40.2; cs, 66.0; mmlu, 41.6; he, 28.0; avg, 45.2 ]
          "MoFO (α=10%)", [ gsm, 45.4; cs, 65.7; mmlu, 43.5; he, 27.4; avg, 45.5 ] ] }

/// Section 2.3 / Figure 3: MoFO's distance from the pretrained model is about 20 % of Adam's.
let distanceFractionMoFOvsAdam = 0.20

/// Section 3.4 / Figure 4 (text only; the figure's points are not given): α = 5 % reaches ≈ 90 % of Full FT's GSM8K,
/// α ≥ 40 % matches it; no forgetting below α = 20 %.
let fractionFigureNotes =
    "Figure 4 (the paper gives no point values): α = 5 % reaches about 90 % of Full FT's GSM8K accuracy, α ≥ 40 % matches Full FT; general capability does not drop below α = 20 % and declines above it, staying above Full FT."
