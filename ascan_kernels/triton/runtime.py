"""Where the Triton kernels can run, shared by every kernel module.

Triton kernels run on CUDA tensors. With ``TRITON_INTERPRET=1`` set before Triton is
imported they run instead on CPU tensors under Triton's interpreter (numpy): slow,
for checking numerics on a machine without a GPU. The registry then treats the
``triton`` impls as available but never prefers them for CPU tensors, so only an
explicit ``use(op="triton")`` runs them there.
"""
from __future__ import annotations

import importlib.util
import os

import torch

PRIORITY = 200  # above the CPU impls (100) and SDPA (50), below the CUDA C++ impls (300)


def interpreting() -> bool:
    """True when Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def devices() -> tuple[str, ...]:
    """The device type the kernels take in this process: CPU tensors under the interpreter."""
    return ("cpu",) if interpreting() else ("cuda",)


def unavailable_reason() -> str | None:
    """Why no Triton kernel can run in this process, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, for testing)"
    return None


def device_reason(t: torch.Tensor) -> str | None:
    """Why a Triton kernel cannot take ``t``'s device, or None."""
    if interpreting():
        if t.device.type != "cpu":
            return f"device {t.device.type}: under TRITON_INTERPRET=1 the kernels take CPU tensors"
        return None
    if t.device.type != "cuda":
        return f"device {t.device.type}: the Triton kernels take CUDA tensors"
    return None


def prefer_reason(t: torch.Tensor) -> str | None:
    """Automatic selection never picks the interpreter: it is for numerics tests only."""
    if t.device.type == "cpu":
        return "CPU tensors run under Triton's interpreter (numerics only); force with use(op='triton')"
    return None


def dtype_reason(dtype: torch.dtype, allowed=(torch.float16, torch.bfloat16, torch.float32)) -> str | None:
    if dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        return f"dtype {dtype} not supported ({names})"
    return None
