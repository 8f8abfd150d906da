"""Whether PyTorch's oneDNN fused primitives can run here, and in which dtypes.

PyTorch ships oneDNN's fused conv/linear primitives as ``torch.ops.mkldnn._convolution_pointwise``
and ``_linear_pointwise`` (the ops Inductor's CPU backend lowers to). The ``cpu`` impls of
the conv and linear ops wrap them (ascan_kernels/ops/conv_bias_act/cpu.py, ops/linear/cpu.py);
this module answers, once per process, whether they exist and compute correctly, and
whether this CPU has their bfloat16 kernels, and holds the vocabulary both wrappers
share (the post-op names, the activation backward, when the custom-op layer is needed).
"""
from __future__ import annotations

import functools

import torch

from ..capabilities import Capabilities

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu")


def post_op(act: str) -> tuple[str, list, str | None]:
    """(attr, scalars, algorithm) in oneDNN's pointwise vocabulary."""
    if act == "none":
        return "none", [], None
    if act == "gelu":
        return "gelu", [], "none"
    if act == "gelu_tanh":
        return "gelu", [], "tanh"
    if act == "silu":
        return "swish", [], None  # oneDNN's eltwise_swish with alpha 1: x * sigmoid(x)
    raise ValueError(f"unsupported activation {act!r}; expected one of {ACTIVATIONS}")


def act_backward(grad: torch.Tensor, pre: torch.Tensor, act: str) -> torch.Tensor:
    """The gradient through ``act`` at the pre-activation ``pre``."""
    if act == "none":
        return grad
    if act == "silu":
        return torch.ops.aten.silu_backward(grad, pre)
    return torch.ops.aten.gelu_backward(grad, pre, approximate="tanh" if act == "gelu_tanh" else "none")


def needs_custom_op(tensors) -> bool:
    """Whether a call must go through the custom op (autograd or torch.compile need it): the
    op's body alone skips the custom-op layer (~30 us, a third of a small conv)."""
    return torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))



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
            # oneDNN's op itself, not our custom op around it: calling a custom op imports
            # torch._dynamo (seconds), which `import ascan_kernels` must not pay for.
            got = torch.ops.mkldnn._convolution_pointwise(x.contiguous(memory_format=torch.channels_last), w, b,
                                                          [1, 1], [1, 1], [1, 1], 1, "gelu", [], "none")
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


def onednn_capabilities() -> Capabilities:
    """What the oneDNN-backed ``cpu`` impls take: CPU tensors in float32 or bfloat16, no
    empty inputs. Whether this CPU has the bf16 kernels is a per-call check
    (:func:`onednn_machine_reason`), so that the declaration describes the code."""
    return Capabilities(devices=("cpu",), dtypes=(torch.float32, torch.bfloat16), empty=False)


def onednn_machine_reason(dtype: torch.dtype) -> str | None:
    """Why this CPU cannot run the oneDNN impls in ``dtype`` (bf16 without its kernels), or None."""
    return onednn_bf16_reason() if dtype == torch.bfloat16 else None
