"""The ``cuda`` impl of the conv_bn ops: BN folded into the weight, then conv_bias_act's
cuDNN conv + epilogue kernel (ops/conv_bias_act/cuda.py). Inference only (BN folding needs
running statistics)."""
from __future__ import annotations

import functools

from ..._common import FOLD_NEEDS_EVAL, fold_unless_given
from ...backends import cuda as backend
from ...registry import Impl
from ..conv_bias_act.cuda import KERNELS, act_reason, conv_cuda


def _supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, eps, momentum, training, act, folded):
    return FOLD_NEEDS_EVAL if training else act_reason(act)


def _conv(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
          stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """act(conv2d(x, w') + b' (+ residual)) with (w', b') = fold_bn(...)."""
    w, b = fold_unless_given(folded, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    return conv_cuda(x, w, b, residual, stride, padding, dilation, groups, act)


def impl() -> Impl:
    """The registry entry (the same for conv_bn_gelu, conv_bn_add and conv_bn)."""
    return Impl("cuda", _conv, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=False,
                doc="cuDNN conv (BN folded into the weight, no bias) + one fused bias/residual/GELU epilogue pass")
