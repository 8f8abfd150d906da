"""The ``cpu`` impl of group_norm_silu: ``ascan_C::group_norm_silu`` on the CPU (csrc/ops/group_norm_silu/).

One pass for the GroupNorm statistics (two-pass per cache-sized block, merged exactly)
and one vectorised pass ``y = silu((x - mean) * a + b)`` with weight, bias, rstd, scale
and shift folded into per-(n, c) coefficients; at::vec kernels per instruction set
(base / AVX2 / AVX-512), OpenMP through at::parallel_for. Eager PyTorch needs four passes
(group_norm, ``* (1 + scale)``, ``+ shift``, silu) and three temporaries.

Inference only (no backward): the registry skips it when an input requires grad.
"""
from __future__ import annotations

import torch

from ... import _ext
from ..._common import memory_format_of
from ..._ext import REBUILD, has_kernel, load_extension
from ...capabilities import Capabilities
from ...registry import Impl

DTYPES = (torch.float32, torch.bfloat16)


def available_reason() -> str | None:
    """Why the kernel cannot run in this process (extension missing or too old), or None."""
    mod, why = load_extension()
    if mod is None:
        return why
    if not has_kernel("group_norm_silu", "CPU"):
        return f"ascan_kernels._C has no CPU kernel for group_norm_silu; rebuild: {REBUILD}"
    return None


def supports_reason(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None) -> str | None:
    """None if the kernel can run these inputs, else why not (the op has validated shapes)."""
    if x.dim() != 4:
        return f"x must be 4-D (N, C, H, W), got {x.dim()}-D"
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return f"x must be contiguous (NCHW) or channels_last, got strides {x.stride()}"
    for name, t in (("weight", weight), ("bias", bias), ("scale", scale), ("shift", shift)):
        if t is not None and not t.is_floating_point():
            return f"{name} must be a floating tensor, got {t.dtype}"
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and torch.promote_types(x.dtype, t.dtype) != x.dtype:
            return (f"{name} is {t.dtype} and x {x.dtype}: the reference returns {t.dtype} by type promotion, "
                    f"the kernel writes x's dtype")
    return None


def prefer_reason(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None) -> str | None:
    """None: picked automatically wherever it runs.

    No rule needed: bench/ops/bench_group_norm_silu.py (2 threads, AVX-512, both
    memory formats, fp32/bf16) measured it faster than eager at every shape, the
    smallest included, e.g. median ms eager -> cpu: (1, 128, 8, 8) fp32 NCHW 0.031 -> 0.020,
    (8, 384, 8, 8) bf16 NCHW 0.131 -> 0.061, (8, 128, 32, 32) fp32 channels_last
    0.368 -> 0.150, (8, 256, 32, 32) bf16 channels_last 0.828 -> 0.367. Below a few
    thousand elements both are call overhead (~5 us for this op, 4 eager ops for eager).
    """
    return None


def _group_norm_silu(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None):
    """``silu(group_norm(x) * (1 + scale) + shift)`` on the CPU.

    x: (N, C, H, W) float32/bfloat16, NCHW-contiguous or channels_last; weight, bias:
    (C,) or None; scale, shift: (N, C) or None, any float dtype. Returns x's shape,
    dtype and memory format; computed in float32, rounded once.
    """
    return torch.ops.ascan_C.group_norm_silu(x, num_groups, weight, bias, float(eps), scale, shift)


def impl() -> Impl:
    """The registry entry for ``group_norm_silu``."""
    return Impl("cpu", _group_norm_silu, caps=Capabilities(devices=("cpu",), dtypes=DTYPES),
                supports=supports_reason, available=available_reason,
                autograd=False, prefer=prefer_reason,
                doc="C++ (at::vec per ISA, OpenMP): two-pass group stats, one fused silu((x-mean)*a+b) pass")


@_ext.register_fake("group_norm_silu")
def _group_norm_silu_fake(x, num_groups, weight, bias, eps, scale, shift):
    # The kernels (CPU and CUDA) allocate like x: its dtype, and its memory format
    # (NCHW or channels_last; the checks reject anything else).
    torch._check(x.dim() >= 3, lambda: f"ascan group_norm_silu: x must have at least 3 dims, got {tuple(x.shape)}")
    return torch.empty_like(x, memory_format=memory_format_of(x) or torch.contiguous_format)


_ext.register_fake("group_norm_silu_reference")(_group_norm_silu_fake)
