"""The ``triton`` impl of the conv_bn ops: BN folded into the conv (cached per folded
weight), then the implicit-GEMM kernel of ``conv_bias_act`` (ops/conv_bias_act/triton.py)
with the bias / residual / GELU epilogue. Inference only."""
from __future__ import annotations

import torch

from ..._common import FOLD_NEEDS_EVAL, compute_dtype, fold_bn
from ...backends import triton as runtime
from ...registry import Impl
from ..conv_bias_act.triton import _cached_gemm_weight, gemm_weight, geometry_reason, prefer_reason, run


def _supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, eps, momentum, training, act, folded):
    return FOLD_NEEDS_EVAL if training else geometry_reason(x, weight, residual, stride, padding, dilation, groups, act)


def _triton(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
            stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """Fold BN (unless ``folded`` is given), lay the weight out for the GEMM, run the
    kernel. Returns (N, Cout, Ho, Wo) channels_last in x's (or autocast's) dtype."""
    dtype = compute_dtype(x)
    with torch.no_grad():
        if folded is None:
            w, b = fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
            w_gemm = gemm_weight(w, dtype)  # a fresh fold each call: nothing to cache
        else:
            w, b = folded
            w_gemm = _cached_gemm_weight(w, dtype)
        b = b.detach().float().contiguous()
    return run(x, w_gemm, b, residual, weight.shape[2], weight.shape[3], stride, padding, act, dtype)


def impls() -> dict[str, Impl]:
    def impl(doc):
        return Impl("triton", _triton, caps=runtime.capabilities(), supports=_supports,
                    available=runtime.unavailable_reason, autograd=False, prefer=prefer_reason, doc=doc)

    return {
        "conv_bn_gelu": impl("Triton implicit-GEMM conv (NHWC), BN folded, bias + GELU epilogue"),
        "conv_bn_add": impl("Triton implicit-GEMM conv (NHWC), BN folded, bias + residual epilogue"),
        "conv_bn": impl("Triton implicit-GEMM conv (NHWC), BN folded, bias epilogue"),
    }
