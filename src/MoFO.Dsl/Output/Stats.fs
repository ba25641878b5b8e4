/// Rank statistics of sweeps: ranks with ties, Pearson's and Spearman's correlations, and a bootstrap band.
module MoFO.Dsl.Stats

open System

/// Ranks 1..n of the values, ties sharing their mean rank.
let ranks (xs: float list) =
    let arr = List.toArray xs
    let order = Array.init arr.Length id |> Array.sortBy (fun i -> arr[i])
    let r = Array.zeroCreate arr.Length
    let mutable i = 0
    while i < order.Length do
        let mutable j = i
        while j + 1 < order.Length && arr[order[j + 1]] = arr[order[i]] do j <- j + 1
        let mid = float (i + j) / 2.0 + 1.0
        for k in i .. j do r[order[k]] <- mid
        i <- j + 1
    List.ofArray r

/// Pearson's correlation of two equally long lists (NaN when either is constant or shorter than 2).
let pearson (xs: float list) (ys: float list) =
    let n = List.length xs
    if n < 2 || n <> List.length ys then nan
    else
        let mx, my = List.average xs, List.average ys
        let sxy = List.map2 (fun x y -> (x - mx) * (y - my)) xs ys |> List.sum
        let sxx, syy = xs |> List.sumBy (fun x -> (x - mx) ** 2.0), ys |> List.sumBy (fun y -> (y - my) ** 2.0)
        if sxx = 0.0 || syy = 0.0 then nan else sxy / sqrt (sxx * syy)

/// Spearman's rank correlation: Pearson's on the ranks (ties at their mean rank). Pairs with a non-finite value are left out.
let spearman (pairs: (float * float) list) =
    let ok = pairs |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y)
    pearson (ranks (List.map fst ok)) (ranks (List.map snd ok))

/// Spearman's ρ of the pairs with a percentile bootstrap band over them: `n` resamples of the pairs with replacement
/// (seeded), the 2.5th and 97.5th percentiles of ρ (resamples whose ρ is undefined are left out).
let spearmanBand (pairs: (float * float) list) (n: int) (seed: int) =
    let ok = pairs |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y) |> List.toArray
    let rho = spearman (List.ofArray ok)
    if ok.Length < 3 then rho, nan, nan
    else
        let rng = Random(seed)
        let rs =
            [| for _ in 1 .. n -> spearman [ for _ in 1 .. ok.Length -> ok[rng.Next ok.Length] ] |]
            |> Array.filter Double.IsFinite |> Array.sort
        if rs.Length = 0 then rho, nan, nan
        else
            let at (q: float) = rs[min (rs.Length - 1) (int (Math.Floor(q * float (rs.Length - 1))))]
            rho, at 0.025, at 0.975
