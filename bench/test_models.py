"""Whole-model benches: every classifier eager vs fused vs torch.compile(eager), fp32 and bf16, batch 1 and 16.

Rows per group: ``eager`` (fused=False, fp32: the honest baseline), ``fused``, and
``compile(eager)`` (``torch.compile`` of the eager model, default mode). In the bf16
groups every row runs under ``torch.autocast(device, torch.bfloat16)`` and the ratio
is against the **fp32** eager model, the figure the targets are stated in.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from ascan import build_model

from .conftest import DEVICE, SMOKE, run

from ascan import CONFIGS

# every classifier by default; ASCAN_BENCH_MODELS=ascan_t narrows a run
MODELS = os.environ.get("ASCAN_BENCH_MODELS", ",".join(CONFIGS)).split(",")
BATCHES = [1, 2] if SMOKE else [1, 16]
RES = 64 if SMOKE else 224
_EAGER_FP32: dict = {}


def _models(name):
    torch.manual_seed(0)
    fused = build_model(name, fused=True).eval().to(DEVICE)
    eager = build_model(name, fused=False).eval().to(DEVICE)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def _ctx(dtype):
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("row", ["eager", "fused", "compile(eager)"])
def test_model(benchmark, name, batch, dtype, row):
    if row == "compile(eager)" and SMOKE:
        pytest.skip("torch.compile rows are skipped in smoke mode (compile time)")
    fused, eager = _models(name)
    x = torch.randn(batch, 3, RES, RES, device=DEVICE)
    group = f"{name}[b{batch} {RES}px {dtype}]"
    if row == "eager" and dtype == "bf16":
        # The bf16 group's baseline is the fp32 eager model (targets are vs fp32 eager).
        model, ctx = eager, contextlib.nullcontext()
    else:
        model = {"eager": eager, "fused": fused}.get(row) or torch.compile(eager)
        ctx = _ctx(dtype)
    rounds = 3 if batch > 8 else 10
    with ctx:
        out = run(benchmark, lambda: model(x), group, row, rounds=rounds, warmup=2)
    assert out.shape == (batch, 1000) and torch.isfinite(out.float()).all()
