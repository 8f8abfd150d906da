"""Resume: N steps straight == N/2 steps, stop, resume, N/2 steps, bit for bit on CPU.

Both halves run in one process with the same thread count, so every op sees the same
inputs in the same order; what the checkpoint must carry for the weights to match is
the optimizer, the LR schedule, the EMA, the RNG (drop path draws from it) and the
data position (the cut falls mid-epoch)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ascan.train import fit
from ascan.train.checkpoint import latest_checkpoint, list_checkpoints

from _train_helpers import TINY, assert_same_weights, python_env, weights, REPO


def test_resume_is_bit_exact(tmp_path):
    straight = fit(**TINY, max_steps=6, out=str(tmp_path / "a"))
    fit(**TINY, max_steps=3, out=str(tmp_path / "b"))
    resumed = fit(**TINY, max_steps=6, out=str(tmp_path / "b"), resume=True)
    assert straight["step"] == resumed["step"] == 6
    a, b = latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b")
    assert_same_weights(weights(a / "model.safetensors"), weights(b / "model.safetensors"))
    assert_same_weights(weights(a / "ema.safetensors"), weights(b / "ema.safetensors"))
    assert straight["metrics"]["top1"] == resumed["metrics"]["top1"]


def test_a_different_config_under_resume_is_refused(tmp_path):
    from _train_helpers import run_cli
    out = tmp_path / "r"
    r = run_cli("train", "--batch-size", 16, "--max-steps", 1, "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", out, "--lr", 0.5)
    assert r.returncode == 1 and "--lr differs from" in r.stderr, r.stderr
    r = run_cli("train", "--batch-size", 16, "--max-steps", 1, "--quiet", "--out", out)
    assert r.returncode == 1 and "already holds checkpoints" in r.stderr and "--resume" in r.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from ascan.train import CheckpointError
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        fit(**TINY, max_steps=1, out=str(tmp_path), resume=True)


@pytest.mark.slow  # ~30 s (two subprocesses); in-process resume is bit-exact by default
def test_killed_run_resumes_to_the_straight_result(tmp_path):
    """SIGKILL a training process after its second checkpoint, resume it from the command
    line, and get the weights of an uninterrupted run."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ascan", "train", "--batch-size", "16", "--epochs", "1", "--max-steps", "10", "--save-every", "2",
            "--ema", "0.99", "--drop-path", "0.1", "--warmup-steps", "2", "--log-every", "1", "--out", str(out)]
    proc = subprocess.Popen(args, env=python_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while len(list_checkpoints(out)) < 2 or list_checkpoints(out)[-1].name < "ckpt-00000004":
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = latest_checkpoint(out).name
    assert killed_at < "ckpt-00000010"
    r = subprocess.run([sys.executable, "-m", "ascan", "train", "--resume", str(out), "--quiet"],
                       env=python_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    straight = fit(**dict(TINY, ema=0.99, drop_path=0.1), max_steps=10, out=str(tmp_path / "straight"))
    assert straight["step"] == 10
    assert_same_weights(weights(latest_checkpoint(out) / "model.safetensors"),
                        weights(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
