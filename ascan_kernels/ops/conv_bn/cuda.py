"""The ``cuda`` impl of the conv_bn ops: BN folded into the weight, then conv_bias_act's
cuDNN conv + epilogue kernel (ops/conv_bias_act/cuda.py). Inference only (BN folding needs
running statistics)."""
from __future__ import annotations

import functools

from ..._common import fold_bn
from ...backends import cuda as backend
from ...registry import Impl
from ..conv_bias_act.cuda import KERNELS, act_reason, conv_cuda


def _supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, eps, momentum, training, act, folded):
    if training:
        return "training-mode BatchNorm needs batch statistics; this impl folds the running stats"
    return act_reason(act)


def _conv(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
          stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """act(conv2d(x, w') + b' (+ residual)) with (w', b') = fold_bn(...)."""
    if folded is None:
        folded = fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    return conv_cuda(x, folded[0], folded[1], residual, stride, padding, dilation, groups, act)


def impl() -> Impl:
    """The registry entry (the same for conv_bn_gelu, conv_bn_add and conv_bn)."""
    return Impl("cuda", _conv, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=False,
                doc="cuDNN conv (BN folded into the weight, no bias) + one fused bias/residual/GELU epilogue pass")
