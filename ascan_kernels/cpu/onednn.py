"""CPU fused conv and linear through oneDNN post-op fusion.

PyTorch ships oneDNN's fused primitives as ``torch.ops.mkldnn._convolution_pointwise``
and ``_linear_pointwise`` (the ops Inductor's CPU backend lowers to). They apply the
bias, a residual add and an activation inside the GEMM's epilogue, so the activation
never makes an extra round trip through memory. We wrap them as our own
``torch.library`` custom ops so that:

* the signature we depend on is ours, checked once (``onednn_unavailable_reason``);
* ``torch.compile`` sees an opaque op with a fake impl and no graph break;
* ``torch.library.opcheck`` can test schema, fake tensors and dispatch.

Both have a backward (``register_autograd``) that recomputes the pre-activation
and calls ATen's own ``gelu_backward``/``convolution_backward``, so a model in eval
mode can still be differentiated (e.g. for saliency or fine-tuning with frozen BN)
on the fused path. The forward is where the fusion pays; the backward is eager-fast.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "gelu", "gelu_tanh")


def _post_op(act: str) -> tuple[str, list, str | None]:
    """(attr, scalars, algorithm) in oneDNN's pointwise vocabulary."""
    if act == "none":
        return "none", [], None
    if act == "gelu":
        return "gelu", [], "none"
    if act == "gelu_tanh":
        return "gelu", [], "tanh"
    raise ValueError(f"unsupported activation {act!r}; expected one of {ACTIVATIONS}")


def conv_out_hw(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple[int, int]:
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def axis_reads_only_padding(size: int, k: int, stride: int, padding: int, dilation: int) -> bool:
    """Whether every output position along one spatial axis reads only zero padding
    (no tap lands inside the input), e.g. W=1 with a 1x1 kernel, padding 1, stride 2.

    oneDNN's channels_last convolution with a bias crashes the process (SIGSEGV) on such
    shapes when the dilation is above 1 - ``F.conv2d`` too, since it routes there
    (torch 2.14.1, found by fuzzing: tests/test_fuzz_ops.py). The output is just the
    bias there, so nothing is lost by keeping such calls off oneDNN's NHWC path."""
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    for j in range(k):
        first = max(0, -((j * dilation - padding) // stride))  # smallest o with o*s - p + j*d >= 0
        if first < out and first * stride - padding + j * dilation < size:
            return False
    return out > 0


def conv_reads_only_padding(x_hw: tuple[int, int], w_hw: tuple[int, int], stride, padding, dilation) -> bool:
    """:func:`axis_reads_only_padding` along H or W."""
    return any(axis_reads_only_padding(x_hw[i], w_hw[i], stride[i], padding[i], dilation[i]) for i in range(2))


def odd_bf16_channels(x: torch.Tensor, weight: torch.Tensor, groups: int, dtype: torch.dtype) -> bool:
    """Whether a CPU bf16 conv has an odd number of input channels per group.

    oneDNN's bf16 kernels (AVX512-BF16) consume input channels in pairs; with an odd
    count per group, a NaN in one pixel was seen to leak into the neighbouring pixel's
    output (the stem, Cin=3, channels_last). Padding a zero channel makes the count
    even and changes no value."""
    return x.device.type == "cpu" and dtype == torch.bfloat16 and weight.shape[1] % 2 == 1


def pad_input_channels(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, weight) with one zero input channel appended (groups=1): the same conv."""
    return F.pad(x, (0, 0, 0, 0, 0, 1)), F.pad(weight, (0, 0, 0, 0, 0, 1))


def cpu_safe_conv_operands(x, weight, stride, padding, dilation, groups, dtype):
    """(x, weight) for ``F.conv2d`` on the CPU, steered around three oneDNN hazards:

    * every output row/column reading only padding with a channels_last input crashes
      (:func:`conv_reads_only_padding`): computed on NCHW instead;
    * bf16 with an odd channel count per group leaks NaN across pixels
      (:func:`odd_bf16_channels`): a zero channel is padded (groups=1);
    * bf16 weight gradients for a channels_last weight contain uninitialised values
      (torch 2.14.1): the weight is made contiguous, so autograd gets its gradient
      from a dense conv backward and copies it back to the weight's layout.
    """
    if x.device.type != "cpu":
        return x, weight
    if not x.is_contiguous() and conv_reads_only_padding(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        x, weight = x.contiguous(), weight.contiguous()
    if dtype == torch.bfloat16 and not weight.is_contiguous():
        weight = weight.contiguous()
    if groups == 1 and odd_bf16_channels(x, weight, groups, dtype):
        x, weight = pad_input_channels(x, weight)
    return x, weight


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
    The result is channels_last (N, Cout, Ho, Wo).
    """
    cl = torch.channels_last
    x = x.contiguous(memory_format=cl)
    attr, scalars, algo = _post_op(act)
    conv = torch.ops.mkldnn._convolution_pointwise
    if residual is None:
        y = conv(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algo)
    else:
        residual = residual.contiguous(memory_format=cl)
        y = conv.binary(
            x, residual, weight, bias, padding, stride, dilation, groups,
            "add", None, None if attr == "none" else attr, scalars, algo,
        )
    return y.contiguous(memory_format=cl)


conv2d_bias_act = torch.library.custom_op("ascan::conv2d_bias_act", _conv2d_bias_act, mutates_args=())


@conv2d_bias_act.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, act):
    ho, wo = conv_out_hw(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo)).contiguous(memory_format=torch.channels_last)


def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None, act: str) -> torch.Tensor:
    """``act(x @ weight.T + bias + residual)`` in one oneDNN primitive.

    x: (..., K); weight: (N, K); bias: (N,) or None; residual: (..., N) or None.
    float32 or bfloat16. Returns (..., N).
    """
    attr, scalars, algo = _post_op(act)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    lin = torch.ops.mkldnn._linear_pointwise
    if residual is None:
        y = lin(x2, weight.contiguous(), bias, attr, scalars, algo)
    else:
        if act != "none":
            raise ValueError("linear_act: an activation after a residual add is not supported")
        y = lin.binary(x2, residual.reshape(-1, weight.shape[0]).contiguous(), weight.contiguous(), bias, "add")
    return y.reshape(*x.shape[:-1], weight.shape[0])


