"""The generation UNets and the segmenter beside eager and torch.compile, one process.

``python -m bench.generation_table`` (from the repository root) times, per model and batch,
the eager model, the fused model, the fused model with autotuned dispatch and
``torch.compile`` of the eager model (Inductor's freezing on the CPU), interleaved round-robin
as ``python -m ascan bench`` does, and prints median ms [IQR] with the fused ratios against
eager and compile. Defaults: ``ascan_unet_c2i_s`` and ``ascan_unet_c2i_b`` on 32x32 latents at
batch 1 and 8, ``ascan_t_seg`` at 512x512, batch 1; fp32.

The weights are random with the zero-initialised output layers perturbed, so no path can
skip work. Nothing is asserted: this prints what this machine does.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

import torch

import ascan_kernels as K
from ascan import build_model
from ascan.cli.bench import (Timing, _autocast, _compile, busy_warning, load_average, time_interleaved, verdict,
                             write_json_atomic)
from ascan.cli.tables import markdown_table
from ascan.export import example_inputs

DEFAULT_CELLS = ("ascan_unet_c2i_s:1,8", "ascan_unet_c2i_b:1,8", "ascan_t_seg:1")


def _models(name: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fused = build_model(name, fused=True).eval().to(device)
    eager = build_model(name, fused=False).eval().to(device)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def _ratio(a: Timing, b: Timing) -> str:
    v = verdict(a, b)
    return f"{v.ratio:.2f}x ({'IQRs apart' if v.text.startswith(('holds', 'does not')) else 'within noise'})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.generation_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), help="model:batch,batch ...")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--autotune-cache", default=None, help="the autotune cache (default: ascan_kernels')")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--size", type=int, default=None,
                    help="latent size for the UNets, image size for the segmenter (default: the model's)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file (rewritten after every row)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    warn = busy_warning(load_average(), torch.get_num_threads(), "before timing")
    if warn:
        print(warn, file=sys.stderr)
    head = ["model", "batch", "eager ms", "fused ms", "autotuned ms", "compile ms", "fused vs eager",
            "fused vs compile", "autotuned vs compile"]
    rows = [head]
    measured: list[dict] = []
    for cell in args.cells:
        name, _, batches = cell.partition(":")
        fused, eager = _models(name, device)
        compiled = None if args.no_compile else _compile(eager, device)
        for b in [int(s) for s in (batches or "1").split(",")]:
            inputs = example_inputs(fused, batch=b, size=args.size)
            print(f"{name} batch {b} ...", file=sys.stderr, flush=True)

            def tuned(inputs=inputs):
                with K.autotune(args.autotune_cache):
                    return fused(*inputs)
            fns = {"eager": lambda: eager(*inputs), "fused": lambda: fused(*inputs), "tuned": tuned}
            if compiled is not None:
                fns["compiled"] = lambda: compiled(*inputs)
            with torch.no_grad(), _autocast(device, args.dtype):
                tuned()  # fill the autotune cache before timing
                t = time_interleaved(fns, args.runs, max(args.warmup, 1), device)
            c = t.get("compiled")
            rows.append([name, str(b), t["eager"].cell(), t["fused"].cell(), t["tuned"].cell(),
                         c.cell() if c else "-", _ratio(t["fused"], t["eager"]),
                         _ratio(t["fused"], c) if c else "-", _ratio(t["tuned"], c) if c else "-"])
            measured.append({"model": name, "batch": b, "dtype": args.dtype, "device": str(device),
                             **{k: dataclasses.asdict(v) for k, v in t.items()}})
            if args.json:
                write_json_atomic(args.json, {"complete": False, "runs": args.runs, "rows": measured})
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        write_json_atomic(args.json, {"complete": True, "runs": args.runs, "rows": measured})
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\n{args.dtype} on {device} ({threads}), median [IQR] of {args.runs} interleaved rounds; "
          "ratios > 1: the first is faster\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
