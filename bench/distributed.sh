#!/usr/bin/env bash
# Data-parallel throughput, measured side by side in one run: MoFO on stories260K + DPR, 100 steps of 16 (micro-batch
# 8), as 1 process with 1 thread, 1 process with 2 threads, and `mpirun -n 2` with 1 thread per rank. Prints trained
# (predicted) tokens per second over steps 11-100 and the ratios. Needs MPICH (apt install mpich).
#   bash bench/distributed.sh [RANKS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ranks="${1:-2}"
data="${MOFO_DATA:-$root/../shared/data}"
./mofo --build-only
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
args=(train --model "$data/models/stories260K/stories260K.bin" --data "$data/finetune/definite_pronoun_resolution/train.c.txt"
      --format dpr --method mofo --steps 100 --batch-size 16 --micro-batch-size 8 --lr 1e-3 --schedule constant --max-len 128)
rate() {
  python3 -c "
import json
m = [json.loads(l) for l in open('$1/metrics.jsonl')]
print(sum(x['tokens'] for x in m[10:]) / (m[-1]['elapsedSeconds'] - m[9]['elapsedSeconds']))"
}
MOFO_THREADS=1 ./mofo "${args[@]}" --output "$out/a" > /dev/null 2>&1
MOFO_THREADS="$ranks" ./mofo "${args[@]}" --output "$out/b" > /dev/null 2>&1
MOFO_THREADS=1 mpirun -n "$ranks" ./mofo "${args[@]}" --output "$out/c" > /dev/null 2>&1
a=$(rate "$out/a"); b=$(rate "$out/b"); c=$(rate "$out/c")
python3 -c "
a, b, c = $a, $b, $c
print(f'1 process, 1 thread:          {a:7.0f} tokens/s')
print(f'1 process, $ranks threads:         {b:7.0f} tokens/s  ({b / a:.2f}x)')
print(f'$ranks ranks, 1 thread each:      {c:7.0f} tokens/s  ({c / a:.2f}x of 1 thread, {c / b:.2f}x of $ranks threads)')"
