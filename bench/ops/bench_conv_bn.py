"""Per-op bench: conv_bn_gelu / conv_bn_add at ascan_t's conv shapes (batch 16, 224^2,
channels_last, a precomputed BN fold as the model caches it); the eager reference vs
every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import torch

import ascan_kernels as K

from ..conftest import DEVICE, op_runner, run, runnable
from ._common import B, S, matrix, randn


# (name, cin, cout, k, stride, hw): the convs of ascan_t at 224^2
CONVS = [
    ("stem2", 32, 64, 3, 2, 112), ("s1.expand", 64, 256, 3, 1, 56), ("s2.expand", 128, 512, 3, 1, 28),
]
PROJ = [("s1.project", 256, 64, 1, 1, 56), ("s2.project", 512, 128, 1, 1, 28)]


def conv_inputs(cin, cout, k, hw, dtype):
    x = randn(B, cin, hw // S, hw // S).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(dtype)
    c = torch.ones(cout, device=DEVICE)
    bn = (c, c * 0.1, c * 0.0, c)
    folded = tuple(t.to(dtype) for t in K.fold_bn(w, None, *bn, 1e-5))
    return x, w, bn, folded


@matrix("conv_bn_gelu", CONVS)
def test_conv_bn_gelu(benchmark, impl, shape, dtype):
    name, cin, cout, k, s, hw = shape
    x, w, bn, folded = conv_inputs(cin, cout, k, hw, dtype)
    f = op_runner("conv_bn_gelu", impl)
    call = runnable("conv_bn_gelu", impl, lambda: f(x, w, None, *bn, stride=s, padding=k // 2, folded=folded))
    run(benchmark, call, f"conv_bn_gelu[{name} {tuple(x.shape)} {dtype}]", impl)


@matrix("conv_bn_add", PROJ)
def test_conv_bn_add(benchmark, impl, shape, dtype):
    name, cin, cout, k, s, hw = shape
    x, w, bn, folded = conv_inputs(cin, cout, k, hw, dtype)
    r = randn(B, cout, hw // S, hw // S).to(dtype).contiguous(memory_format=torch.channels_last)
    f = op_runner("conv_bn_add", impl)
    call = runnable("conv_bn_add", impl, lambda: f(x, w, None, *bn, r, folded=folded))
    run(benchmark, call, f"conv_bn_add[{name} {tuple(x.shape)} {dtype}]", impl)
