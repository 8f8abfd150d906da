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
import os
import statistics
import time

import torch

from .registry import build_model, list_models


def busy_warning(threads: int | None = None) -> str | None:
    """A warning when the 1-minute load average exceeds the threads torch uses.

    On a shared machine a neighbour's load slows torch's multi-threaded CPU work many
    times over, so timings taken then say little about this code."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    threads = threads or torch.get_num_threads()
    if load > threads:
        return (f"WARNING: this machine is busy (load average {load:.1f} > {threads} threads torch uses): "
                "the timings below are slowed by other work and vary from run to run")
    return None


def _quartiles(ts: list[float]) -> tuple[float, float, float]:
    if len(ts) == 1:
        return ts[0], ts[0], ts[0]
    q1, q2, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    return q1, q2, q3


def interleaved_times(fns: dict[str, callable], runs: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each fn, measured round-robin after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def verdict(eager: list[float], fused: list[float]) -> str:
    """"1.23x faster", "1.10x slower", or "within noise" when the IQRs overlap."""
    e1, em, e3 = _quartiles(eager)
    f1, fm, f3 = _quartiles(fused)
    ratio = em / fm
    if f1 <= e3 and e1 <= f3:
        return f"{ratio:.2f}x (within noise: the interquartile ranges overlap)"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


def main(argv: list[str] | None = None) -> int:
    import ascan_kernels as K

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
    warn = busy_warning()
    if warn:
        print(warn)
    with torch.inference_mode():
        want, got = eager(x), fused(x)
        err = (got - want).abs().max().item()
        with K.trace() as tr:
            fused(x)
        times = interleaved_times({"eager": lambda: eager(x), "fused": lambda: fused(x)}, args.runs, args.warmup)
    for name in ("eager", "fused"):
        q1, med, q3 = _quartiles(times[name])
        print(f"  {name:5s} median {med:8.1f} ms   (interquartile {q1:.1f}-{q3:.1f} ms, {args.runs} runs)")
    print(f"  fused vs eager: {verdict(times['eager'], times['fused'])}; outputs agree to {err:.1e} (max abs)")
    print("\nkernels that ran in one fused forward (ascan_kernels.trace()):")
    print(tr.table())
    print(f"\ndone in {time.perf_counter() - t_start:.0f} s. Next: `python -m ascan_kernels` (what can run here and "
          "why), `python -m ascan bench` (every model, timm peers), README.md.")
    return 0
