"""The ``cuda`` impl of the conv_bn ops: cuDNN conv (no bias) on the BN-folded weight, then
``ascan_C::bias_act_epilogue_`` (csrc/ops/conv_bn/): one fused in-place pass adding the
folded bias, the residual and the GELU. Inference only (BN folding needs running stats).

Also the fakes of the epilogue op and of its CPU reference loop.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ... import _ext
from ..._common import compute_dtype, fold_bn, memory_format_of, residual_needs_promotion
from ...backends import cuda as backend
from ...backends.cuda import f32
from ...registry import Impl

# ascan::math::Act (csrc/include/ascan/math.h)
ACT_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
KERNELS = ("bias_act_epilogue_",)


def _supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, eps, momentum, training, act, folded):
    if training:
        return "training-mode BatchNorm needs batch statistics; this impl folds the running stats"
    if act not in ACT_CODES:
        return f"activation {act!r} not supported"
    return None


def _conv(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
          stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """act(conv2d(x, w') + b' (+ residual)) with (w', b') = fold_bn(...): cuDNN conv without
    bias, then ascan_C::bias_act_epilogue_ on its output (one read-modify-write pass)."""
    dtype = compute_dtype(x)
    if folded is None:
        folded = fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    w, b = folded
    y = F.conv2d(x.to(dtype), w.to(dtype), None, stride, padding, dilation, groups)
    if memory_format_of(y) is None:  # cuDNN returns NCHW or channels_last; anything else, make it NCHW
        y = y.contiguous()
    if residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        torch.ops.ascan_C.bias_act_epilogue_(y, f32(b), None, ACT_CODES[act])
        return y + residual
    if residual is not None:
        residual = residual.to(dtype)
        if residual.stride() != y.stride():  # the kernel walks both with one index
            residual = torch.empty_like(y).copy_(residual)
    torch.ops.ascan_C.bias_act_epilogue_(y, f32(b), residual, ACT_CODES[act])
    return y


def _epilogue_fake(y, bias, residual, act):
    # Shape rules only; the C++ checks give the full messages when the kernels run.
    torch._check(y.dim() >= 3, lambda: f"ascan bias_act_epilogue_: y must have at least 3 dims, got {tuple(y.shape)}")
    torch._check(bias.shape == (y.shape[1],),
                 lambda: f"ascan bias_act_epilogue_: bias must have shape ({y.shape[1]}), got {tuple(bias.shape)}")
    return None


_ext.register_fake("bias_act_epilogue_")(_epilogue_fake)
_ext.register_fake("bias_act_epilogue_reference_")(_epilogue_fake)


def impl() -> Impl:
    """The registry entry (the same for conv_bn_gelu, conv_bn_add and conv_bn)."""
    return Impl("cuda", _conv, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=False,
                doc="cuDNN conv (BN folded into the weight, no bias) + one fused bias/residual/GELU epilogue pass")
