"""Shared inputs of the per-op benches (bench/ops/bench_<op>.py): batch, shrink factor,
dtypes, the impl list, a random tensor maker."""
from __future__ import annotations

import torch

import ascan_kernels as K

from ..conftest import DEVICE, SMOKE

B = 2 if SMOKE else 16
S = 4 if SMOKE else 1  # spatial shrink factor in smoke mode
DTYPES = [torch.float32, torch.bfloat16]


def impls(op):
    """Every registered impl, then ``compile`` (torch.compile of the eager reference)."""
    return list(K.available(op)) + ["compile"]


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)
