"""Per-op bench: conv_bias_act at the convs of ascan_unet_c2i_s on 32x32 latents (batch
16, channels_last): the C block's 3x3 expand, its 1x1 projection with the block's
shortcut as the residual, the strided downsample; the eager reference vs every impl,
fp32 and bf16.

Groups are named ``conv_bias_act[shape dtype]`` so the ratio table puts each impl beside eager.
"""
from __future__ import annotations

import torch

from ..conftest import op_runner, run, runnable
from ._common import B, S, matrix, randn

OP = "conv_bias_act"
# (name, cin, cout, k, stride, hw, residual)
CONVS = [
    ("c0.expand", 128, 256, 3, 1, 32, False),
    ("c0.project", 256, 128, 1, 1, 32, True),
    ("down0", 128, 256, 3, 2, 32, False),
]


@matrix(OP, CONVS)
def test_conv_bias_act(benchmark, impl, shape, dtype):
    name, cin, cout, k, s, hw, has_res = shape
    cl = torch.channels_last
    x = randn(B, cin, hw // S, hw // S).to(dtype).contiguous(memory_format=cl)
    w = (randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(dtype)
    b = randn(cout).to(dtype)
    ho = (hw // S + 2 * (k // 2) - k) // s + 1
    r = randn(B, cout, ho, ho).to(dtype).contiguous(memory_format=cl) if has_res else None
    f = op_runner(OP, impl)
    call = runnable(OP, impl, lambda: f(x, w, b, r, stride=s, padding=k // 2))
    run(benchmark, call, f"{OP}[{name} {tuple(x.shape)} {dtype}]", impl)
