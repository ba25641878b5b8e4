#!/usr/bin/env python3
"""PyTorch peer of `mofo bench optim`: times torch.optim.AdamW.step() on the same parameter shapes.

Usage: adamw_peer.py --shapes "4096x512;512;..." [--reps 7] [--warmup 2] [--threads N] [--foreach]
Prints one JSON line: {"torch": version, "threads": n, "foreach": bool, "median_ms": t, "times_ms": [...]}.
Benchmark-only: the tests never need PyTorch (Debian: apt-get install python3-torch).
"""
import argparse, json, statistics, time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--foreach", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shapes = [tuple(int(d) for d in s.split("x")) for s in a.shapes.split(";") if s]
    params = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=a.foreach)
    for _ in range(a.warmup):
        opt.step()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "foreach": a.foreach,
                      "median_ms": statistics.median(times), "times_ms": times}))


if __name__ == "__main__":
    main()
