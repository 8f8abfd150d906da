"""Resource and roofline report for the Triton kernels, computed without a GPU.

``python -m ascan_kernels.tools.report`` prints two tables:

1. **Resources**: every Triton kernel variant compiled ahead of time for sm_80 and
   sm_90 at each of its autotune configs (:mod:`.aot`): registers per thread, spilled
   bytes, shared memory per block and the tensor-core instructions in the PTX. One
   row per kernel and target, with the range over its configs.
2. **Roofline at the model's real shapes**: every fused-op call of a model forward
   (default ``ascan_t``, batch 64, 224x224, and ``ascan_unet_c2i_b``, batch 64, 32x32
   latents; bfloat16, inference), found by running
   the model on the meta device under ``ascan_kernels.trace()``. For each distinct
   call: FLOPs, the fewest HBM bytes the fused kernel must move, the bytes the
   unfused eager sequence moves, and the time floor of each on an H100
   (``max(bytes / 3.0 TB/s, flops / 790 TFLOP/s)`` per kernel, summed over the
   kernels of a sequence). Fusion's gain on paper is eager floor / fused floor.

The byte counts are lower bounds: each tensor read or written once per kernel,
parameters counted, caches assumed perfect, launch overhead ignored. The eager
sequences are what PyTorch runs for the unfused model in eval mode:

* conv_bn_gelu: conv (x, w -> y), BN (y -> y), GELU (y -> y)
* conv_bn_add:  conv, BN, add (y, residual -> out);  conv_bn: conv, BN
* attention:    q k^T -> S, * scale, softmax (S -> P), P v -> o  (the L x L scores
  make three round trips through HBM; the fused kernel keeps them on chip)
* layer_norm:   one kernel either way (no gain on paper: the Triton kernel exists for
  its fused backward and as the base of add_layer_norm)
* add_layer_norm: add (x, r -> s), LayerNorm (s -> y)
* linear_gelu:  GEMM with bias (x, W -> h), GELU (h -> h);  linear_add: GEMM, add
* group_norm_silu: GroupNorm (stats read + apply), * (1 + scale), + shift, SiLU
* conv_bias_act: conv with bias (x, w -> y), + residual (y, r -> out), activation (y -> y)
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import torch

import ascan
import ascan_kernels as K
from ascan.cli.tables import markdown_table

from . import aot
from .cuda_resources import resource_usage

H100_BYTES_PER_S = 3.0e12
H100_BF16_FLOPS = 790e12
SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@dataclasses.dataclass
class Cost:
    """One kernel's HBM traffic and arithmetic."""

    bytes: float
    flops: float = 0.0

    def floor_s(self, bytes_per_s: float = H100_BYTES_PER_S, flops_per_s: float = H100_BF16_FLOPS) -> float:
        """The time floor on a device of that memory bandwidth and arithmetic rate (an H100's
        by default)."""
        return max(self.bytes / bytes_per_s, self.flops / flops_per_s)


def _numel(shape) -> int:
    return math.prod(shape)


def _conv_costs(op: str, args: tuple, e: int) -> tuple[Cost, list[Cost], str]:
    (xs, _), (ws, _) = args[0], args[1]
    stride, padding = args[8], args[9]
    n, cin, h, w = xs
    cout, _, kh, kw = ws
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    x, wt, y = _numel(xs) * e, _numel(ws) * e, n * cout * ho * wo * e
    flops = 2.0 * n * ho * wo * cout * cin * kh * kw
    residual = op == "conv_bn_add"
    fused = Cost(x + wt + y + (y if residual else 0), flops)
    eager = [Cost(x + wt + y, flops), Cost(2 * y)]                 # conv, BN
    if residual:
        eager.append(Cost(3 * y))                                  # + residual
    if op == "conv_bn_gelu":
        eager.append(Cost(2 * y))                                  # GELU
    desc = f"{kh}x{kw}/s{stride[0]} {n}x{cin}x{h}x{w} -> {cout}x{ho}x{wo}"
    return fused, eager, desc


