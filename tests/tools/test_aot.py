"""Every Triton kernel compiles for real GPUs (sm_80, sm_90) at every autotune config:
no compile error, no spills, shared memory within the target's limit, tensor-core
instructions in the PTX of dot kernels. Runs in subprocesses without
``TRITON_INTERPRET`` (this process has it on) and needs no GPU."""
import os
import pathlib
import subprocess
import sys

import pytest

from ascan_kernels.backends.triton import unavailable_reason
from ascan_kernels.tools.aot import triton_modules

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(unavailable_reason() == "triton is not installed", reason="triton is not installed")


def _run(args, tmp_path, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_checker_flags_bad_kernels(tmp_path):
    """The checks below could not fail if the checker never found anything: prove it does."""
    p = _run([str(ROOT / "tests" / "tools" / "toys.py")], tmp_path)
    assert p.returncode == 0, p.stderr
    lines = {ln.split(" ", 1)[0]: ln for ln in p.stdout.splitlines()}
    assert "no mma instruction" in lines["no_dot"]
    assert "shared memory" in lines["smem"] and "> sm_80 limit" in lines["smem"]
    assert lines["clean"].startswith("clean ok")


@pytest.mark.parametrize("module", list(triton_modules()))
def test_kernels_compile_clean_for_sm80_and_sm90(module, tmp_path):
    p = _run(["-m", "ascan_kernels.tools.aot", "--module", module], tmp_path)
    assert p.returncode == 0, f"{p.stdout[-6000:]}\n{p.stderr[-3000:]}"
    summary = p.stdout.strip().splitlines()[-1]
    done, total = summary.split()[0].split("/")
    assert done == total and int(total) > 0, summary
