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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks as chk
from ..cpu.onednn import (conv_reads_only_padding, cpu_safe_conv_operands, odd_bf16_channels,
                          onednn_dtype_reason, onednn_unavailable_reason, pad_input_channels, run_conv2d_bias_act)
from ..registry import Impl, register_op

# The epilogue each op applies after the folded conv.
_ACT = {"conv_bn_gelu": ("gelu", "gelu_tanh"), "conv_bn_add": ("none",), "conv_bn": ("none",)}


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold inference BatchNorm into a conv: returns (weight', bias') in float32.

    weight: (Cout, Cin/g, kh, kw); bias, bn_*, running_*: (Cout,).
    ``bn(conv(x, w, b)) == conv(x, w * s, (b - mean) * s + beta)`` with
    ``s = gamma / sqrt(var + eps)``. Computed in float32 whatever the params' dtype,
    so a bfloat16 model folds without double rounding.
    """
    s = torch.rsqrt(running_var.float() + eps)
    if bn_weight is not None:
        s = s * bn_weight.float()
    b = -running_mean.float()
    if bias is not None:
        b = b + bias.float()
    b = b * s
    if bn_bias is not None:
        b = b + bn_bias.float()
    w = weight.float() * s.reshape(-1, 1, 1, 1)
    return w, b


def _reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
               stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """The eager PyTorch sequence: conv2d, batch_norm, then add and/or GELU.

    On the CPU the conv's operands first go around oneDNN's crash/NaN hazards
    (``cpu_safe_conv_operands``: same values, other layout or a zero channel)."""
    x, weight = cpu_safe_conv_operands(x, weight, stride, padding, dilation, groups, chk.compute_dtype(x))
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    if act == "gelu":
        y = F.gelu(y)
    elif act == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    return y


def _cpu_supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                  stride, padding, dilation, groups, eps, momentum, training, act, folded):
    if x.device.type != "cpu":
        return f"device {x.device.type}: the oneDNN path is CPU-only"
    if training:
        return "training-mode BatchNorm needs batch statistics; this impl folds the running stats"
    if x.numel() == 0:
        return "empty input: nothing to fuse"
    if conv_reads_only_padding(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        return ("every output row or column reads only zero padding: oneDNN's channels_last conv crashes "
                "on such shapes")
    dtype = chk.compute_dtype(x)
    if groups > 1 and odd_bf16_channels(x, weight, groups, dtype):
        return f"bfloat16 with {weight.shape[1]} (odd) input channels per group: oneDNN leaks NaN across pixels"
    return onednn_dtype_reason(dtype)


def _cpu_prefer(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                stride, padding, dilation, groups, eps, momentum, training, act, folded):
    # oneDNN's residual-add post-op in bf16 measured at parity with conv + BN + add on our
    # bench machine (0.88x-1.08x over six runs of bench/test_ops.py -k conv_bn_add), so
    # automatic selection keeps the eager sequence there; fp32 is 1.02x-1.11x.
    if residual is not None and chk.compute_dtype(x) == torch.bfloat16:
        return "bfloat16 conv + residual add: measured no faster than the eager reference"
    return None


def _cpu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
         stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """Folded BN + one oneDNN conv with bias/residual/GELU post-ops; channels_last out."""
    dtype = chk.compute_dtype(x)
    if folded is None:
        folded = fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    w, b = (t.to(dtype).contiguous() for t in folded)  # oneDNN reads both densely
    x = x.to(dtype)
    if odd_bf16_channels(x, w, groups, dtype):  # groups == 1 here (supports)
        x, w = pad_input_channels(x, w)
    if chk.residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        y = run_conv2d_bias_act(x, w, b, None, list(stride), list(padding), list(dilation), groups, act)
        return y + residual
    if residual is not None:
        residual = residual.to(dtype)
    return run_conv2d_bias_act(x, w, b, residual, list(stride), list(padding), list(dilation), groups, act)


def _validate(op, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
              stride, padding, dilation, groups, training, act, folded=None):
    chk.tensor(op, "x", x, ndim=4)
    chk.tensor(op, "weight", weight, ndim=4)
    if not isinstance(groups, int) or groups < 1:
        chk.fail(op, f"groups must be a positive int, got {groups!r}")
    cout, cin_g = weight.shape[0], weight.shape[1]
    if x.shape[1] != cin_g * groups:
        chk.fail(op, f"x has {x.shape[1]} channels but weight expects {cin_g * groups} "
                     f"(weight {tuple(weight.shape)}, groups={groups})")
    if cout % groups:
        chk.fail(op, f"out channels {cout} not divisible by groups={groups}")
    for n, t in (("bias", bias), ("bn_weight", bn_weight), ("bn_bias", bn_bias),
                 ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            chk.tensor(op, n, t, ndim=1)
            chk.shape(op, n, t, (cout,))
    if act not in _ACT[op]:
        chk.fail(op, f"activation {act!r} not supported; expected one of {_ACT[op]}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        chk.fail(op, f"invalid stride={stride} padding={padding} dilation={dilation}")
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        chk.fail(op, f"input {tuple(x.shape[2:])} is too small for kernel {tuple(weight.shape[2:])} "
                     f"with padding={padding}, dilation={dilation}")
    if residual is not None:
        chk.tensor(op, "residual", residual, ndim=4)
        chk.shape(op, "residual", residual, (x.shape[0], cout, ho, wo))
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


def _register(name: str, doc: str):
    def validate(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                 stride, padding, dilation, groups, eps, momentum, training, act, folded):
        _validate(name, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                  stride, padding, dilation, groups, training, act, folded)

    op = register_op(name, _reference, doc, validate, autocast=True)
    op.register(Impl("cpu", _cpu, priority=100, devices=("cpu",), supports=_cpu_supports, prefer=_cpu_prefer,
                     available=onednn_unavailable_reason, autograd=True,
                     doc="BN folded into the conv; oneDNN conv with fused bias/add/GELU post-ops"))
    return op


conv_bn_gelu_op = _register("conv_bn_gelu", "gelu(batch_norm(conv2d(x)))")
conv_bn_add_op = _register("conv_bn_add", "batch_norm(conv2d(x)) + residual")
conv_bn_op = _register("conv_bn", "batch_norm(conv2d(x))")


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
