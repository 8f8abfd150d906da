"""LayerNorm and the T block's fused residual-add + LayerNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks as chk
from .._ext import load_extension
from ..registry import Impl, register_op


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


def _ext_reason() -> str | None:
    return load_extension()[1]


def _ext_supports(x, residual, weight, bias, eps=1e-5):
    if x.device.type != "cpu":
        return f"device {x.device.type}: the C++ kernel is CPU-only"
    if x.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {x.dtype} not supported (float32, bfloat16)"
    if residual.dtype != x.dtype:
        return f"x ({x.dtype}) and residual ({residual.dtype}) dtypes differ"
    if weight is None or bias is None:
        return "needs both weight and bias"
    if weight.dtype not in (torch.float32, x.dtype) or bias.dtype != weight.dtype:
        return f"weight/bias dtype {weight.dtype}/{bias.dtype} not supported"
    return None


def _ext(x, residual, weight, bias, eps=1e-5):
    args = (x.contiguous(), residual.contiguous(), weight.contiguous(), bias.contiguous(), eps)
    if torch.compiler.is_compiling():
        return tuple(torch.ops.ascan_C.add_layer_norm(*args))  # Dynamo traces torch.ops, not pybind
    # The extension's direct entry skips the Python autograd layer when nothing needs
    # grad (~4 us a call) and goes through the dispatcher (autograd included) otherwise.
    return tuple(load_extension()[0].add_layer_norm(*args))


def _ext_setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    ctx.save_for_backward(output[0], weight, bias)
    ctx.eps = eps


def _ext_backward(ctx, grad_sum, grad_out):
    # Recompute mean/rstd from the saved sum and let ATen do LayerNorm's backward.
    s, weight, bias = ctx.saved_tensors
    shape = [s.shape[-1]]
    _, mean, rstd = torch.ops.aten.native_layer_norm(s, shape, weight, bias, ctx.eps)
    gs, gw, gb = torch.ops.aten.native_layer_norm_backward(
        grad_out.contiguous(), s, shape, mean, rstd, weight, bias, [True, True, True])
    gs = gs + grad_sum
    return gs, gs, gw, gb, None


def _register_ext_autograd() -> None:
    if load_extension()[0] is not None:
        torch.library.register_autograd("ascan_C::add_layer_norm", _ext_backward,
                                        setup_context=_ext_setup_context)


_register_ext_autograd()
add_layer_norm_op.register(Impl("cpu", _ext, priority=100, devices=("cpu",), supports=_ext_supports, available=_ext_reason,
                                autograd=True, doc="C++ (at::vec, OpenMP) one pass: add, mean/var, normalise"))


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dim of x (..., C); weight, bias: (C,) or None. Returns x's shape/dtype."""
    return layer_norm_op(x, weight, bias, float(eps))


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5):
    """Residual add then LayerNorm: returns ``(x + residual, layer_norm(x + residual))``.

    x, residual: (..., C) same shape; weight, bias: (C,) or None.
    """
    return add_layer_norm_op(x, residual, weight, bias, float(eps))
