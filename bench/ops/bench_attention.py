"""Per-op bench: attention at ascan_t's T-block shapes (stages 3 and 4, head dim 32); the
eager reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import pytest
import torch

from ..conftest import op_runner, run, runnable
from ._common import B, DTYPES, S, impls, randn


TOKENS = [("s3", 196, 256), ("s4", 49, 512)]  # ascan_t stages 3 and 4 at 224^2: (name, L, C)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", impls("attention"))
def test_attention(benchmark, impl, shape, dtype):
    name, L, C = shape
    q, k, v = (randn(B, C // 32, L, 32).to(dtype) for _ in range(3))
    f = op_runner("attention", impl)
    call = runnable("attention", impl, lambda: f(q, k, v))
    run(benchmark, call, f"attention[{name} {tuple(q.shape)} {dtype}]", impl)
