"""Input validation shared by the ops' public functions.

Every failure raises ``ValueError``/``TypeError`` whose message starts with
``ascan_kernels.<op>:`` and says what was wrong, so a user can tell which op
rejected which argument.
"""
from __future__ import annotations

from typing import Iterable

import torch

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def fail(op: str, msg: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"ascan_kernels.{op}: {msg}")


def tensor(op: str, name: str, t, ndim: int | Iterable[int] | None = None, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if floating and t.dtype not in FLOATING:
        fail(op, f"{name} must be a floating-point tensor (float32/float16/bfloat16/float64), got {t.dtype}", TypeError)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            fail(op, f"{name} must be {want}, got shape {tuple(t.shape)}")


def same_device(op: str, **tensors) -> None:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        fail(op, "all tensors must be on one device, got " + ", ".join(f"{n} on {d}" for n, d in devs.items()))


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled`` that answers False for devices without autocast (meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def same_dtype(op: str, **tensors) -> None:
    """Activations must share a dtype unless autocast will cast them anyway."""
    ts = {n: t for n, t in tensors.items() if t is not None}
    if not ts:
        return
    dev = next(iter(ts.values())).device.type
    if autocast_enabled(dev):
        return
    dts = {n: t.dtype for n, t in ts.items()}
    if len(set(dts.values())) > 1:
        fail(op, "dtypes must match, got " + ", ".join(f"{n}={d}" for n, d in dts.items()), TypeError)


def param_dtype(op: str, name: str, p: torch.Tensor, x: torch.Tensor) -> None:
    """A norm's affine parameter must have x's dtype, or be float32 for a float16/bfloat16 x
    (the mixed precision PyTorch's CPU and CUDA norms support)."""
    if p.dtype == x.dtype or (p.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
        return
    fail(op, f"{name} is {p.dtype} but x is {x.dtype}: parameters must have x's dtype "
             "(or be float32 for a float16/bfloat16 x)", TypeError)


def shape(op: str, name: str, t: torch.Tensor | None, expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(expected):
        fail(op, f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def pair(op: str, name: str, v) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        fail(op, f"{name} must be an int or a pair of ints, got {v!r}", TypeError)
    return v  # type: ignore[return-value]


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul-class op computes in: the autocast dtype inside autocast."""
    dev = t.device.type
    if autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


def residual_needs_promotion(compute: torch.dtype, residual: torch.Tensor | None) -> bool:
    """Whether ``y + residual`` with ``y`` in ``compute`` promotes to another dtype.

    Under autocast eager PyTorch computes a conv/GEMM in bfloat16 and then adds an fp32
    residual in fp32, returning fp32. A fused impl whose epilogue adds in the compute
    dtype would return bfloat16; impls use this to add such a residual after the
    kernel instead, so they return what the reference returns."""
    return residual is not None and torch.promote_types(compute, residual.dtype) != compute


def version_key(t: torch.Tensor) -> int | None:
    """``t._version`` for cache keys, or None for an inference tensor (made under
    ``torch.inference_mode()``), which has no version counter. Such a tensor can only
    be changed in place inside inference mode, and then nothing can see it: callers
    that cache on a None key say so."""
    return None if t.is_inference() else t._version
