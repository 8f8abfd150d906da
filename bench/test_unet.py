"""UNet step latency (one denoiser forward): eager vs fused, fp32 and bf16, batch 1 and 8.

32x32 latents (256x256 images with an 8x VAE). Models: the CI-sized c2i and t2i
variants by default (``ASCAN_BENCH_UNETS`` picks others; the XL ones are GPU-sized).
As in ``test_models.py`` the bf16 rows run under autocast and the bf16 group's
baseline is the fp32 eager model.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from ascan import build_model

from .conftest import DEVICE, SMOKE, run

UNETS = os.environ.get("ASCAN_BENCH_UNETS", "ascan_unet_c2i_s,ascan_unet_t2i_s").split(",")
BATCHES = [1, 2] if SMOKE else [1, 8]
LATENT = 8 if SMOKE else 32
CONTEXT_LEN = 77


def _models(name):
    torch.manual_seed(0)
    fused = build_model(name, fused=True).eval().to(DEVICE)
    eager = build_model(name, fused=False).eval().to(DEVICE)
    with torch.no_grad():  # zero-initialised output layers would let a real path skip work
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def _inputs(model, batch):
    x = torch.randn(batch, 4, LATENT, LATENT, device=DEVICE)
    t = torch.randint(0, 1000, (batch,), device=DEVICE)
    if model.num_classes is not None:
        return x, t, torch.randint(0, model.num_classes, (batch,), device=DEVICE)
    return x, t, torch.randn(batch, CONTEXT_LEN, model.cfg.context_dim, device=DEVICE)


@pytest.mark.parametrize("name", UNETS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("row", ["eager", "fused"])
def test_unet_step(benchmark, name, batch, dtype, row):
    fused, eager = _models(name)
    args = _inputs(fused, batch)
    group = f"{name}[b{batch} {LATENT}x{LATENT} latents {dtype}]"
    lowp = dtype == "bf16" and not (row == "eager")  # bf16 group baseline: fp32 eager
    ctx = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if lowp else contextlib.nullcontext()
    model = fused if row == "fused" else eager
    with ctx:
        out = run(benchmark, lambda: model(*args), group, row, rounds=3 if batch > 1 else 10, warmup=1)
    assert out.shape == (batch, 4, LATENT, LATENT) and torch.isfinite(out.float()).all()
