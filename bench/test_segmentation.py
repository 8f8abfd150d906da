"""Segmenter latency (one forward, batch 1, 512x512): eager vs fused, fp32 and bf16.

Rows per group: ``eager`` (fused=False, fp32) and ``fused``. As in ``test_models.py``
the bf16 ``fused`` row runs under ``torch.autocast`` and the bf16 group's baseline is
the fp32 eager model. ``ASCAN_BENCH_SEG_MODELS=ascan_t_seg,ascan_s_seg`` picks models;
smoke mode runs 64x64.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from ascan import build_model

from .conftest import DEVICE, SMOKE, run

MODELS = os.environ.get("ASCAN_BENCH_SEG_MODELS", "ascan_t_seg").split(",")
RES = 64 if SMOKE else 512
NUM_CLASSES = 150  # ADE20K


def _models(name):
    torch.manual_seed(0)
    fused = build_model(name, fused=True, num_classes=NUM_CLASSES).eval().to(DEVICE)
    eager = build_model(name, fused=False, num_classes=NUM_CLASSES).eval().to(DEVICE)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("row", ["eager", "fused"])
def test_segmenter(benchmark, name, dtype, row):
    fused, eager = _models(name)
    x = torch.randn(1, 3, RES, RES, device=DEVICE)
    group = f"{name}[b1 {RES}px {dtype}]"
    lowp = dtype == "bf16" and row == "fused"  # bf16 group baseline: fp32 eager
    ctx = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if lowp else contextlib.nullcontext()
    model = fused if row == "fused" else eager
    with ctx:
        out = run(benchmark, lambda: model(x), group, row, rounds=5, warmup=1)
    assert out.shape == (1, NUM_CLASSES, RES, RES) and torch.isfinite(out.float()).all()
