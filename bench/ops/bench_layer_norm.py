"""Per-op bench: add_layer_norm and layer_norm at ascan_t's T-block shapes; the eager
reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import torch

from ..conftest import op_runner, run, runnable
from ._common import B, S, matrix, randn, TOKENS


@matrix("add_layer_norm", TOKENS)
def test_add_layer_norm(benchmark, impl, shape, dtype):
    name, L, C = shape
    x, r = randn(B, L, C).to(dtype), randn(B, L, C).to(dtype)
    w, b = randn(C), randn(C)
    f = op_runner("add_layer_norm", impl)
    call = runnable("add_layer_norm", impl, lambda: f(x, r, w, b))
    run(benchmark, call, f"add_layer_norm[{name} {tuple(x.shape)} {dtype}]",
            impl, rounds=50)


@matrix("layer_norm", TOKENS)
def test_layer_norm(benchmark, impl, shape, dtype):
    name, L, C = shape
    x = randn(B, L, C).to(dtype)
    w, b = randn(C), randn(C)
    f = op_runner("layer_norm", impl)
    call = runnable("layer_norm", impl, lambda: f(x, w, b))
    run(benchmark, call, f"layer_norm[{name} {tuple(x.shape)} {dtype}]", impl, rounds=50)
