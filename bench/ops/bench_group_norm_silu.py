"""Per-op bench: group_norm_silu at the generation UNets' shapes, NCHW and channels_last;
the eager reference vs every impl, fp32 and bf16.

Groups are named ``op[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import pytest
import torch

from ..conftest import op_runner, run, runnable
from ._common import B, S, matrix, randn


# (name, N, C, hw): GroupNorm+SiLU inputs of the generation UNets (ascan/unet.py: 32x32
# latents, levels of 128/256/384 channels at 32/16/8, plus an SD-like 320/1280 pair), and
# one tiny map where a parallel region or dispatch overhead would dominate.
GN = [("unet.l1", 8, 128, 32), ("unet.l1w", 8, 256, 32), ("unet.l3", 8, 384, 8), ("sd.l1", 2, 320, 32),
      ("sd.l3", 2, 1280, 8), ("tiny", 1, 128, 8)]
GN_FORMATS = {"cl": torch.channels_last, "nchw": torch.contiguous_format}


@pytest.mark.parametrize("fmt", list(GN_FORMATS))
@matrix("group_norm_silu", GN)
def test_group_norm_silu(benchmark, impl, shape, dtype, fmt):
    name, n, C, hw = shape
    x = randn(n, C, max(hw // S, 1), max(hw // S, 1)).to(dtype).contiguous(memory_format=GN_FORMATS[fmt])
    w, b = randn(C).to(dtype), randn(C).to(dtype)
    scale, shift = (0.1 * randn(n, C)).to(dtype), (0.1 * randn(n, C)).to(dtype)
    f = op_runner("group_norm_silu", impl)
    call = runnable("group_norm_silu", impl, lambda: f(x, 32, w, b, 1e-5, scale, shift))
    run(benchmark, call, f"group_norm_silu[{name} {tuple(x.shape)} {dtype} {fmt}]", impl, rounds=50)
