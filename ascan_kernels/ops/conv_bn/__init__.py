"""conv + BatchNorm (+ GELU | + residual) ops: the C block's two halves.

Three ops share one reference and one CPU impl and differ only in the epilogue:

* ``conv_bn_gelu``: ``gelu(bn(conv(x)))``, the expand half of a C block, the stem;
* ``conv_bn_add``:  ``bn(conv(x)) + residual``, the projection half with its shortcut;
* ``conv_bn``:      ``bn(conv(x))``, projections without a shortcut and downsampling.

In inference BatchNorm is an affine map, so it is folded into the conv's weight and
bias (``fold_bn``); the fused impls then run one conv whose epilogue adds the bias,
the residual and the GELU. Callers may pass the folded pair as ``folded=(w, b)`` so
it is computed once and cached (``ascan.layers.ConvBN`` does); otherwise the impl
folds per call. In training BatchNorm needs batch statistics, so only the eager
reference (which updates the running stats) runs.

This package is the op: the reference and validation here, each backend's impl next to
it (``cpu.py``: oneDNN; ``cuda.py``: cuDNN + our epilogue kernel; ``triton.py``:
implicit-GEMM NHWC conv), registered below. Each impl folds BN and runs the matching impl
of :mod:`~ascan_kernels.ops.conv_bias_act`, which owns the kernels.
"""
from __future__ import annotations

import torch.nn.functional as F

from ... import _checks as chk
from ..._common import apply_act, compute_dtype, fold_bn
from ...backends import triton as triton_backend
from ...registry import register_op, unavailable_impl
from . import cpu, cuda
from ..conv_bias_act import validate_conv
from ..conv_bias_act.onednn_hazards import cpu_safe_conv_operands

__all__ = ["conv_bn", "conv_bn_add", "conv_bn_gelu", "fold_bn"]

OPS = ("conv_bn_gelu", "conv_bn_add", "conv_bn")
# The epilogue each op applies after the folded conv.
_ACT = {"conv_bn_gelu": ("gelu", "gelu_tanh"), "conv_bn_add": ("none",), "conv_bn": ("none",)}


def _reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
               stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """The eager PyTorch sequence: conv2d, batch_norm, then add and/or GELU.

    On the CPU the conv's operands first go around oneDNN's crash/NaN hazards
    (``cpu_safe_conv_operands``: same values, other layout or a zero channel)."""
    x, weight = cpu_safe_conv_operands(x, weight, stride, padding, dilation, groups, compute_dtype(x))
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    return apply_act(y, act)


def _validate(op, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, training, act, folded=None):
    ho, wo = validate_conv(op, x, weight, bias, residual, stride, padding, dilation, groups, act, _ACT[op])
    cout = weight.shape[0]
    for n, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                 ("running_var", running_var)):
        if t is not None:
            chk.tensor(op, n, t, ndim=1)
            chk.shape(op, n, t, (cout,))
    chk.same_device(op, x=x, weight=weight, bias=bias, bn_weight=bn_weight, bn_bias=bn_bias,
                    running_mean=running_mean, running_var=running_var, residual=residual)
    chk.same_dtype(op, x=x, weight=weight, residual=residual)
    if running_mean is None and not training:
        chk.fail(op, "inference needs running_mean/running_var (BatchNorm with track_running_stats)")
    if training and x.shape[0] * ho * wo == 1:
        chk.fail(op, f"training-mode BatchNorm needs more than one value per channel, but input {tuple(x.shape)} "
                     f"gives a {x.shape[0]}x{cout}x{ho}x{wo} conv output (use a batch of 2 or more, or eval mode)")
    if folded is not None:
        _validate_folded(op, folded, x, weight)


