"""The ``cpu`` impl of the conv_bn ops: BN folded into the conv, then conv_bias_act's oneDNN
conv (ops/conv_bias_act/cpu.py) with the folded bias and the residual / GELU post-ops."""
from __future__ import annotations

import torch

from ..._common import FOLD_NEEDS_EVAL, compute_dtype, fold_unless_given
from ...backends.onednn import onednn_capabilities, onednn_unavailable_reason
from ...registry import Impl
from ..conv_bias_act.cpu import conv_cpu, conv_reason, geometry_reason


def _supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, eps, momentum, training, act, folded):
    return (FOLD_NEEDS_EVAL if training else None) or geometry_reason(x, weight, stride, padding, dilation) \
        or conv_reason(x, weight, groups)


def _prefer(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
            stride, padding, dilation, groups, eps, momentum, training, act, folded):
    # oneDNN's residual-add post-op in bf16 measured at parity with conv + BN + add on our
    # bench machine (0.88x-1.08x over six runs of the conv_bn_add bench), so automatic
    # selection keeps the eager sequence there; fp32 is 1.02x-1.11x.
    if residual is not None and compute_dtype(x) == torch.bfloat16:
        return "bfloat16 conv + residual add: measured no faster than the eager reference"
    return None


def _cpu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
         stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """Folded BN + one oneDNN conv with bias/residual/GELU post-ops; channels_last out."""
    w, b = fold_unless_given(folded, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    # A folded weight the layer keeps is packed once; one folded here is new each call.
    return conv_cpu(x, w, b, residual, stride, padding, dilation, groups, act, prepack=folded is not None)


def impl() -> Impl:
    """The registry entry (the same for conv_bn_gelu, conv_bn_add and conv_bn)."""
    return Impl("cpu", _cpu, caps=onednn_capabilities(), supports=_supports, prefer=_prefer,
                available=onednn_unavailable_reason, autograd=True,
                doc="BN folded into the conv; oneDNN conv with fused bias/add/GELU post-ops, NHWC")
