"""Per-op bench: linear_gelu (MLP fc1) and linear_add (fc2 + shortcut) at ascan_t's T-block
shapes; the eager reference vs every impl, fp32 and bf16.

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
@pytest.mark.parametrize("impl", impls("linear_gelu"))
def test_linear_gelu(benchmark, impl, shape, dtype):
    name, L, C = shape
    x = randn(B, L, C).to(dtype)
    w, b = (randn(4 * C, C) / C ** 0.5).to(dtype), randn(4 * C).to(dtype)
    f = op_runner("linear_gelu", impl)
    call = runnable("linear_gelu", impl, lambda: f(x, w, b))
    run(benchmark, call, f"linear_gelu[{name} {tuple(x.shape)} {dtype}]", impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", impls("linear_add"))
def test_linear_add(benchmark, impl, shape, dtype):
    name, L, C = shape
    x, r = randn(B, L, 4 * C).to(dtype), randn(B, L, C).to(dtype)
    w, b = (randn(C, 4 * C) / (4 * C) ** 0.5).to(dtype), randn(C).to(dtype)
    f = op_runner("linear_add", impl)
    call = runnable("linear_add", impl, lambda: f(x, w, b, r))
    run(benchmark, call, f"linear_add[{name} {tuple(x.shape)} {dtype}]", impl)
