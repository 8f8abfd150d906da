"""Shared inputs of the per-op benches (bench/ops/bench_<op>.py): batch, shrink factor,
dtypes, the impl list, a random tensor maker."""
from __future__ import annotations

import pytest
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


TOKENS = [("s3", 196, 256), ("s4", 49, 512)]  # ascan_t stages 3 and 4 at 224^2: (name, L, C)


def matrix(op, shapes):
    """The bench grid of one op: every impl (:func:`impls`) x ``shapes`` (tuples whose first
    entry names the shape) x fp32/bf16, as the ``impl``, ``shape`` and ``dtype`` arguments."""
    def wrap(fn):
        fn = pytest.mark.parametrize("impl", impls(op))(fn)
        fn = pytest.mark.parametrize("shape", shapes, ids=[s[0] for s in shapes])(fn)
        return pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])(fn)
    return wrap
