"""``python -m ascan export``: write a model as ONNX, a torch.export ``.pt2``, an AOTInductor
package or OpenVINO IR, then load the artifact back and print how far its output is from
the eager model's on a fresh input (the parity check; exit status 1 on a mismatch).

The weights are the model's initialisation (seeded: ``--seed``) unless ``--weights`` names
a safetensors file (a checkpoint of ``python -m ascan train``, or any file whose keys match).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .. import export as ex
from ..models.registry import build_model, list_models


def _load_weights(model: torch.nn.Module, path: str) -> None:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise SystemExit("--weights needs safetensors (pip install safetensors)") from None
    try:
        state = load_file(path)
    except Exception as e:
        raise SystemExit(f"--weights {path}: cannot read it as safetensors: {type(e).__name__}: {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"--weights {path}: does not fit the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan export", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="ascan_t", choices=list_models())
    ap.add_argument("--format", default="onnx", choices=ex.FORMATS,
                    help="onnx (ONNX Runtime, OpenVINO, ...); pt2 (torch.export); aoti (AOTInductor "
                         "package); openvino (IR .xml + .bin)")
    ap.add_argument("--out", required=True, help=f"the file to write ({', '.join(f'{k}: *{v}' for k, v in ex.SUFFIX.items())})")
    ap.add_argument("--decompose", action="store_true",
                    help="pt2: no custom ops in the graph (loads with torch alone); onnx, aoti and openvino "
                         "always are")
    ap.add_argument("--unfused", action="store_true", help="export the fused=False model")
    ap.add_argument("--num-classes", type=int, help="classifier / c2i UNet classes (default: the model's)")
    ap.add_argument("--size", type=int, help="input height = width (default: 224 classifiers, 512 "
                                             "segmenters, 32 UNet latents)")
    ap.add_argument("--batch", type=int, default=2, help="batch of the parity check (the artifact takes any)")
    ap.add_argument("--static-batch", action="store_true", help="fix the batch at --batch instead")
    ap.add_argument("--weights", help="safetensors weights to load first")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be >= 1")
    if args.decompose and args.format != "pt2":
        ap.error("--decompose applies to --format pt2 (the other formats never hold custom ops)")

    torch.manual_seed(args.seed)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    try:
        model = build_model(args.model, fused=not args.unfused, **kwargs).eval()
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    if args.weights:
        _load_weights(model, args.weights)
    try:
        trace_inputs = ex.example_inputs(model, batch=args.batch, size=args.size, seed=args.seed)
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    opts = {"dynamic_batch": not args.static_batch}
    if args.format == "pt2":
        opts["decompose"] = args.decompose
    t0 = time.perf_counter()
    try:
        out = ex.export(model, args.out, args.format, trace_inputs, **opts)
    except (ex.ExportError, ValueError) as e:
        print(f"python -m ascan export: {e}", file=sys.stderr)
        return 1
    took = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (out.path, out.path.with_suffix(".bin"))
               if p.exists() and (p == out.path or out.format == "openvino"))
    print(f"wrote {out.path} ({out.format}, {size / 1e6:.1f} MB) in {took:.1f} s: {args.model}"
          f"{' (unfused)' if args.unfused else ''}, inputs "
          + ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in out.meta["inputs"])
          + ("" if args.static_batch else " (batch dynamic)"))
    if out.custom_ops:
        print(f"  holds custom ops {', '.join(out.custom_ops)}: load it with `import ascan_kernels` first "
              "(or export with --decompose)")
    check = ex.example_inputs(model, batch=args.batch, size=args.size, seed=args.seed + 1)
    run = ex.load_runner(Path(out.path), out.format)
    p = ex.parity(model, run, check)
    print(f"parity on a fresh input (batch {args.batch}): {p}")
    return 0 if p.ok else 1
