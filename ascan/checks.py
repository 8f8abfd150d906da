"""Input checks shared by the models: one message, one exception type, fused or not.

A wrong input to a model must fail with an error that names the model and says what
was wrong, and the same error whether the model is fused or eager (the eager model
would otherwise raise whatever PyTorch raises deep inside, and the fused one an op's
error). Shape, device and value mistakes raise ``ValueError``; dtype mistakes ``TypeError``.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def first_param(model: nn.Module) -> torch.Tensor | None:
    return next(model.parameters(), None)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta)
        return False


def check_matches_model(name: str, what: str, x: torch.Tensor, model: nn.Module) -> None:
    """``x`` must be a floating tensor on the model's device, in its dtype (any floating
    dtype under autocast, which casts)."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: {what} must be floating point (expected a floating-point input), got {x.dtype}")
    p = first_param(model)
    if p is None:
        return
    if x.device != p.device:
        raise ValueError(f"{name}: {what} is on {x.device} but the model's parameters are on {p.device}; "
                         f"move one of them (model.to({str(x.device)!r}) or x.to({str(p.device)!r}))")
    if x.dtype != p.dtype and not _autocast_on(x.device.type):
        raise TypeError(f"{name}: {what} is {x.dtype} but the model's parameters are {p.dtype}; cast the input "
                        f"(x.to({p.dtype})), the model (model.to({x.dtype})), or run under torch.autocast")


def check_image(name: str, x, in_chans: int, model: nn.Module, multiple: int = 1, min_size: int = 1) -> None:
    """``x`` must be (B, in_chans, H, W) with H, W >= min_size and multiples of ``multiple``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected input (B, {in_chans}, H, W), got {got}")
    check_matches_model(name, "input", x, model)
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (input {tuple(x.shape)})")
    H, W = x.shape[2:]
    if H < min_size or W < min_size:
        raise ValueError(f"{name}: input {(H, W)} is smaller than the total stride {min_size}")
    if multiple > 1 and (H % multiple or W % multiple):
        raise ValueError(f"{name}: input height and width must be multiples of {multiple}, got {(H, W)}")


def check_batch_norm_batch(name: str, x: torch.Tensor, stride: int, model: nn.Module) -> None:
    """In training, BatchNorm at the coarsest stride needs more than one value per channel."""
    if not model.training:
        return
    B, _, H, W = x.shape
    cells = B * -(-H // stride) * -(-W // stride)
    if cells <= 1:
        raise ValueError(f"{name}: training with input {tuple(x.shape)} leaves one value per channel for "
                         f"BatchNorm at stride {stride}; use a batch of 2 or more, a larger input, or eval mode")
