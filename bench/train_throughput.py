"""Interleaved training throughput (images/s): ``python -m bench.train_throughput [--case ...]``.

Every row of a case is built first, then timed round-robin (eager, fused, compile,
eager, ...) so load from elsewhere falls on all rows alike. Prints median images/s,
the spread (IQR) and the ratio to eager with a within-noise verdict, per dtype.
"""
from __future__ import annotations

import argparse
import json

import torch

from ascan.cli.bench import load_average, time_interleaved, verdict

from .train_steps import CASES, ROWS, make_step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", choices=list(CASES), help="default: every case")
    ap.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="default: both")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average()}")
    for case in args.case or list(CASES):
        for dtype in args.dtype or ["fp32", "bf16"]:
            rows = args.rows.split(",")
            fns = {r: make_step(case, r, dtype, args.batch, dev) for r in rows}
            t = time_interleaved(fns, args.runs, args.warmup, dev)
            base = t.get("eager")
            print(f"\n{case} b{args.batch} {dtype}")
            for r in rows:
                ips = args.batch / (t[r].median_ms / 1e3)
                line = f"  {r:16s} {ips:8.1f} img/s  step {t[r].cell()} ms"
                if base is not None and r != "eager":
                    line += f"  {base.median_ms / t[r].median_ms:5.2f}x eager: {verdict(t[r], base).text}"
                print(line)
                results.append(dict(case=case, dtype=dtype, row=r, batch=args.batch, median_ms=t[r].median_ms,
                                    q1_ms=t[r].q1_ms, q3_ms=t[r].q3_ms, images_per_s=ips))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
