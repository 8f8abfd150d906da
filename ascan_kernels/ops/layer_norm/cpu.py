"""The ``cpu`` impl of add_layer_norm: ``ascan_C::add_layer_norm`` (csrc/ops/add_layer_norm/),
one pass per row (add, two-pass statistics, normalise) with at::vec kernels per ISA and
OpenMP; its fake and its autograd formula (ATen's LayerNorm backward on the saved sum)."""
from __future__ import annotations

import torch

from ... import _ext
from ..._ext import REBUILD, has_kernel, load_extension
from ...capabilities import Capabilities
from ..._common import SLOWER_IN_TRAINING, training_call
from ...registry import Impl


@_ext.register_fake("add_layer_norm")
def _add_layer_norm_fake(x, residual, weight, bias, eps):
    torch._check(x.dtype in (torch.float32, torch.bfloat16, torch.float16),
                 lambda: f"ascan add_layer_norm: x must be float32, bfloat16 or float16, got {x.dtype}")
    torch._check(residual.dtype == x.dtype,
                 lambda: f"ascan add_layer_norm: residual dtype {residual.dtype} differs from x dtype {x.dtype}")
    torch._check(x.dim() >= 1, lambda: "ascan add_layer_norm: x must have at least 1 dim")
    torch._check(residual.shape == x.shape,
                 lambda: f"ascan add_layer_norm: residual shape {tuple(residual.shape)} differs from x shape "
                         f"{tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(t.dim() == 1 and t.shape[0] == x.shape[-1],
                     lambda: f"ascan add_layer_norm: {name} must have shape ({x.shape[-1]},), got "
                             f"{tuple(t.shape)}")
    # The CPU kernel returns fresh contiguous tensors.
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=x.dtype, device=x.device))


def _available() -> str | None:
    mod, why = load_extension()
    if mod is not None and not has_kernel("add_layer_norm", "CPU"):
        return f"ascan_kernels._C has no CPU kernel for add_layer_norm; rebuild: {REBUILD}"
    return why


def _supports(x, residual, weight, bias, eps=1e-5):
    if residual.dtype != x.dtype:
        return f"x ({x.dtype}) and residual ({residual.dtype}) dtypes differ"
    if weight is None or bias is None:
        return "needs both weight and bias"
    if weight.dtype not in (torch.float32, x.dtype) or bias.dtype != weight.dtype:
        return f"weight/bias dtype {weight.dtype}/{bias.dtype} not supported"
    return None


def _add_layer_norm(x, residual, weight, bias, eps=1e-5):
    args = (x.contiguous(), residual.contiguous(), weight.contiguous(), bias.contiguous(), eps)
    if torch.compiler.is_compiling():
        return tuple(torch.ops.ascan_C.add_layer_norm(*args))  # Dynamo traces torch.ops, not pybind
    # The extension's direct entry skips the Python autograd layer when nothing needs
    # grad (~4 us a call) and goes through the dispatcher (autograd included) otherwise.
    return tuple(load_extension()[0].add_layer_norm(*args))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    ctx.save_for_backward(output[0], weight, bias)
    ctx.eps = eps


def _backward(ctx, grad_sum, grad_out):
    # Recompute mean/rstd from the saved sum and let ATen do LayerNorm's backward.
    s, weight, bias = ctx.saved_tensors
    shape = [s.shape[-1]]
    _, mean, rstd = torch.ops.aten.native_layer_norm(s, shape, weight, bias, ctx.eps)
    gs, gw, gb = torch.ops.aten.native_layer_norm_backward(
        grad_out.contiguous(), s, shape, mean, rstd, weight, bias, [True, True, True])
    gs = gs + grad_sum
    return gs, gs, gw, gb, None


_ext.register_autograd("add_layer_norm", _backward, _setup_context)


def _prefer(x, residual, weight, bias, eps=1e-5):
    return SLOWER_IN_TRAINING.format("0.64x-0.68x") if training_call(x, residual, weight, bias) else None


def impl() -> Impl:
    return Impl("cpu", _add_layer_norm, caps=Capabilities(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16)),
                supports=_supports, available=_available, autograd=True, prefer=_prefer,
                doc="C++ (at::vec, OpenMP) one pass: add, mean/var, normalise")