linear_act = torch.library.custom_op("ascan::linear_act", _linear_act, mutates_args=())


@linear_act.register_fake
def _(x, weight, bias, residual, act):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _act_backward(grad: torch.Tensor, pre: torch.Tensor, act: str) -> torch.Tensor:
    if act == "none":
        return grad
    return torch.ops.aten.gelu_backward(grad, pre, approximate="tanh" if act == "gelu_tanh" else "none")


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
        grad = _act_backward(grad, pre, act)
    need = ctx.needs_input_grad
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation,
        False, [0, 0], groups, [need[0], need[1], has_bias and need[2]],
    )
    gres = grad if has_res and need[3] else None
    return gx, gw, gb if has_bias else None, gres, None, None, None, None, None


conv2d_bias_act.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, residual, act = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.act = act
    ctx.has_res = residual is not None


def _linear_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    if ctx.act != "none":
        grad = _act_backward(grad, torch.nn.functional.linear(x, weight, bias), ctx.act)
    g2 = grad.reshape(-1, grad.shape[-1])
    gx = (g2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
    gw = g2.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
    gb = g2.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
    gres = grad if ctx.has_res and ctx.needs_input_grad[3] else None
    return gx, gw, gb, gres, None


linear_act.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def _needs_custom_op(tensors) -> bool:
    return torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def run_conv2d_bias_act(x, weight, bias, residual, stride, padding, dilation, groups, act):
    """``conv2d_bias_act``: through the custom op when autograd or torch.compile needs
    it, else its body directly (the custom-op layer costs ~30 us, a third of a small conv)."""
    fn = conv2d_bias_act if _needs_custom_op((x, weight, bias, residual)) else _conv2d_bias_act
    return fn(x, weight, bias, residual, stride, padding, dilation, groups, act)


def run_linear_act(x, weight, bias, residual, act):
    """``linear_act`` through the custom op only where autograd or torch.compile needs it."""
    fn = linear_act if _needs_custom_op((x, weight, bias, residual)) else _linear_act
    return fn(x, weight, bias, residual, act)


@functools.lru_cache(maxsize=None)
def onednn_unavailable_reason() -> str | None:
    """None when the oneDNN fused ops exist and compute correctly here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "PyTorch was built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    try:
        torch.ops.mkldnn._convolution_pointwise.default
        torch.ops.mkldnn._convolution_pointwise.binary
        torch.ops.mkldnn._linear_pointwise.default
        torch.ops.mkldnn._linear_pointwise.binary
    except (AttributeError, RuntimeError) as e:
        return f"this PyTorch has no oneDNN pointwise-fusion ops ({e})"
    # A tiny smoke run: a build can expose the op and still reject our call signature.
    # It may first run inside a user's autocast region: keep that out of the check.
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 3, 5, 5, generator=g)
            w = torch.randn(4, 3, 3, 3, generator=g)
            b = torch.randn(4, generator=g)
            # The op's body, not the custom op: calling a custom op imports torch._dynamo
            # (seconds), which `import ascan_kernels` must not pay for.
            got = _conv2d_bias_act(x, w, b, None, [1, 1], [1, 1], [1, 1], 1, "gelu")
            want = torch.nn.functional.gelu(torch.nn.functional.conv2d(x, w, b, padding=1))
            if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                return "oneDNN fused conv gave wrong results in the start-up self-check"
    except Exception as e:  # any failure means: don't use it
        return f"oneDNN fused conv failed its self-check: {type(e).__name__}: {e}"
    return None


@functools.lru_cache(maxsize=None)
def onednn_bf16_reason() -> str | None:
    """Why oneDNN cannot run bfloat16 convs/GEMMs on this CPU, or None.

    Its bf16 kernels need AVX512-BW/VL/DQ (or AVX-NE-CONVERT); on an AVX2-only CPU (AMD
    Zen 3, many laptops) ``_convolution_pointwise`` raises "bf16 path needs the cpu
    support ..." and ``_linear_pointwise`` fails to create its primitive."""
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError) as e:
        return f"cannot ask oneDNN for bfloat16 support ({e})"
    if not ok:
        return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN bfloat16 kernels "
                "(they need AVX512-BW/VL/DQ or AVX-NE-CONVERT)")
    return None


def onednn_dtype_reason(dtype: torch.dtype) -> str | None:
    """oneDNN fuses float32 everywhere and bfloat16 where the CPU has the instructions
    (see :func:`onednn_bf16_reason`); fp16 needs AVX512-FP16/AMX, which we do not route."""
    if dtype == torch.float32:
        return None
    if dtype == torch.bfloat16:
        return onednn_bf16_reason()
    return f"dtype {dtype} not supported by the oneDNN CPU path (float32, bfloat16 only)"
