#!/usr/bin/env bash
# What watching forgetting costs, measured side by side in one run: MoFO on stories260K + DPR at the trainer's defaults
# (batch 16, 512 tokens, a watch every 50 steps) with the held-out set, STEPS steps (default 100) without a watch and
# with `--watch-forgetting pretrain-proxy,kl-to-base`, in the order A B B A (load drifts). Prints the wall time of
# each, the watches' own seconds (metrics.jsonl's watchSeconds, and the base's record at the start) and the cost
# relative to training.
#   bash bench/watch-cost.sh [STEPS] [EVERY]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps="${1:-100}"
every="${2:-50}"
data="${MOFO_DATA:-$root/../shared/data}"
./mofo --build-only
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
args=(train --model "$data/models/stories260K/stories260K.bin" --data "$data/finetune/definite_pronoun_resolution/train.c.txt"
      --eval-data "$data/finetune/definite_pronoun_resolution/test.c.txt" --format dpr --method mofo --steps "$steps" --lr 1e-3)
watch=(--watch-forgetting pretrain-proxy,kl-to-base --watch-every "$every")
timed() { local s e; s=$(date +%s.%N); ./mofo "$@" > /dev/null 2>&1; e=$(date +%s.%N); python3 -c "print($e - $s)"; }
a1=$(timed "${args[@]}" --output "$out/a1")
b1=$(timed "${args[@]}" "${watch[@]}" --output "$out/b1")
b2=$(timed "${args[@]}" "${watch[@]}" --output "$out/b2")
a2=$(timed "${args[@]}" --output "$out/a2")
python3 - "$out" "$a1" "$a2" "$b1" "$b2" "$steps" "$every" <<'PY'
import json, sys
out, a1, a2, b1, b2, steps, every = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6]), int(sys.argv[7])
def train_seconds(run):
    m = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    return m[-1]["elapsedSeconds"], sum(x.get("watchSeconds") or 0 for x in m), sum(1 for x in m if x.get("watchSeconds"))
a, b = (a1 + a2) / 2, (b1 + b2) / 2
print(f"{steps} steps, a watch every {every} steps (pretrain-proxy, kl-to-base, with the held-out loss)")
print(f"without a watch: {a1:7.1f} s, {a2:7.1f} s (mean {a:.1f} s)")
print(f"with the watch:  {b1:7.1f} s, {b2:7.1f} s (mean {b:.1f} s)")
for run in ("b1", "b2"):
    loop, w, n = train_seconds(run)
    print(f"  {run}: {n} watches took {w:.1f} s of the loop's {loop:.1f} s ({100 * w / (loop - w):.1f} % of training)")
print(f"whole command: {b / a:.3f}x ({100 * (b - a) / a:+.1f} %, the base's record at the start included)")
PY
