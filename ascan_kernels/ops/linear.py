"""The T block's MLP GEMMs with their epilogues fused.

* ``linear_gelu``: ``gelu(x W^T + b)``, the MLP expansion;
* ``linear_add``:  ``x W^T + b + residual``, the MLP projection with its shortcut.
"""
from __future__ import annotations

import torch.nn.functional as F

from .. import _checks as chk
from ..cpu.onednn import onednn_dtype_reason, onednn_unavailable_reason, run_linear_act
from ..registry import Impl, register_op

OP = "linear_gelu"


def linear_gelu_reference(x, weight, bias, approximate="none"):
    """``gelu(x @ weight.T + bias)``. x: (..., K); weight: (N, K); bias: (N,) or None."""
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


def _cpu_supports(x, weight, bias, approximate="none"):
    if x.device.type != "cpu":
        return f"device {x.device.type}: the oneDNN path is CPU-only"
    if x.numel() == 0:
        return "empty input: nothing to fuse"
    return onednn_dtype_reason(chk.compute_dtype(x))


def _cpu(x, weight, bias, approximate="none"):
    dtype = chk.compute_dtype(x)
    b = bias.to(dtype).contiguous() if bias is not None else None  # oneDNN reads the bias densely
    return run_linear_act(x.to(dtype), weight.to(dtype), b, None, "gelu" if approximate == "none" else "gelu_tanh")


def _validate_gelu(x, weight, bias, approximate="none"):
    _validate(OP, x, weight, bias)
    if approximate not in ("none", "tanh"):
        chk.fail(OP, f"approximate must be 'none' or 'tanh', got {approximate!r}")


linear_gelu_op = register_op(OP, linear_gelu_reference, "gelu(linear(x))", _validate_gelu, autocast=True)
linear_gelu_op.register(Impl("cpu", _cpu, priority=100, devices=("cpu",), supports=_cpu_supports,
                             available=onednn_unavailable_reason, autograd=True,
                             doc="oneDNN matmul with a fused bias+GELU post-op"))


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


def _add_supports(x, weight, bias, residual):
    return _cpu_supports(x, weight, bias)


def _add_cpu(x, weight, bias, residual):
    dtype = chk.compute_dtype(x)
    b = bias.to(dtype).contiguous() if bias is not None else None  # oneDNN reads the bias densely
    if chk.residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        return residual + run_linear_act(x.to(dtype), weight.to(dtype), b, None, "none")
    return run_linear_act(x.to(dtype), weight.to(dtype), b, residual.to(dtype), "none")


def _validate_add(x, weight, bias, residual):
    _validate("linear_add", x, weight, bias)
    chk.tensor("linear_add", "residual", residual)
    chk.shape("linear_add", "residual", residual, (*x.shape[:-1], weight.shape[0]))
    chk.same_device("linear_add", x=x, residual=residual)
    chk.same_dtype("linear_add", x=x, residual=residual)


linear_add_op = register_op("linear_add", linear_add_reference, "residual + linear(x)", _validate_add,
                            autocast=True)
linear_add_op.register(Impl("cpu", _add_cpu, priority=100, devices=("cpu",), supports=_add_supports,
                            available=onednn_unavailable_reason, autograd=True,
                            doc="oneDNN matmul with a fused bias + residual-add post-op"))


def linear_add(x, weight, bias, residual):
    """``residual + x @ weight.T + bias``; x: (..., K), weight: (N, K), bias: (N,) or None,
    residual: (..., N) with x's leading dims. Returns (..., N)."""
    return linear_add_op(x, weight, bias, residual)
