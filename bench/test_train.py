"""Training throughput: one optimizer step of the default trainers' models, eager vs fused vs
torch.compile(eager), fp32 and bf16 autocast. The ratio table's baseline is the eager row
of the same dtype. Images/s = batch / median. Interleaved numbers for the README:
``python -m bench.train_throughput``."""
from __future__ import annotations

import pytest
import torch

from .conftest import DEVICE, SMOKE
from .train_steps import CASES, ROWS, make_step

BATCH = 4 if SMOKE else 64


@pytest.mark.parametrize("case", [c for c in CASES if not (SMOKE and c.endswith("@224"))])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("row", ROWS)
def test_train_step(benchmark, case, dtype, row):
    if row.startswith("compile") and SMOKE:
        pytest.skip("torch.compile rows are skipped in smoke mode (compile time)")
    batch = 16 if case.endswith("@224") and not SMOKE else BATCH
    step = make_step(case, row, dtype, batch, DEVICE)
    benchmark.group = f"train {case}[b{batch} {dtype}]"
    benchmark.name = row
    benchmark.extra_info.update(row=row, device=str(DEVICE), batch=batch)
    loss = benchmark.pedantic(step, rounds=1 if SMOKE else 5, warmup_rounds=0 if SMOKE else 2, iterations=1)
    assert torch.isfinite(loss)
