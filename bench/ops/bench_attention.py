"""Per-op bench: attention at ascan_t's T-block shapes (stages 3 and 4, head dim 32); the
eager reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import torch

from ..conftest import op_runner, run, runnable
from ._common import B, S, matrix, randn, TOKENS


@matrix("attention", TOKENS)
def test_attention(benchmark, impl, shape, dtype):
    name, L, C = shape
    q, k, v = (randn(B, C // 32, L, 32).to(dtype) for _ in range(3))
    f = op_runner("attention", impl)
    call = runnable("attention", impl, lambda: f(q, k, v))
    run(benchmark, call, f"attention[{name} {tuple(q.shape)} {dtype}]", impl)