def _validate_folded(op, folded, x, weight):
    """``folded`` must be what ``fold_bn`` returns for this weight: impls trust it blindly."""
    if not isinstance(folded, (tuple, list)) or len(folded) != 2:
        chk.fail(op, f"folded must be a (weight, bias) pair from fold_bn, got {type(folded).__name__}", TypeError)
    fw, fb = folded
    chk.tensor(op, "folded weight", fw, ndim=4)
    chk.tensor(op, "folded bias", fb, ndim=1)
    chk.shape(op, "folded weight", fw, tuple(weight.shape))
    chk.shape(op, "folded bias", fb, (weight.shape[0],))
    if fw.device != x.device or fb.device != x.device:
        chk.fail(op, f"folded weight/bias must be on x's device {x.device}, got {fw.device} / {fb.device}")


def _register(name: str, doc: str, triton_impls: dict):
    def validate(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                 stride, padding, dilation, groups, eps, momentum, training, act, folded):
        _validate(name, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                  stride, padding, dilation, groups, training, act, folded)

    op = register_op(name, _reference, doc, validate, autocast=True)
    for impl in (cpu.impl(), cuda.impl(), triton_impls[name]):
        op.register(impl)
    return op


_TRITON = triton_backend.load_impls(f"{__name__}.triton", OPS,
                                    lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))
conv_bn_gelu_op = _register("conv_bn_gelu", "gelu(batch_norm(conv2d(x)))", _TRITON)
conv_bn_add_op = _register("conv_bn_add", "batch_norm(conv2d(x)) + residual", _TRITON)
conv_bn_op = _register("conv_bn", "batch_norm(conv2d(x))", _TRITON)


def _call(op, opname, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
          stride, padding, dilation, groups, eps, momentum, training, act, folded):
    stride, padding, dilation = (chk.pair(opname, n, v) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    return op(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, float(eps), momentum, bool(training), act, folded)


def conv_bn_gelu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
                 stride=1, padding=0, dilation=1, groups=1, eps=1e-5, momentum=0.1,
                 training=False, approximate="none", folded=None):
    """``gelu(batch_norm(conv2d(x, weight, bias)))``.

    x: (N, Cin, H, W) float; weight: (Cout, Cin/groups, kh, kw); bias: (Cout,) or None;
    bn_weight/bn_bias/running_mean/running_var: (Cout,). ``training=True`` uses batch
    statistics and updates the running stats in place (like ``F.batch_norm``).
    ``approximate`` is ``"none"`` (erf GELU) or ``"tanh"``. ``folded=(w, b)`` passes a
    precomputed ``fold_bn`` result. Returns (N, Cout, Ho, Wo) in x's (or autocast's) dtype.
    """
    act = {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate, approximate)
    return _call(conv_bn_gelu_op, "conv_bn_gelu", x, weight, bias, bn_weight, bn_bias, running_mean,
                 running_var, None, stride, padding, dilation, groups, eps, momentum, training, act, folded)


def conv_bn_add(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual, *,
                stride=1, padding=0, dilation=1, groups=1, eps=1e-5, momentum=0.1,
                training=False, folded=None):
    """``batch_norm(conv2d(x, weight, bias)) + residual``; residual: (N, Cout, Ho, Wo).

    Other arguments and shapes as in :func:`conv_bn_gelu`.
    """
    if residual is None:
        chk.fail("conv_bn_add", "residual is required (use conv_bn without one)")
    return _call(conv_bn_add_op, "conv_bn_add", x, weight, bias, bn_weight, bn_bias, running_mean,
                 running_var, residual, stride, padding, dilation, groups, eps, momentum, training, "none", folded)


def conv_bn(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *,
            stride=1, padding=0, dilation=1, groups=1, eps=1e-5, momentum=0.1,
            training=False, folded=None):
    """``batch_norm(conv2d(x, weight, bias))``; shapes as in :func:`conv_bn_gelu`."""
    return _call(conv_bn_op, "conv_bn", x, weight, bias, bn_weight, bn_bias, running_mean,
                 running_var, None, stride, padding, dilation, groups, eps, momentum, training, "none", folded)
