"""The ``cpu`` impl of conv_bias_act: one oneDNN conv with the bias, a residual add and
GELU/SiLU fused as post-ops, NHWC. The conv_bn ops' cpu impl folds BN and calls
:func:`conv_cpu` here.

``ascan::conv2d_bias_act`` wraps oneDNN's ``_convolution_pointwise`` as our own custom op
(so the signature we depend on is ours, torch.compile sees an opaque op with a fake, and
opcheck can test it), with a backward that recomputes the pre-activation and calls ATen's
activation backward and ``convolution_backward``: a model in eval mode can still be
differentiated on the fused path.
"""
from __future__ import annotations

import torch

from ..._common import DerivedWeights, apply_act, compute_dtype, conv_out_hw, residual_needs_promotion
from ...backends.onednn import (act_backward, needs_custom_op, onednn_capabilities, onednn_machine_reason,
                                onednn_unavailable_reason, post_op)
from ...registry import Impl
from .onednn_hazards import conv_reads_only_padding, odd_bf16_channels, pad_input_channels


def _conv2d_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    act: str,
) -> torch.Tensor:
    """``act(conv2d(x, weight, bias) + residual)`` in one oneDNN primitive.

    x: (N, Cin, H, W); weight: (Cout, Cin/groups, kh, kw); bias: (Cout,) or None;
    residual: (N, Cout, Ho, Wo) or None. float32 or bfloat16, all one dtype.
    The result is channels_last (N, Cout, Ho, Wo). PyTorch's oneDNN binding takes no
    activation after the residual add but ReLU ("Unary Fusion behavior undefined"), so
    with a residual the activation is applied in place as a second pass.
    """
    cl = torch.channels_last
    x = x.contiguous(memory_format=cl)
    attr, scalars, algo = post_op(act)
    conv = torch.ops.mkldnn._convolution_pointwise
    if residual is None:
        y = conv(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algo)
    else:
        residual = residual.contiguous(memory_format=cl)
        y = conv.binary(x, residual, weight, bias, padding, stride, dilation, groups, "add", None, None, [], None)
        y = apply_act(y, act, inplace=True)  # y is this call's own output
    return y.contiguous(memory_format=cl)


conv2d_bias_act = torch.library.custom_op("ascan::conv2d_bias_act", _conv2d_bias_act, mutates_args=())


@conv2d_bias_act.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, act):
    ho, wo = conv_out_hw(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo)).contiguous(memory_format=torch.channels_last)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, groups, act = inputs
    ctx.save_for_backward(x, weight, bias, residual)
    ctx.conf = (stride, padding, dilation, groups, act, bias is not None, residual is not None)


def _conv_backward(ctx, grad):
    x, weight, bias, residual = ctx.saved_tensors
    stride, padding, dilation, groups, act, has_bias, has_res = ctx.conf
    if act != "none":
        pre = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
        if has_res:
            pre = pre + residual
        grad = act_backward(grad, pre, act)
    need = ctx.needs_input_grad
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation,
        False, [0, 0], groups, [need[0], need[1], has_bias and need[2]],
    )
    gres = grad if has_res and need[3] else None
    return gx, gw, gb if has_bias else None, gres, None, None, None, None, None


conv2d_bias_act.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def run_conv2d_bias_act(x, weight, bias, residual, stride, padding, dilation, groups, act):
    """``conv2d_bias_act``: through the custom op when autograd or torch.compile needs
    it, else its body directly (the custom-op layer costs ~30 us, a third of a small conv)."""
    fn = conv2d_bias_act if needs_custom_op((x, weight, bias, residual)) else _conv2d_bias_act
    return fn(x, weight, bias, residual, stride, padding, dilation, groups, act)


def conv_reason(x, weight, groups) -> str | None:
    """Why oneDNN's conv cannot take this call here (also asked by the conv_bn ops), or None."""
    if groups > 1 and odd_bf16_channels(x, weight, groups, compute_dtype(x)):
        return f"bfloat16 with {weight.shape[1]} (odd) input channels per group: oneDNN leaks NaN across pixels"
    return onednn_machine_reason(compute_dtype(x))


