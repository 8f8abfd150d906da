"""GroupNorm + optional per-sample FiLM (scale/shift) + SiLU: the generation UNets' norm.

Diffusion UNets normalise, modulate with the time-step embedding and apply SiLU
before every convolution; eager PyTorch runs that as three or four passes over the
activation, a fused impl as one read and one write. The impls: ``cpu.py`` (our C++
kernel), ``cuda.py`` (our CUDA kernel), ``triton.py``; all share one C++ schema
``ascan_C::group_norm_silu`` (CPU and CUDA keys) where they are ours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _checks as chk
from ...backends import triton as triton_backend
from ...registry import register_decomposition, register_op, unavailable_impl
from . import cpu, cuda

__all__ = ["group_norm_silu", "group_norm_silu_reference"]

OP = "group_norm_silu"


def group_norm_silu_reference(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None):
    """``silu(group_norm(x) * (1 + scale) + shift)``.

    x: (N, C, *spatial) float (any memory format); weight, bias: (C,) or None;
    scale, shift: (N, C) or None, broadcast over the spatial dims (FiLM from a
    time/class embedding). Statistics are computed in float32. Returns x's shape and
    memory format, in the dtype PyTorch's type promotion gives (x's, or float32 when x is
    low precision and scale/shift are float32).

    On the CPU, ``F.group_norm`` of a channels_last tensor uses a one-pass variance that
    cancels catastrophically when the mean is large against the spread (x = 50 + 0.01 *
    noise: errors of 30 on outputs of magnitude 3, torch 2.14.1), so a non-NCHW CPU input
    is normalised in NCHW and the result given back in x's memory format.
    """
    if x.device.type == "cpu" and not x.is_contiguous():
        layout = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        y = F.group_norm(x.contiguous(), num_groups, weight, bias, eps).contiguous(memory_format=layout)
    else:
        y = F.group_norm(x, num_groups, weight, bias, eps)
    extra = (1,) * (x.dim() - 2)
    if scale is not None:
        y = y * (1 + scale.reshape(*scale.shape, *extra))
    if shift is not None:
        y = y + shift.reshape(*shift.shape, *extra)
    return F.silu(y)


def _validate(x, num_groups, weight, bias, eps, scale, shift):
    chk.tensor(OP, "x", x)
    if x.dim() < 3:
        chk.fail(OP, f"x must be (N, C, *spatial) with at least one spatial dim, got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    if not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        chk.fail(OP, f"num_groups must be a positive int dividing C={C}, got {num_groups!r}")
    for n, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            chk.tensor(OP, n, t, ndim=1)
            chk.shape(OP, n, t, (C,))
            chk.param_dtype(OP, n, t, x)
    for n, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            chk.tensor(OP, n, t, ndim=2)
            chk.shape(OP, n, t, (N, C))
    chk.same_device(OP, x=x, weight=weight, bias=bias, scale=scale, shift=shift)
    if eps <= 0:
        chk.fail(OP, f"eps must be positive, got {eps}")


group_norm_silu_op = register_op(OP, group_norm_silu_reference,
                                 "silu(group_norm(x) * (1 + scale) + shift)", _validate)
# The C++ schema (cpu and cuda impls) and its reference loop take the reference's arguments.
register_decomposition("ascan_C::group_norm_silu", group_norm_silu_reference)
register_decomposition("ascan_C::group_norm_silu_reference", group_norm_silu_reference)
group_norm_silu_op.register(cpu.impl())
group_norm_silu_op.register(cuda.impl())
group_norm_silu_op.register(triton_backend.load_impls(
    f"{__name__}.triton", (OP,), lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))[OP])


def group_norm_silu(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None):
    """GroupNorm then FiLM then SiLU; see :func:`group_norm_silu_reference` for shapes."""
    return group_norm_silu_op(x, int(num_groups) if isinstance(num_groups, int) else num_groups,
                              weight, bias, float(eps), scale, shift)

