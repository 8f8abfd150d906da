"""Per-op benches at ascan_t's real shapes: eager reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import pytest
import torch

import ascan_kernels as K

from .conftest import DEVICE, SMOKE, op_runner, run, skip_unless_ok

B = 2 if SMOKE else 16
S = 4 if SMOKE else 1  # spatial shrink factor in smoke mode
DTYPES = [torch.float32, torch.bfloat16]


def _impls(op):
    """Every registered impl, then ``compile`` (torch.compile of the eager reference)."""
    return list(K.available(op)) + ["compile"]


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


# (name, cin, cout, k, stride, hw): the convs of ascan_t at 224^2
CONVS = [
    ("stem2", 32, 64, 3, 2, 112), ("s1.expand", 64, 256, 3, 1, 56), ("s2.expand", 128, 512, 3, 1, 28),
]
PROJ = [("s1.project", 256, 64, 1, 1, 56), ("s2.project", 512, 128, 1, 1, 28)]


def _conv_inputs(cin, cout, k, hw, dtype):
    x = _randn(B, cin, hw // S, hw // S).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (_randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(dtype)
    c = torch.ones(cout, device=DEVICE)
    bn = (c, c * 0.1, c * 0.0, c)
    folded = tuple(t.to(dtype) for t in K.fold_bn(w, None, *bn, 1e-5))
    return x, w, bn, folded


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("impl", _impls("conv_bn_gelu"))
def test_conv_bn_gelu(benchmark, impl, shape, dtype):
    skip_unless_ok("conv_bn_gelu", impl)
    name, cin, cout, k, s, hw = shape
    x, w, bn, folded = _conv_inputs(cin, cout, k, hw, dtype)
    f = op_runner("conv_bn_gelu", impl)
    run(benchmark, lambda: f(x, w, None, *bn, stride=s, padding=k // 2, folded=folded),
            f"conv_bn_gelu[{name} {tuple(x.shape)} {dtype}]", impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", PROJ, ids=[c[0] for c in PROJ])
@pytest.mark.parametrize("impl", _impls("conv_bn_add"))
def test_conv_bn_add(benchmark, impl, shape, dtype):
    skip_unless_ok("conv_bn_add", impl)
    name, cin, cout, k, s, hw = shape
    x, w, bn, folded = _conv_inputs(cin, cout, k, hw, dtype)
    r = _randn(B, cout, hw // S, hw // S).to(dtype).contiguous(memory_format=torch.channels_last)
    f = op_runner("conv_bn_add", impl)
    run(benchmark, lambda: f(x, w, None, *bn, r, folded=folded),
            f"conv_bn_add[{name} {tuple(x.shape)} {dtype}]", impl)


TOKENS = [("s3", 196, 256), ("s4", 49, 512)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", _impls("attention"))
def test_attention(benchmark, impl, shape, dtype):
    skip_unless_ok("attention", impl)
    name, L, C = shape
    q, k, v = (_randn(B, C // 32, L, 32).to(dtype) for _ in range(3))
    f = op_runner("attention", impl)
    run(benchmark, lambda: f(q, k, v), f"attention[{name} {tuple(q.shape)} {dtype}]", impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", _impls("linear_gelu"))
def test_linear_gelu(benchmark, impl, shape, dtype):
    skip_unless_ok("linear_gelu", impl)
    name, L, C = shape
    x = _randn(B, L, C).to(dtype)
    w, b = (_randn(4 * C, C) / C ** 0.5).to(dtype), _randn(4 * C).to(dtype)
    f = op_runner("linear_gelu", impl)
    run(benchmark, lambda: f(x, w, b), f"linear_gelu[{name} {tuple(x.shape)} {dtype}]", impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", _impls("linear_add"))
def test_linear_add(benchmark, impl, shape, dtype):
    skip_unless_ok("linear_add", impl)
    name, L, C = shape
    x, r = _randn(B, L, 4 * C).to(dtype), _randn(B, L, C).to(dtype)
    w, b = (_randn(C, 4 * C) / (4 * C) ** 0.5).to(dtype), _randn(C).to(dtype)
    f = op_runner("linear_add", impl)
    run(benchmark, lambda: f(x, w, b, r), f"linear_add[{name} {tuple(x.shape)} {dtype}]", impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", _impls("add_layer_norm"))
def test_add_layer_norm(benchmark, impl, shape, dtype):
    skip_unless_ok("add_layer_norm", impl)
    name, L, C = shape
    x, r = _randn(B, L, C).to(dtype), _randn(B, L, C).to(dtype)
    w, b = _randn(C), _randn(C)
    f = op_runner("add_layer_norm", impl)
    run(benchmark, lambda: f(x, r, w, b), f"add_layer_norm[{name} {tuple(x.shape)} {dtype}]",
            impl, rounds=50)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", TOKENS, ids=[t[0] for t in TOKENS])
@pytest.mark.parametrize("impl", _impls("layer_norm"))
def test_layer_norm(benchmark, impl, shape, dtype):
    skip_unless_ok("layer_norm", impl)
    name, L, C = shape
    x = _randn(B, L, C).to(dtype)
    w, b = _randn(C), _randn(C)
    f = op_runner("layer_norm", impl)
    run(benchmark, lambda: f(x, w, b), f"layer_norm[{name} {tuple(x.shape)} {dtype}]", impl, rounds=50)


# (name, N, C, hw): GroupNorm+SiLU inputs of the generation UNets (ascan/unet.py: 32x32
# latents, levels of 128/256/384 channels at 32/16/8, plus an SD-like 320/1280 pair), and
# one tiny map where a parallel region or dispatch overhead would dominate.
GN = [("unet.l1", 8, 128, 32), ("unet.l1w", 8, 256, 32), ("unet.l3", 8, 384, 8), ("sd.l1", 2, 320, 32),
      ("sd.l3", 2, 1280, 8), ("tiny", 1, 128, 8)]
GN_FORMATS = {"cl": torch.channels_last, "nchw": torch.contiguous_format}


@pytest.mark.parametrize("fmt", list(GN_FORMATS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", GN, ids=[g[0] for g in GN])
@pytest.mark.parametrize("impl", _impls("group_norm_silu"))
def test_group_norm_silu(benchmark, impl, shape, dtype, fmt):
    skip_unless_ok("group_norm_silu", impl)
    name, n, C, hw = shape
    x = _randn(n, C, max(hw // S, 1), max(hw // S, 1)).to(dtype).contiguous(memory_format=GN_FORMATS[fmt])
    w, b = _randn(C).to(dtype), _randn(C).to(dtype)
    scale, shift = (0.1 * _randn(n, C)).to(dtype), (0.1 * _randn(n, C)).to(dtype)
    f = op_runner("group_norm_silu", impl)
    run(benchmark, lambda: f(x, 32, w, b, 1e-5, scale, shift),
        f"group_norm_silu[{name} {tuple(x.shape)} {dtype} {fmt}]", impl, rounds=50)
