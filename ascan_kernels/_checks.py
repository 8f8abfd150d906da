"""Input validation shared by the ops' public functions.

Every failure raises ``ValueError``/``TypeError`` whose message starts with
``ascan_kernels.<op>:`` and says what was wrong, so a user can tell which op
rejected which argument.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ._common import autocast_enabled

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