def _conv_bias_act_costs(args: tuple, e: int) -> tuple[Cost, list[Cost], str]:
    (xs, _), (ws, _) = args[0], args[1]
    residual, stride, padding, dilation, groups, act = args[3], args[4], args[5], args[6], args[7], args[8]
    n, cin, h, w = xs
    cout, cin_g, kh, kw = ws
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x, wt, y = _numel(xs) * e, _numel(ws) * e, n * cout * ho * wo * e
    flops = 2.0 * n * ho * wo * cout * cin_g * kh * kw
    fused = Cost(x + wt + y + (y if residual is not None else 0), flops)
    eager = [Cost(x + wt + y, flops)]                              # conv with its bias
    if residual is not None:
        eager.append(Cost(3 * y))                                  # + residual
    if act != "none":
        eager.append(Cost(2 * y))                                  # the activation
    desc = (f"{kh}x{kw}/s{stride[0]} {n}x{cin}x{h}x{w} -> {cout}x{ho}x{wo}"
            + (" + res" if residual is not None else "") + ("" if act == "none" else f" {act}"))
    return fused, eager, desc


def _attention_costs(args: tuple, e: int) -> tuple[Cost, list[Cost], str]:
    (qs, _), (ks, _), (vs, _) = args[0], args[1], args[2]
    b, h, lq, d = qs
    lk = ks[2]
    q, k, v, o = _numel(qs) * e, _numel(ks) * e, _numel(vs) * e, _numel(qs) * e
    s = b * h * lq * lk * e
    flops = 2.0 * b * h * lq * lk * d
    fused = Cost(q + k + v + o, 2 * flops)
    eager = [Cost(q + k + s, flops), Cost(2 * s), Cost(2 * s), Cost(s + v + o, flops)]
    return fused, eager, f"B{b} H{h} Lq{lq} Lk{lk} D{d}"


def _linear_costs(op: str, args: tuple, e: int) -> tuple[Cost, list[Cost], str]:
    (xs, _), (ws, _) = args[0], args[1]
    m, k = _numel(xs[:-1]), xs[-1]
    n = ws[0]
    x, wt, y = m * k * e, n * k * e, m * n * e
    flops = 2.0 * m * n * k
    if op == "linear_gelu":
        return Cost(x + wt + y, flops), [Cost(x + wt + y, flops), Cost(2 * y)], f"{m}x{k} @ {k}x{n}"
    return Cost(x + wt + 2 * y, flops), [Cost(x + wt + y, flops), Cost(3 * y)], f"{m}x{k} @ {k}x{n} + res"


def _norm_costs(op: str, args: tuple, e: int) -> tuple[Cost, list[Cost], str]:
    (xs, _) = args[0]
    n = _numel(xs) * e
    if op == "layer_norm":
        return Cost(2 * n), [Cost(2 * n)], "x".join(map(str, xs))
    if op == "add_layer_norm":
        return Cost(4 * n), [Cost(3 * n), Cost(2 * n)], "x".join(map(str, xs))
    # group_norm_silu: the fused kernel reads x twice (statistics, then apply)
    film = sum(a is not None for a in args[5:7])
    eager = [Cost(3 * n)] + [Cost(2 * n)] * film + [Cost(2 * n)]
    return Cost(3 * n), eager, "x".join(map(str, xs))


def call_costs(op: str, args: tuple) -> tuple[Cost, list[Cost], str]:
    """(fused kernel cost, eager sequence costs, shape description) of one traced call."""
    dtype = args[0][1]
    e = SIZE.get(dtype, 4)
    if op.startswith("conv_bn"):
        return _conv_costs(op, args, e)
    if op == "conv_bias_act":
        return _conv_bias_act_costs(args, e)
    if op == "attention":
        return _attention_costs(args, e)
    if op.startswith("linear_"):
        return _linear_costs(op, args, e)
    return _norm_costs(op, args, e)


