"""The ``cuda`` impl of layer_norm: ``ascan_C::layer_norm_fwd`` / ``layer_norm_bwd``
(csrc/ops/layer_norm/): one warp per row held in registers (C <= 1280), fp32 statistics,
a deterministic two-level dweight/dbias reduction in the backward.

Also the fakes and the autograd formula of those ops and of their CPU reference loops
(``*_reference``, the same math on the CPU, for tests).
"""
from __future__ import annotations

import functools

import torch

from ... import _ext
from ...backends import cuda as backend
from ...backends.cuda import f32
from ...registry import Impl

LAYER_NORM_MAX_C = 1280  # csrc: kLayerNormMaxC, a row per warp in registers
KERNELS = ("layer_norm_fwd", "layer_norm_bwd")


def _supports(x, weight, bias, eps=1e-5):
    reason = backend.param_reason(weight=weight, bias=bias)
    if reason:
        return reason
    if x.shape[-1] > LAYER_NORM_MAX_C:
        return f"C={x.shape[-1]} > {LAYER_NORM_MAX_C}: the kernel holds a row in one warp's registers"
    return None


def _layer_norm(x, weight, bias, eps=1e-5):
    if backend.autocast_runs_fp32(x):
        x = x.float()
    # weight/bias cast to float32 here (differentiably): the kernels read float32 params.
    return torch.ops.ascan_C.layer_norm_fwd(x.contiguous(), f32(weight), f32(bias), float(eps))[0]


# Shape/dtype rules only; the C++ checks give the full messages when the kernels run.
def _layer_norm_fwd_fake(x, weight, bias, eps):
    torch._check(x.dim() >= 1, lambda: "ascan layer_norm_fwd: x must have at least 1 dim")
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    stats = lambda: torch.empty((rows,), dtype=torch.float32, device=x.device)  # noqa: E731
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), stats(), stats()


def _layer_norm_bwd_fake(dy, x, mean, rstd, weight):
    C = x.shape[-1]
    vec = lambda: torch.empty((C,), dtype=torch.float32, device=x.device)  # noqa: E731
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), vec(), vec()


def _setup_context(ctx, inputs, output):
    x, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward_through(bwd_name: str):
    """The backward of ``layer_norm_fwd*``: x, weight and bias are differentiable through
    the matching backward op; mean and rstd are saved statistics (their incoming
    gradients are ignored)."""
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = getattr(torch.ops.ascan_C, bwd_name)(grad_y.contiguous(), x, mean, rstd, weight)
        return dx, (dw if weight is not None else None), (db if ctx.has_bias else None), None
    return backward


for _suffix in ("", "_reference"):  # the CUDA ops and their CPU reference loops
    _ext.register_fake(f"layer_norm_fwd{_suffix}")(_layer_norm_fwd_fake)
    _ext.register_fake(f"layer_norm_bwd{_suffix}")(_layer_norm_bwd_fake)
    _ext.register_autograd(f"layer_norm_fwd{_suffix}", _backward_through(f"layer_norm_bwd{_suffix}"), _setup_context)


def impl() -> Impl:
    return Impl("cuda", _layer_norm, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=True,
                doc="warp-per-row LayerNorm forward/backward, C <= 1280")
