"""The T block's MLP GEMMs with their epilogues fused.

* ``linear_gelu``: ``gelu(x W^T + b)``, the MLP expansion;
* ``linear_add``:  ``x W^T + b + residual``, the MLP projection with its shortcut.

The impls: ``cpu.py`` (oneDNN matmul with fused post-ops), ``triton.py`` (GEMM with the
epilogue in registers).
"""
from __future__ import annotations

import torch.nn.functional as F

from ... import _checks as chk
from ..._common import apply_act
from ...backends import triton as triton_backend
from ...registry import register_decomposition, register_op, unavailable_impl
from . import cpu

__all__ = ["linear_add", "linear_add_reference", "linear_gelu", "linear_gelu_reference"]

OP = "linear_gelu"


def linear_gelu_reference(x, weight, bias, approximate="none"):
    """``gelu(x @ weight.T + bias)``. x: (..., K); weight: (N, K); bias: (N,) or None."""
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


def _validate_gelu(x, weight, bias, approximate="none"):
    _validate(OP, x, weight, bias)
    if approximate not in ("none", "tanh"):
        chk.fail(OP, f"approximate must be 'none' or 'tanh', got {approximate!r}")


linear_gelu_op = register_op(OP, linear_gelu_reference, "gelu(linear(x))", _validate_gelu, autocast=True)
linear_gelu_op.register(cpu.gelu_impl())


def _linear_act_decomposition(x, weight, bias, residual, act):
    """``ascan::linear_act`` (the cpu impls' custom op) in aten ops: ``act(linear(x) + residual)``."""
    y = F.linear(x, weight, bias)
    return apply_act(y if residual is None else y + residual, act)


register_decomposition("ascan::linear_act", _linear_act_decomposition)


def _validate(op, x, weight, bias):
    chk.tensor(op, "x", x)
    if x.dim() < 1:
        chk.fail(op, "x must have at least 1 dim")
    chk.tensor(op, "weight", weight, ndim=2)
    if x.shape[-1] != weight.shape[1]:
        chk.fail(op, f"x last dim {x.shape[-1]} != weight in_features {weight.shape[1]} (weight {tuple(weight.shape)})")
    if bias is not None:
        chk.tensor(op, "bias", bias, ndim=1)
        chk.shape(op, "bias", bias, (weight.shape[0],))
    chk.same_device(op, x=x, weight=weight, bias=bias)
    chk.same_dtype(op, x=x, weight=weight)


def linear_gelu(x, weight, bias=None, approximate="none"):
    """``gelu(x @ weight.T + bias)``; x: (..., K) float, weight: (N, K), bias: (N,) or None.

    Returns (..., N) in x's (or autocast's) dtype.
    """
    return linear_gelu_op(x, weight, bias, approximate)


def linear_add_reference(x, weight, bias, residual):
    """``residual + x @ weight.T + bias``. x: (..., K); weight: (N, K); residual: (..., N)."""
    return residual + F.linear(x, weight, bias)


def _validate_add(x, weight, bias, residual):
    _validate("linear_add", x, weight, bias)
    chk.tensor("linear_add", "residual", residual)
    chk.shape("linear_add", "residual", residual, (*x.shape[:-1], weight.shape[0]))
    chk.same_device("linear_add", x=x, residual=residual)
    chk.same_dtype("linear_add", x=x, residual=residual)


linear_add_op = register_op("linear_add", linear_add_reference, "residual + linear(x)", _validate_add,
                            autocast=True)
linear_add_op.register(cpu.add_impl())
_TRITON = triton_backend.load_impls(f"{__name__}.triton", ("linear_gelu", "linear_add"),
                                    lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))
linear_gelu_op.register(_TRITON["linear_gelu"])
linear_add_op.register(_TRITON["linear_add"])


def linear_add(x, weight, bias, residual):
    """``residual + x @ weight.T + bias``; x: (..., K), weight: (N, K), bias: (N,) or None,
    residual: (..., N) with x's leading dims. Returns (..., N)."""
    return linear_add_op(x, weight, bias, residual)