def _model_inputs(model, name: str, batch: int, resolution: int, dtype: torch.dtype) -> tuple:
    """Meta-device inputs of one forward: images for classifiers/segmenters, (latents, t,
    class or context) for the UNets (``resolution`` is then the latent size)."""
    if not name.startswith("ascan_unet"):
        x = torch.empty(batch, 3, resolution, resolution, device="meta", dtype=dtype)
        return (x.contiguous(memory_format=torch.channels_last),)
    x = torch.empty(batch, model.cfg.in_channels, resolution, resolution, device="meta", dtype=dtype)
    t = torch.zeros(batch, device="meta", dtype=torch.long)
    if model.num_classes is not None:
        return x, t, torch.zeros(batch, device="meta", dtype=torch.long)
    return x, t, torch.empty(batch, 77, model.cfg.context_dim, device="meta", dtype=dtype)


def model_calls(name: str = "ascan_t", batch: int = 64, resolution: int = 224,
                dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> list[tuple[str, tuple, int]]:
    """Distinct fused-op calls of one inference forward as ``(op, args summary, count)``.

    The model runs on the meta device, so no memory is allocated and any size works.
    For the UNets ``resolution`` is the latent size (a 77-token context for t2i).
    ``kwargs`` go to ``build_model`` (e.g. ``num_classes``).
    """

    model = ascan.build_model(name, fused=True, **kwargs).eval().to(device="meta", dtype=dtype)
    inputs = _model_inputs(model, name, batch, resolution, dtype)
    with torch.no_grad(), K.trace() as t:
        model(*inputs)
    counts: dict[tuple, int] = {}
    for r in t.records:
        key = (r.op, r.args)
        counts[key] = counts.get(key, 0) + 1
    return [(op, args, c) for (op, args), c in counts.items()]


def roofline_table(calls: list[tuple[str, tuple, int]]) -> str:
    """Markdown table of the roofline per distinct call, with a model total."""
    rows = [("op", "shape", "calls", "GFLOP", "fused MB", "eager MB", "fused floor us",
             "eager floor us", "gain")]
    tot_f = tot_e = 0.0
    for op, args, count in calls:
        fused, eager, desc = call_costs(op, args)
        ff = fused.floor_s() * 1e6
        fe = sum(c.floor_s() for c in eager) * 1e6
        tot_f += ff * count
        tot_e += fe * count
        rows.append((op, desc, str(count), f"{fused.flops / 1e9:.2f}", f"{fused.bytes / 1e6:.1f}",
                     f"{sum(c.bytes for c in eager) / 1e6:.1f}", f"{ff:.1f}", f"{fe:.1f}", f"{fe / ff:.2f}x"))
    rows.append(("**all fused-op calls**", "", "", "", "", "", f"{tot_f:.0f}", f"{tot_e:.0f}",
                 f"{tot_e / tot_f:.2f}x"))
    return markdown_table(rows, right={2, 3, 4, 5, 6, 7, 8})


def _without_dtype(name: str) -> str:
    """``attn_fwd[bf16,d64,nomask]`` -> ``attn_fwd[d64,nomask]``."""
    if "[" not in name:
        return name
    base, rest = name.split("[", 1)
    parts = [p for p in rest.rstrip("]").split(",") if p not in ("fp16", "bf16", "fp32")]
    return f"{base}[{','.join(parts)}]" if parts else base


def _range(lo: str, hi: str) -> str:
    return lo if lo == hi else f"{lo}-{hi}"


def resource_table(results, merge_dtypes: bool = False) -> str:
    """Markdown table: per kernel variant and target, ranges over the autotune configs
    (and over fp16/bf16/fp32 with ``merge_dtypes``)."""
    by: dict[tuple[str, int], list] = {}
    for r in results:
        by.setdefault((_without_dtype(r.name) if merge_dtypes else r.name, r.cc), []).append(r)
    rows = [("kernel", "sm", "configs", "regs", "spill B", "smem KiB", "tensor cores", "status")]
    for (name, cc), rs in by.items():
        regs = sorted(r.registers for r in rs)
        smem = sorted(r.shared for r in rs)
        tcs = sorted({r.tensor_cores for r in rs if r.tensor_cores}) or ["-"]
        bad = [p for r in rs for p in r.problems]
        rows.append((name, str(cc), str(len(rs)), _range(str(regs[0]), str(regs[-1])),
                     str(max(r.spills for r in rs)),
                     _range(f"{smem[0] / 1024:.0f}", f"{smem[-1] / 1024:.0f}"),
                     "/".join(tcs), "ok" if not bad else "; ".join(sorted(set(bad)))))
    return markdown_table(rows, right={2, 3, 4, 5})


def cuda_resource_table() -> str | None:
    """The CUDA C++ extension's kernels from cuobjdump of the built extension: one row per
    kernel family and architecture, ranges over its template instantiations."""
    try:
        usage = resource_usage()
    except Exception as e:
        return f"(CUDA extension resources unavailable: {type(e).__name__}: {e})"
    if not usage:
        return None
    fams: dict[tuple[str, str], list] = {}
    for u in usage:
        name = u.kernel.replace("(anonymous namespace)::", "").removeprefix("void ")
        family = name.split("(")[0].split("<")[0].split("::")[-1]
        fams.setdefault((family, u.arch), []).append(u)
    rows = [("kernel", "arch", "variants", "regs", "smem B", "local (spill) B")]
    for (family, arch), us in sorted(fams.items()):
        regs = sorted(u.registers for u in us)
        rows.append((family, arch, str(len(us)), f"{regs[0]}-{regs[-1]}" if regs[0] != regs[-1] else str(regs[0]),
                     str(max(u.shared for u in us)), str(max(u.local + u.stack for u in us))))
    return markdown_table(rows, right={2, 3, 4, 5})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan_kernels.tools.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ascan_t")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--unet", default="ascan_unet_c2i_b", help="UNet for the second roofline ('' to skip)")
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--unet-latent", type=int, default=32, help="latent size (32 = 256x256 images)")
    ap.add_argument("--no-compile", action="store_true", help="skip the AOT compile sweep (roofline only)")
    ap.add_argument("--merge-dtypes", action="store_true",
                    help="one resource row per kernel and target over all dtypes (shorter table)")
    ap.add_argument("--module", action="append", help="only these op packages' Triton kernels in the sweep")
    args = ap.parse_args(argv)

    status = 0
    if not args.no_compile:
        aot.check_environment()
        results = aot.sweep(aot.specs_of(args.module))
        print("## Triton kernels compiled ahead of time (every autotune config; ranges over configs)\n")
        print(resource_table(results, merge_dtypes=args.merge_dtypes))
        status = 1 if any(not r.ok for r in results) else 0
        cuda = cuda_resource_table()
        if cuda:
            print("\n## CUDA C++ kernels (cuobjdump of the built extension)\n")
            print(cuda)
    print(f"\n## Roofline on an H100 ({H100_BYTES_PER_S / 1e12:.1f} TB/s, {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16): "
          f"{args.model}, batch {args.batch}, {args.resolution}x{args.resolution}, bf16 inference\n")
    print(roofline_table(model_calls(args.model, args.batch, args.resolution)))
    if args.unet:
        print(f"\n## Roofline on an H100: {args.unet}, batch {args.unet_batch}, {args.unet_latent}x{args.unet_latent} "
              "latents, bf16 inference (fused-op calls: the UNet's convs are conv_bias_act calls)\n")
        print(roofline_table(model_calls(args.unet, args.unet_batch, args.unet_latent)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
