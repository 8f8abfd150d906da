"""The ``cuda`` impl of conv_bias_act: cuDNN conv (no bias), then ``ascan_C::bias_act_epilogue_``
(csrc/ops/conv_bias_act/): one in-place pass adding the bias and the residual and applying
the activation. The conv_bn ops' cuda impl folds BN and calls :func:`conv_cuda` here.

Also the fakes of the epilogue op and of its CPU reference loop.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ... import _ext
from ..._common import apply_act, compute_dtype, memory_format_of, residual_needs_promotion
from ...backends import cuda as backend
from ...backends.cuda import f32
from ...registry import Impl

# ascan::math::Act (csrc/include/ascan/math.h)
ACT_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
KERNELS = ("bias_act_epilogue_",)


def conv_cuda(x, w, b, residual, stride, padding, dilation, groups, act):
    """act(conv2d(x, w) + b (+ residual)): cuDNN conv without bias, then the epilogue kernel
    on its output (one read-modify-write pass); in x's (or autocast's) dtype."""
    dtype = compute_dtype(x)
    y = F.conv2d(x.to(dtype), w.to(dtype), None, stride, padding, dilation, groups)
    if memory_format_of(y) is None:  # cuDNN returns NCHW or channels_last; anything else, make it NCHW
        y = y.contiguous()
    bias = f32(b) if b is not None else torch.zeros(y.shape[1], device=y.device)
    if residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        torch.ops.ascan_C.bias_act_epilogue_(y, bias, None, ACT_CODES["none"])
        return apply_act(y + residual, act)  # the residual goes in before the activation
    if residual is not None:
        residual = residual.to(dtype)
        if residual.stride() != y.stride():  # the kernel walks both with one index
            residual = torch.empty_like(y).copy_(residual)
    torch.ops.ascan_C.bias_act_epilogue_(y, bias, residual, ACT_CODES[act])
    return y


def act_reason(act: str) -> str | None:
    return None if act in ACT_CODES else f"activation {act!r} not supported"


def _supports(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return act_reason(act)


def _cuda(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return conv_cuda(x, weight, bias, residual, stride, padding, dilation, groups, act)


def _epilogue_fake(y, bias, residual, act):
    # Shape rules only; the C++ checks give the full messages when the kernels run.
    torch._check(y.dim() >= 3, lambda: f"ascan bias_act_epilogue_: y must have at least 3 dims, got {tuple(y.shape)}")
    torch._check(bias.shape == (y.shape[1],),
                 lambda: f"ascan bias_act_epilogue_: bias must have shape ({y.shape[1]}), got {tuple(bias.shape)}")
    return None


_ext.register_fake("bias_act_epilogue_")(_epilogue_fake)
_ext.register_fake("bias_act_epilogue_reference_")(_epilogue_fake)


def impl() -> Impl:
    return Impl("cuda", _cuda, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=False,
                doc="cuDNN conv (no bias) + one fused bias/residual/activation epilogue pass")
