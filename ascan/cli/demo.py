"""``python -m ascan`` with no command: the quick look a newcomer runs first.

Builds one classifier twice with identical weights, ``fused=False`` (plain PyTorch) and
``fused=True`` (the ``ascan_kernels`` ops), checks that they agree, times them
interleaved (eager, fused, eager, fused, ...) so a busy neighbour slows both alike, and
prints the median latencies with their spread, the speedup (or "within noise" when the
spreads overlap), and which kernel ran for each op with the reason for every fallback.
Takes well under a minute on 2 CPU cores at the defaults.
"""
from __future__ import annotations

import argparse
import time

import torch

import ascan_kernels as K

from .bench import busy_warning, load_average, time_interleaved, verdict
from ..models.registry import build_model, list_models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="ascan_t", choices=[m for m in list_models() if "unet" not in m
                                                           and not m.endswith("_seg")])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224, help="input resolution (multiple of 32)")
    ap.add_argument("--runs", type=int, default=7, help="timed rounds (one eager + one fused call each)")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    if args.size % 32 or args.size < 32:
        ap.error(f"--size must be a positive multiple of 32, got {args.size}")
    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        ap.error("--batch and --runs must be >= 1, --warmup >= 0")

    t_start = time.perf_counter()
    torch.manual_seed(0)
    eager = build_model(args.model, fused=False).eval()
    fused = build_model(args.model, fused=True).eval()
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"{args.model}: {sum(p.numel() for p in eager.parameters()) / 1e6:.1f}M parameters, input "
          f"{tuple(x.shape)} float32, {torch.get_num_threads()} CPU threads "
          f"({torch.backends.cpu.get_cpu_capability()})")
    warn = busy_warning(load_average(), torch.get_num_threads(), "before timing")
    if warn:
        print(warn)
    with torch.inference_mode():
        want, got = eager(x), fused(x)
        err = (got - want).abs().max().item()
        with K.trace() as tr:
            fused(x)
        times = time_interleaved({"eager": lambda: eager(x), "fused": lambda: fused(x)}, args.runs, args.warmup,
                                 torch.device("cpu"))
    for name in ("eager", "fused"):
        t = times[name]
        print(f"  {name:5s} median {t.median_ms:8.1f} ms   (interquartile {t.spread} ms, {t.runs} runs, interleaved)")
    v = verdict(times["fused"], times["eager"])
    print(f"  fused vs eager: {v.ratio:.2f}x, {v.text.replace('holds here', 'faster').replace('does not hold here', 'slower')}")
    print(f"  outputs agree to {err:.1e} (max abs difference, float32)")
    print("\nkernels that ran in one fused forward (ascan_kernels.trace()):")
    print(tr.table())
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s. Next: `python -m ascan_kernels` (what can run here and "
          "why), `python -m ascan bench` (every model, timm peers), README.md.")
    return 0
