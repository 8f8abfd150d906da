"""Shared helpers for the training tests: tiny run settings and weight comparisons."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# ascan_t at 32x32 on the digits, batch 16: ~0.2 s a step on 2 cores
TINY = dict(batch_size=16, epochs=1, log_every=1000, quiet=True, ema=0.99, drop_path=0.1, warmup_steps=2)
# the tiny UNet at 8x8: milliseconds a step
TINY_DIFFUSION = dict(batch_size=16, epochs=1, log_every=1000, quiet=True, ema=0.99, image_size=8,
                      warmup_steps=2, samples_per_class=1, sample_steps=2, train_judge=False,
                      judge="/nonexistent")


def weights(path) -> dict[str, torch.Tensor]:
    from ascan.train.checkpoint import load_weights
    return load_weights(path)[0]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0 and rtol == 0:
            assert torch.equal(a[k], b[k]), f"{k} differs (max |diff| {(a[k].double() - b[k].double()).abs().max()})"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


def assert_same_training(a: dict, b: dict, lr: float) -> None:
    """Two runs that differ only in the order of float sums (an all-reduce over ranks vs one
    batch): nearly every weight agrees to 1e-6; AdamW normalises each gradient, so where a
    gradient is near zero its rounding can move a weight by up to ~lr a step: bound that."""
    assert a.keys() == b.keys()
    close = total = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=lr / 10, rtol=0, msg=lambda m: f"{k}: {m}")
        if a[k].is_floating_point():
            close += int(((a[k] - b[k]).abs() <= 1e-6 + 1e-5 * b[k].abs()).sum())
            total += a[k].numel()
    assert close / total > 0.999, f"only {close}/{total} weights agree to 1e-6"


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ascan", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or python_env(), cwd=REPO)


def torchrun(nproc: int, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           "-m", "ascan", *map(str, args)]
    env = python_env()
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
