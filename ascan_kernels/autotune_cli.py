"""``python -m ascan_kernels autotune --model ascan_t --batch 16``: fill the autotune cache for
a model ahead of time (see :mod:`ascan_kernels.autotuning`)."""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .autotuning import ENV_CACHE, ENV_ENABLE, autotune, cache_path
from .registry import trace

MODEL_PROVIDERS = "ascan_kernels.models"


def _model_provider() -> Callable[..., tuple[torch.nn.Module, tuple]]:
    """The installed package that knows models by name (``ascan``, through the
    ``ascan_kernels.models`` entry point: this package never imports its users)."""
    # Walk every distribution: entry_points(group=) keeps one distribution per name, and a
    # stale ascan.egg-info in the working folder would then hide the installed one.
    eps = [ep for dist in importlib.metadata.distributions() for ep in dist.entry_points
           if ep.group == MODEL_PROVIDERS]
    if not eps:
        raise SystemExit(f"autotune --model: no package provides models (entry point group {MODEL_PROVIDERS!r}); "
                         "install ascan (pip install -e .)")
    return eps[0].load()


def main(argv: Sequence[str] | None = None) -> int:
    """Fill the cache for one model: run its forward once with autotuning on, print the choices."""
    ap = argparse.ArgumentParser(prog="python -m ascan_kernels autotune", description=main.__doc__)
    ap.add_argument("--model", required=True, help="a registered model name (python -m ascan variants)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: under CPU/CUDA autocast, as the bench's bf16 rows run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (part of the cache key)")
    ap.add_argument("--cache", default=None, help=f"cache file (default: {ENV_CACHE} or {cache_path()})")
    ap.add_argument("--retune", action="store_true", help="time again where the cache has a decision")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    try:
        model, inputs = _model_provider()(args.model, batch=args.batch, size=args.size, device=device)
    except (KeyError, ValueError) as e:  # an unknown model name
        ap.error(str(e.args[0]) if e.args else str(e))
    start = time.perf_counter()
    autocast = torch.autocast(device.type, torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), autocast, autotune(args.cache, retune=args.retune), trace() as t:
        model(*inputs)
    took = time.perf_counter() - start
    print(t.table())
    tuned = [r for r in t.records if r.tuned]
    timed = sum(1 for r in tuned if "(timed)" in r.tuned)
    print(f"\n{args.model} batch {args.batch} {args.dtype} on {device}: {len(tuned)} of {len(t.records)} op calls "
          f"autotuned ({timed} timed now, {len(tuned) - timed} from the cache) in {took:.1f} s; "
          f"cache {Path(args.cache) if args.cache else cache_path()}")
    print(f"Use it: {ENV_ENABLE}=1 (or `with ascan_kernels.autotune():`) makes the same calls take these impls.")
    return 0

