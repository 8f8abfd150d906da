"""LayerNorm and the T block's fused residual-add + LayerNorm.

The impls: ``cpu.py`` (add_layer_norm: our C++ kernel; PyTorch's CPU LayerNorm is
already one fused pass, so layer_norm has no cpu impl), ``cuda.py`` (layer_norm: our
warp-per-row CUDA kernel), ``triton.py`` (both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _checks as chk
from ...backends import triton as triton_backend
from ...registry import register_decomposition, register_op, unavailable_impl
from . import cpu, cuda

__all__ = ["add_layer_norm", "add_layer_norm_reference", "layer_norm", "layer_norm_reference"]


def layer_norm_reference(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dim. x: (..., C); weight, bias: (C,) or None."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_layer_norm_reference(x, residual, weight, bias, eps=1e-5):
    """``s = x + residual; return s, layer_norm(s)``. x, residual: (..., C); weight, bias: (C,)."""
    s = x + residual
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)


def _validate_norm(op, x, weight, bias):
    chk.tensor(op, "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        chk.fail(op, f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    for n, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            chk.tensor(op, n, t, ndim=1)
            chk.shape(op, n, t, (x.shape[-1],))
            chk.param_dtype(op, n, t, x)
    chk.same_device(op, x=x, weight=weight, bias=bias)


def _validate_layer_norm(x, weight, bias, eps):
    _validate_norm("layer_norm", x, weight, bias)


def _validate_add_layer_norm(x, residual, weight, bias, eps):
    _validate_norm("add_layer_norm", x, weight, bias)
    chk.tensor("add_layer_norm", "residual", residual)
    if residual.shape != x.shape:
        chk.fail("add_layer_norm", f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    chk.same_device("add_layer_norm", x=x, residual=residual)
    chk.same_dtype("add_layer_norm", x=x, residual=residual)


layer_norm_op = register_op("layer_norm", layer_norm_reference, "layer_norm(x) over the last dim",
                            _validate_layer_norm)
add_layer_norm_op = register_op("add_layer_norm", add_layer_norm_reference,
                                "s = x + residual; (s, layer_norm(s))", _validate_add_layer_norm)


def _layer_norm_fwd_decomposition(x, weight, bias, eps):
    """``ascan_C::layer_norm_fwd`` in aten ops: (y, mean, rstd), the statistics float32 (rows,)."""
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    return y, mean.float().reshape(-1), rstd.float().reshape(-1)


# Our custom ops' aten equivalents, for exported graphs (``decompositions()``).
register_decomposition("ascan_C::add_layer_norm", add_layer_norm_reference)
register_decomposition("ascan_C::layer_norm_fwd", _layer_norm_fwd_decomposition)
register_decomposition("ascan_C::layer_norm_fwd_reference", _layer_norm_fwd_decomposition)
layer_norm_op.register(cuda.impl())
add_layer_norm_op.register(cpu.impl())
_TRITON = triton_backend.load_impls(f"{__name__}.triton", ("layer_norm", "add_layer_norm"),
                                    lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))
layer_norm_op.register(_TRITON["layer_norm"])
add_layer_norm_op.register(_TRITON["add_layer_norm"])


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dim of x (..., C); weight, bias: (C,) or None. Returns x's shape/dtype."""
    return layer_norm_op(x, weight, bias, float(eps))


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """Residual add then LayerNorm: returns ``(x + residual, layer_norm(x + residual))``.

    x, residual: (..., C) same shape; weight, bias: (C,) or None.
    """
    return add_layer_norm_op(x, residual, weight, bias, float(eps))