def geometry_reason(x, weight, stride, padding, dilation) -> str | None:
    if conv_reads_only_padding(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        return ("every output row or column reads only zero padding: oneDNN's channels_last conv crashes "
                "on such shapes")
    return None


# One pre-packed copy per conv weight of a model (ascan_t has 75 convs, the UNets more).
_PACKED_MAX = 512
_PACKED = DerivedWeights(_PACKED_MAX)


def packed_weight(w: torch.Tensor, dtype: torch.dtype, stride, padding, dilation, groups,
                  input_shape) -> torch.Tensor:
    """``w`` (Cout, Cin/groups, kh, kw) reordered once into the blocked oneDNN layout that the
    conv primitive for ``input_shape`` (N, Cin, H, W) reads, in ``dtype``: an opaque MKLDNN
    tensor that ``_convolution_pointwise`` takes as its weight. Without it every call reorders
    the plain weight (measured 4-12% of a conv's time here, the same step Inductor's freezing
    and OpenVINO do once). Cached while ``w`` is unchanged (see :class:`DerivedWeights`)."""
    stride, padding, dilation, shape = list(stride), list(padding), list(dilation), list(input_shape)

    def make() -> torch.Tensor:
        plain = w.detach().to(dtype).contiguous()
        return torch.ops.mkldnn._reorder_convolution_weight(plain, padding, stride, dilation, groups, shape)
    return _PACKED.get(w, (dtype, tuple(stride), tuple(padding), tuple(dilation), groups, tuple(shape)), make)


def conv_cpu(x, w, b, residual, stride, padding, dilation, groups, act, prepack: bool = False):
    """``act(conv2d(x, w, b) + residual)`` through oneDNN in x's (or autocast's) dtype,
    channels_last out; an fp32 residual under autocast is added after the conv.

    ``prepack``: ``w`` is owned by the caller across calls (a module's weight, a layer's
    cached BN-folded weight), so its packed copy is worth keeping; inference calls then use
    :func:`packed_weight`. Calls that autograd or torch.compile see take the plain weight."""
    dtype = compute_dtype(x)
    x = x.to(dtype)
    b = b.to(dtype).contiguous() if b is not None else None  # oneDNN reads weight and bias densely
    if odd_bf16_channels(x, w, groups, dtype):  # groups == 1 here (conv_reason)
        x, w = pad_input_channels(x, w.to(dtype).contiguous())
    elif prepack and not needs_custom_op((x, w, b, residual)):
        w = packed_weight(w, dtype, stride, padding, dilation, groups, x.shape)
    else:
        w = w.to(dtype).contiguous()
    if residual_needs_promotion(dtype, residual):  # autocast + fp32 residual: eager returns fp32
        y = run_conv2d_bias_act(x, w, b, None, list(stride), list(padding), list(dilation), groups, "none")
        return apply_act(y + residual, act)  # the residual goes in before the activation
    if residual is not None:
        residual = residual.to(dtype)
    return run_conv2d_bias_act(x, w, b, residual, list(stride), list(padding), list(dilation), groups, act)


def _supports(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return geometry_reason(x, weight, stride, padding, dilation) or conv_reason(x, weight, groups)


def _prefer(x, weight, bias, residual, stride, padding, dilation, groups, act):
    # ATen's own conv runs oneDNN too. At ascan_unet_c2i_s's convs (batch 16, 32x32
    # latents, fp32, channels_last; 3x3 expand, 1x1 projection + shortcut, strided
    # downsample, conv_in) the post-op primitive measured 0.91x-0.98x of conv (+ add) on
    # our AVX2 bench machine (7 interleaved reps each), so automatic selection keeps eager
    # for those calls; bf16 could not be measured here (no oneDNN bf16 on AVX2).
    if act == "none" and compute_dtype(x) == torch.float32:
        return "float32 conv + bias (+ residual): measured 0.91x-0.98x of the eager reference"
    return None


def _cpu(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return conv_cpu(x, weight, bias, residual, stride, padding, dilation, groups, act, prepack=True)


def impl() -> Impl:
    return Impl("cpu", _cpu, caps=onednn_capabilities(), supports=_supports, prefer=_prefer,
                available=onednn_unavailable_reason,
                autograd=True, doc="one oneDNN conv with fused bias / residual-add / GELU or SiLU post-ops, NHWC")
