"""Per-op bench: linear_gelu (MLP fc1) and linear_add (fc2 + shortcut) at ascan_t's T-block
shapes; the eager reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import torch

from ..conftest import op_runner, run, runnable
from ._common import B, S, matrix, randn, TOKENS


@matrix("linear_gelu", TOKENS)
def test_linear_gelu(benchmark, impl, shape, dtype):
    name, L, C = shape
    x = randn(B, L, C).to(dtype)
    w, b = (randn(4 * C, C) / C ** 0.5).to(dtype), randn(4 * C).to(dtype)
    f = op_runner("linear_gelu", impl)
    call = runnable("linear_gelu", impl, lambda: f(x, w, b))
    run(benchmark, call, f"linear_gelu[{name} {tuple(x.shape)} {dtype}]", impl)


@matrix("linear_add", TOKENS)
def test_linear_add(benchmark, impl, shape, dtype):
    name, L, C = shape
    x, r = randn(B, L, 4 * C).to(dtype), randn(B, L, C).to(dtype)
    w, b = (randn(C, 4 * C) / (4 * C) ** 0.5).to(dtype), randn(C).to(dtype)
    f = op_runner("linear_add", impl)
    call = runnable("linear_add", impl, lambda: f(x, w, b, r))
    run(benchmark, call, f"linear_add[{name} {tuple(x.shape)} {dtype}]", impl)
