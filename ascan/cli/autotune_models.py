"""The models ``python -m ascan_kernels autotune --model`` tunes (the ``ascan_kernels.models``
entry point): ascan_kernels never imports ascan, so it asks for them by name here."""
from __future__ import annotations

import torch
from torch import nn

from ..export import example_inputs
from ..models import build_model


def build_for_autotune(name: str, batch: int = 1, size: int | None = None,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(the fused model ``name`` in eval mode on ``device``, its example inputs at ``batch`` and
    ``size``): what ``ascan.export.example_inputs`` feeds it. Unknown names raise KeyError."""
    model = build_model(name, fused=True).eval().to(device)
    return model, example_inputs(model, batch=batch, size=size)
