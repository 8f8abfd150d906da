"""conv2d + bias (+ residual) + activation: ``act(conv2d(x, w, b) + residual)``.

The convolution with its epilogue fused: the generation UNets' plain convs (the C block's
3x3 expand, its 1x1 projection with the block's shortcut, the up/down-sampling convs), and
the kernel under the ``conv_bn`` ops, which fold inference BatchNorm into (w, b) and then
run exactly this. The impls: ``cpu.py`` (one oneDNN conv with bias / add / activation
post-ops), ``cuda.py`` (cuDNN conv, then our in-place epilogue kernel), ``triton.py`` (an
implicit-GEMM NHWC conv with the epilogue in registers). Activations: ``"none"``,
``"gelu"``, ``"gelu_tanh"``, ``"silu"``; the residual is added before the activation.
"""
from __future__ import annotations

import torch.nn.functional as F

from ... import _checks as chk
from ..._common import apply_act, compute_dtype, conv_out_hw
from ...backends import triton as triton_backend
from ...registry import register_decomposition, register_op, unavailable_impl
from . import cpu, cuda
from .onednn_hazards import cpu_safe_conv_operands

__all__ = ["ACTS", "conv_bias_act", "conv_bias_act_reference", "validate_conv"]

OP = "conv_bias_act"
ACTS = ("none", "gelu", "gelu_tanh", "silu")


def conv_bias_act_reference(x, weight, bias, residual, stride, padding, dilation, groups, act):
    """``act(conv2d(x, weight, bias) + residual)`` in eager PyTorch.

    x: (N, Cin, H, W) float; weight: (Cout, Cin/groups, kh, kw); bias: (Cout,) or None;
    residual: (N, Cout, Ho, Wo) or None; stride/padding/dilation: pairs. Returns (N, Cout,
    Ho, Wo) in x's dtype (autocast's for the conv; an fp32 residual promotes, as in
    PyTorch). On the CPU the conv's operands first go around oneDNN's crash/NaN hazards
    (``cpu_safe_conv_operands``: same values, another layout or a zero channel).
    """
    x, weight = cpu_safe_conv_operands(x, weight, stride, padding, dilation, groups, compute_dtype(x))
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return apply_act(y, act)


def validate_conv(op, x, weight, bias, residual, stride, padding, dilation, groups, act, acts) -> tuple[int, int]:
    """The checks every conv op makes (this one and the conv_bn ops): 4-D x and weight,
    channels and groups, bias and residual shapes, the activation among ``acts``, the
    geometry. Raises ValueError / TypeError naming ``op``; returns the output size (Ho, Wo)."""
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
    if bias is not None:
        chk.tensor(op, "bias", bias, ndim=1)
        chk.shape(op, "bias", bias, (cout,))
    if act not in acts:
        chk.fail(op, f"activation {act!r} not supported; expected one of {acts}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        chk.fail(op, f"invalid stride={stride} padding={padding} dilation={dilation}")
    ho, wo = conv_out_hw(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], stride, padding, dilation)
    if ho < 1 or wo < 1:
        chk.fail(op, f"input {tuple(x.shape[2:])} is too small for kernel {tuple(weight.shape[2:])} "
                     f"with padding={padding}, dilation={dilation}")
    if residual is not None:
        chk.tensor(op, "residual", residual, ndim=4)
        chk.shape(op, "residual", residual, (x.shape[0], cout, ho, wo))
    return ho, wo


def _validate(x, weight, bias, residual, stride, padding, dilation, groups, act):
    validate_conv(OP, x, weight, bias, residual, stride, padding, dilation, groups, act, ACTS)
    chk.same_device(OP, x=x, weight=weight, bias=bias, residual=residual)
    chk.same_dtype(OP, x=x, weight=weight, bias=bias)


conv_bias_act_op = register_op(OP, conv_bias_act_reference, "act(conv2d(x, w, b) + residual)", _validate,
                               autocast=True)
conv_bias_act_op.register(cpu.impl())
# The cpu impl's custom op computes exactly the reference (same arguments): an exported
# graph that holds it becomes standard aten ops again (``decompositions()``).
register_decomposition("ascan::conv2d_bias_act", conv_bias_act_reference)
conv_bias_act_op.register(cuda.impl())
conv_bias_act_op.register(triton_backend.load_impls(
    f"{__name__}.triton", (OP,), lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))[OP])


def conv_bias_act(x, weight, bias=None, residual=None, *, stride=1, padding=0, dilation=1, groups=1, act="none"):
    """``act(conv2d(x, weight, bias) + residual)``; see :func:`conv_bias_act_reference`.

    ``stride``, ``padding``, ``dilation``: an int or a pair; ``act``: one of :data:`ACTS`.
    """
    stride, padding, dilation = (chk.pair(OP, n, v) for n, v in
                                 (("stride", stride), ("padding", padding), ("dilation", dilation)))
    return conv_bias_act_op(x, weight, bias, residual, stride, padding, dilation, groups, act)
