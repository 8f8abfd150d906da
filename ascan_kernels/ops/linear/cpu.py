"""The ``cpu`` impls of linear_gelu and linear_add: one oneDNN matmul with the bias and the
GELU (MLP fc1) or the residual add (MLP fc2 + shortcut) fused as post-ops.

``ascan::linear_act`` wraps oneDNN's ``_linear_pointwise`` as our own custom op (fake,
autograd through ATen's GEMMs and ``gelu_backward``), as the conv_bn ops' cpu impl does
for the conv.
"""
from __future__ import annotations

import torch

from ..._common import SLOWER_IN_TRAINING, compute_dtype, residual_needs_promotion, training_call
from ...backends.onednn import (act_backward, needs_custom_op, onednn_capabilities, onednn_machine_reason,
                                onednn_unavailable_reason, post_op)
from ...registry import Impl


def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None, act: str) -> torch.Tensor:
    """``act(x @ weight.T + bias + residual)`` in one oneDNN primitive.

    x: (..., K); weight: (N, K); bias: (N,) or None; residual: (..., N) or None.
    float32 or bfloat16. Returns (..., N).
    """
    attr, scalars, algo = post_op(act)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    lin = torch.ops.mkldnn._linear_pointwise
    if residual is None:
        y = lin(x2, weight.contiguous(), bias, attr, scalars, algo)
    else:
        if act != "none":
            raise ValueError("linear_act: an activation after a residual add is not supported")
        y = lin.binary(x2, residual.reshape(-1, weight.shape[0]).contiguous(), weight.contiguous(), bias, "add")
    return y.reshape(*x.shape[:-1], weight.shape[0])


linear_act = torch.library.custom_op("ascan::linear_act", _linear_act, mutates_args=())


@linear_act.register_fake
def _(x, weight, bias, residual, act):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, residual, act = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.act = act
    ctx.has_res = residual is not None


def _linear_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    if ctx.act != "none":
        grad = act_backward(grad, torch.nn.functional.linear(x, weight, bias), ctx.act)
    g2 = grad.reshape(-1, grad.shape[-1])
    gx = (g2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
    gw = g2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    gb = g2.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
    gres = grad if ctx.has_res and ctx.needs_input_grad[3] else None
    return gx, gw, gb, gres, None


linear_act.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def run_linear_act(x, weight, bias, residual, act):
    """``linear_act`` through the custom op only where autograd or torch.compile needs it."""
    fn = linear_act if needs_custom_op((x, weight, bias, residual)) else _linear_act
    return fn(x, weight, bias, residual, act)


def _gelu(x, weight, bias, approximate="none"):
    dtype = compute_dtype(x)
    b = bias.to(dtype).contiguous() if bias is not None else None  # oneDNN reads the bias densely
    return run_linear_act(x.to(dtype), weight.to(dtype), b, None, "gelu" if approximate == "none" else "gelu_tanh")


def _add(x, weight, bias, residual):
    dtype = compute_dtype(x)
    b = bias.to(dtype).contiguous() if bias is not None else None  # oneDNN reads the bias densely
    if residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        return residual + run_linear_act(x.to(dtype), weight.to(dtype), b, None, "none")
    return run_linear_act(x.to(dtype), weight.to(dtype), b, residual.to(dtype), "none")


def _supports(x, weight, bias, *args) -> str | None:
    return onednn_machine_reason(compute_dtype(x))


def _prefer_gelu(x, weight, bias, *args):
    # the backward recomputes the GEMM to get GELU's input: one GEMM more than eager
    return SLOWER_IN_TRAINING.format("0.73x-0.94x") if training_call(x, weight, bias) else None


def _prefer_add(x, weight, bias, residual):
    return SLOWER_IN_TRAINING.format("0.86x-0.96x") if training_call(x, weight, bias, residual) else None


def gelu_impl() -> Impl:
    return Impl("cpu", _gelu, caps=onednn_capabilities(), supports=_supports, available=onednn_unavailable_reason,
                prefer=_prefer_gelu, autograd=True, doc="oneDNN matmul with a fused bias+GELU post-op")


def add_impl() -> Impl:
    return Impl("cpu", _add, caps=onednn_capabilities(), supports=_supports, available=onednn_unavailable_reason,
                prefer=_prefer_add, autograd=True, doc="oneDNN matmul with a fused bias + residual-add post-op")
