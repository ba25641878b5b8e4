namespace MoFO.Dsl

open System
open MoFO.Training

/// The methods compared in the paper, as typed values for scripts. Each maps onto Core's one description of a method
/// (`MethodSpec`: an optimizer member of `Methods.Members` with α, and loss terms) in `Spec`; Replay, GEM and MTL are
/// continual-learning strategies around a method (Table 5).
[<RequireQualifiedAccess>]
type Method =
    | FullFT
    | MoFO of alpha: float
    | HFT
    | L1 of lambda: float
    | L2 of lambda: float
    | Lion
    | GradBCD of alpha: float
    | RandomBCD of alpha: float
    | GDMoFO of alpha: float
    /// LoRA adapters of rank r on the attention and MLP projections (α = 2r), the base frozen; trained by AdamW, or by
    /// MoFO at update fraction `filter` (the filter on the adapters' moments)
    | LoRA of rank: int * filter: float option
    /// DoRA adapters of rank r (LoRA with a learned magnitude per output feature; α = 2r), trained by AdamW
    | DoRA of rank: int
    /// PiSSA adapters of rank r (LoRA started from the weights' top-r singular triplets; α = 2r), trained by AdamW
    | PiSSA of rank: int
    /// LISA: embeddings, final norm and head always, plus `layers` random decoder layers redrawn every `interval` steps
    | LISA of layers: int * interval: int
    /// BAdam: one decoder layer at a time for `interval` steps, in a fresh random order each pass
    | BAdam of interval: int
    /// Spectrum: per module type the top `fraction` by signal-to-noise ratio, the rest frozen
    | Spectrum of fraction: float
    | Replay of perTask: int * Method
    | GEM of memory: int * Method
    | MTL

    /// The Core description: the optimizer member, its α, the loss terms (Replay / GEM: those of the inner method).
    member m.Spec : MethodSpec =
        match m with
        | FullFT | MTL -> Methods.Parse "adamw"
        | MoFO a -> Methods.Parse("mofo", a)
        | HFT -> Methods.Parse "hft"
        | L1 l -> Methods.Parse("l1", l1Lambda = Nullable l)
        | L2 l -> Methods.Parse("l2", l2Lambda = Nullable l)
        | Lion -> Methods.Parse "lion"
        | GradBCD a -> Methods.Parse("grad-bcd", a)
        | RandomBCD a -> Methods.Parse("random-bcd", a)
        | GDMoFO a -> Methods.Parse("gd-mofo", a)
        | LoRA (r, None) -> Methods.Parse(Methods.LoraName, lora = MoFO.Models.LoraSpec(Rank = r))
        | LoRA (r, Some a) -> Methods.Parse(Methods.LoraName, a, lora = MoFO.Models.LoraSpec(Rank = r), loraMember = "mofo")
        | DoRA r -> Methods.Parse("dora", lora = MoFO.Models.LoraSpec(Rank = r))
        | PiSSA r -> Methods.Parse("pissa", lora = MoFO.Models.LoraSpec(Rank = r))
        | LISA (l, k) -> Methods.Parse("lisa", subset = SubsetSpec(LisaLayers = l, LisaInterval = k))
        | BAdam k -> Methods.Parse("badam", subset = SubsetSpec(BAdamInterval = k))
        | Spectrum f -> Methods.Parse("spectrum", subset = SubsetSpec(SpectrumFraction = f))
        | Replay (_, inner) | GEM (_, inner) -> inner.Spec

    /// The optimizer member (its name, description, learning-rate factor).
    member m.Member = Methods.Member m.Spec.Optimizer

    /// The factor of Adam's learning rate the method runs at: the member's (Lion 0.2), LoRA's (`Methods.LoraLrScale`; DoRA
    /// and PiSSA too).
    member m.LrScale =
        match m with
        | LoRA _ | DoRA _ | PiSSA _ -> Methods.LoraLrScale
        | Replay (_, inner) | GEM (_, inner) -> inner.LrScale
        | _ -> m.Member.LrScale

    member m.Label =
        let pct (a: float) = (a * 100.0).ToString("0.##", Globalization.CultureInfo.InvariantCulture) + "%"
        match m with
        | FullFT -> "Full FT" | MoFO a -> $"MoFO (α={pct a})" | HFT -> "HFT" | L1 _ -> "L1-regularization" | L2 _ -> "L2-regularization"
        | Lion -> "Lion" | GradBCD a -> $"Gradient-filtered BCD (α={pct a})" | RandomBCD a -> $"Randomized BCD (α={pct a})"
        | GDMoFO a -> $"GD-MoFO (α={pct a})"
        | LISA (l, k) -> $"LISA ({l} layers, every {k} steps)" | BAdam k -> $"BAdam (every {k} steps)" | Spectrum f -> $"Spectrum ({pct f})"
        | LoRA (r, None) -> $"LoRA (r={r})" | LoRA (r, Some a) -> $"LoRA (r={r}) + MoFO (α={pct a})"
        | DoRA r -> $"DoRA (r={r})" | PiSSA r -> $"PiSSA (r={r})"
        | Replay (_, FullFT) -> "Replay" | Replay (_, inner) -> $"Replay + {inner.Label}"
        | GEM (_, FullFT) -> "GEM" | GEM (_, inner) -> $"GEM + {inner.Label}"
        | MTL -> "MTL"

    /// A short identifier for file names and cache keys.
    member m.Key =
        match m with
        | FullFT -> "adamw" | MoFO a -> $"mofo{a}" | HFT -> "hft" | L1 l -> $"l1-{l}" | L2 l -> $"l2-{l}" | Lion -> "lion"
        | GradBCD a -> $"gradbcd{a}" | RandomBCD a -> $"randbcd{a}" | GDMoFO a -> $"gdmofo{a}" | LoRA (r, None) -> $"lora{r}" | LoRA (r, Some a) -> $"lora{r}-mofo{a}" | DoRA r -> $"dora{r}" | PiSSA r -> $"pissa{r}" | Replay (n, i) -> $"replay{n}-{i.Key}" | GEM (n, i) -> $"gem{n}-{i.Key}"
        | LISA (l, k) -> $"lisa{l}-{k}" | BAdam k -> $"badam{k}" | Spectrum f -> $"spectrum{f}"
        | MTL -> "mtl"

    /// The continual strategy's memory: (replayed examples per earlier task, GEM memory per earlier task).
    member m.Continual = match m with Replay (n, _) -> n, 0 | GEM (n, _) -> 0, n | _ -> 0, 0
