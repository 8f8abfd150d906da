"""bench/gpu_session.sh and bench/gpu_session.py: the prepared GPU session, rehearsed here.

Without a GPU the session must run end to end and report every GPU step as skipped with the
reason; ``--rehearse-on-cpu`` runs every step's code on the CPU at tiny shapes (so the first
real run does not die on a typo); the time boxes stop a step that overruns, with whatever it
started, and the session goes on; the install builds for the GPU's architecture alone.
"""
from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest
import torch

import ascan_kernels as K
from bench import gpu_session as gs  # bench/ is not installed: pyproject's pytest pythonpath has the root

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = ROOT / "bench" / "gpu_session.sh"
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the real session runs there")


def _sh(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def _session(out: pathlib.Path) -> dict:
    return json.loads((out / "gpu_session.json").read_text())


# ------------------------------------------------------------------------ the time boxes
def test_the_time_boxes_add_up_to_the_promised_totals():
    assert sum(gs.MODES["full"].timebox.values()) <= 8 * 60
    assert sum(gs.MODES["quick"].timebox.values()) <= 3 * 60
    for mode in gs.MODES.values():
        assert set(mode.timebox) == {s.name for s in gs.STEPS}


def _toy_steps(tmp_path: pathlib.Path) -> tuple:
    child_pid = tmp_path / "grandchild.pid"
    sleeper = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
               f"time.sleep(120)']); open({str(child_pid)!r}, 'w').write(str(p.pid)); print('sleeping', flush=True); "
               "time.sleep(120)")
    nothing = lambda ctx: ("", "", None)  # noqa: E731
    steps = (
        gs.Step("slow", "overruns its box", False, lambda ctx: [sys.executable, "-c", sleeper], nothing),
        gs.Step("broken", "exits 3", False,
                lambda ctx: [sys.executable, "-c", "import sys; print('bad thing happened'); sys.exit(3)"], nothing),
        gs.Step("badsummary", "its summary raises", False, lambda ctx: [sys.executable, "-c", "pass"],
                lambda ctx: 1 / 0),
        gs.Step("after", "still runs", False, lambda ctx: [sys.executable, "-c", "print('fine')"],
                lambda ctx: ("fine", "", {"ok": True})),
    )
    return steps, child_pid


def test_a_step_over_its_time_box_is_stopped_with_its_children_and_the_session_goes_on(tmp_path):
    steps, child_pid = _toy_steps(tmp_path)
    ctx = gs.Context(out=tmp_path / "out", mode_name="rehearsal")
    start = time.monotonic()
    session = gs.run_session(ctx, steps=steps, timebox={"slow": 3, "broken": 30, "badsummary": 30, "after": 30})
    assert time.monotonic() - start < 60
    by = {s["name"]: s for s in session["steps"]}
    assert by["slow"]["status"] == "timed out" and "time box of 3 s" in by["slow"]["reason"]
    assert 3 <= by["slow"]["seconds"] < 30
    # what the step started went with it (its process group)
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the timed-out step's child {pid} is still running")
    assert by["broken"]["status"] == "failed" and by["broken"]["reason"] == "exited 3: bad thing happened"
    assert by["badsummary"]["status"] == "ok" and by["badsummary"]["summary"].startswith("summary failed: ZeroDivisionError")
    assert by["after"]["status"] == "ok" and by["after"]["summary"] == "fine"
    assert session["complete"] and _session(ctx.out)["complete"]
    md = (ctx.out / "summary.md").read_text()
    assert "| slow " in md and "timed out" in md and "exited 3: bad thing happened" in md
    assert "sleeping" in (ctx.out / "slow.log").read_text()


# ------------------------------------------------------------------ parsing pytest's output
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="5">
<testcase classname="tests.ops.test_a" name="test_ok[fp32]" time="0.1"/>
<testcase classname="tests.ops.test_a" name="test_bad[bf16]" time="0.1">
  <failure message="AssertionError: Tensor-likes are not close!&#10;Mismatched elements: 3">trace</failure></testcase>
<testcase classname="tests.ops.test_a" name="test_err" time="0.1"><error message="fixture boom">e</error></testcase>
<testcase classname="tests.ops.test_b" name="test_s1" time="0"><skipped type="pytest.skip" message="no CUDA device">s</skipped></testcase>
<testcase classname="tests.ops.test_b" name="test_s2" time="0"><skipped type="pytest.skip" message="no CUDA device">s</skipped></testcase>
</testsuite></testsuites>"""


def test_parse_junit_counts_failures_and_skip_reasons(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text(JUNIT)
    d = gs.parse_junit(p)
    assert d["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 2}
    assert d["failures"][0] == {"test": "tests.ops.test_a::test_bad[bf16]", "kind": "failure",
                                "message": "AssertionError: Tensor-likes are not close!"}
    assert d["failures"][1]["kind"] == "error"
    assert d["skip_reasons"] == {"no CUDA device": 2}


def test_parity_counts_come_from_the_log_when_pytest_was_stopped(tmp_path):
    (tmp_path / "parity.log").write_text(
        "[gw0] [  1%] PASSED tests/ops/test_a.py::test_x[fp32] \n"
        "[gw1] [  2%] FAILED tests/ops/test_a.py::test_y[bf16] \n"
        "tests/ops/test_b.py::test_z PASSED                          [ 10%]\n"
        "tests/ops/test_b.py::test_w SKIPPED (no CUDA device)        [ 20%]\n"
        "some other line PASSED\n")
    line, md, data = gs.summarize_parity(gs.Context(out=tmp_path, mode_name="full"))
    assert data["counts"] == {"passed": 2, "failed": 1, "error": 0, "skipped": 1}
    assert "counted from parity.log" in line
    assert "tests/ops/test_a.py::test_y[bf16]" in md


# ---------------------------------------------------------------------------- the install
def _fake_nvidia_smi(tmp_path: pathlib.Path, prints: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    f = bin_dir / "nvidia-smi"
    f.write_text(f"#!/bin/sh\nprintf '{prints}'\n")
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_install_builds_for_the_gpus_arch_alone(tmp_path):
    r = _sh("--dry-run", "--out", str(tmp_path / "o"), env=_fake_nvidia_smi(tmp_path, "9.0\\n9.0\\n"))
    assert r.returncode == 0, r.stderr
    assert "TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=" in r.stderr
    # torch is importable here: build against it, fetch nothing (a GPU image has no index)
    assert "pip install --no-deps --no-build-isolation -e ." in r.stderr
    assert "-m bench.gpu_session --out" in r.stderr
    assert not (tmp_path / "o" / "install.json").exists()  # a dry run writes nothing


def test_mixed_gpus_build_every_arch_and_no_gpu_skips_the_install(tmp_path):
    r = _sh("--dry-run", "--out", str(tmp_path / "o"), env=_fake_nvidia_smi(tmp_path, "9.0\\n8.0\\n"))
    assert "TORCH_CUDA_ARCH_LIST=8.0;9.0 " in r.stderr
    empty = tmp_path / "e"
    empty.mkdir()
    r = _sh("--dry-run", "--out", str(tmp_path / "o2"), env=_fake_nvidia_smi(empty, ""))
    assert r.returncode == 0 and "install skipped: no GPU found" in r.stderr


def test_bad_arguments_are_refused():
    r = _sh("--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
    r = subprocess.run([sys.executable, "-m", "bench.gpu_session", "--only", "nope"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and "unknown step(s) ['nope']" in r.stderr


# ------------------------------------------------------------------- the session, rehearsed
@no_gpu_here
def test_without_a_gpu_every_gpu_step_is_skipped_with_the_reason(tmp_path):
    out = tmp_path / "session"
    r = _sh("--no-install", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    session = _session(out)
    assert session["complete"] and session["mode"] == "full"
    assert [s["name"] for s in session["steps"]] == [s.name for s in gs.STEPS]
    for step, result in zip(gs.STEPS, session["steps"]):
        if step.needs_gpu:
            assert result["status"] == "skipped" and result["reason"].startswith("no CUDA device"), result
        else:
            assert result["status"] == "ok", result
    info = json.loads((out / "info.json").read_text())
    assert "roofs" not in info and info["roofs_skipped"].startswith("no CUDA device")
    assert info["report"]["ops"], "python -m ascan_kernels --json gave no ops"
    md = (out / "summary.md").read_text()
    assert md.count("| skipped ") == sum(s.needs_gpu for s in gs.STEPS)
    assert "ascan_kernels._C" in md  # the info step's report is in the summary


def test_the_cpu_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "rehearsal"
    # compile: torch.compile of a whole model costs a minute here; the slow test below runs it
    steps = [s.name for s in gs.STEPS if s.name != "compile"]
    r = subprocess.run([sys.executable, "-m", "bench.gpu_session", "--rehearse-on-cpu", "--out", str(out),
                        "--only", ",".join(steps)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    session = _session(out)
    assert r.returncode == 0, json.dumps([(s["name"], s["status"], s.get("reason")) for s in session["steps"]])
    assert [s["name"] for s in session["steps"]] == steps
    assert all(s["status"] == "ok" for s in session["steps"])
    assert "Rehearsal on the CPU" in (out / "summary.md").read_text()

    ops = json.loads((out / "ops.json").read_text())
    assert ops["complete"] and {m["model"] for m in ops["models"]} == {"ascan_t", "ascan_unet_c2i_s"}
    for call in ops["calls"]:
        assert "eager" in call["ms"], call  # the reference always runs
        assert call["default"] in call["ms"] and call["best"] in call["ms"]
        assert set(call["ms"]) | set(call["not_run"]) | set(call["errors"]) >= {"eager", "compile"}
    assert sum("compile" in c["ms"] for c in ops["calls"]) == gs.MODES["rehearsal"].ops_compile
    # every impl the registry has for an op is accounted for: timed, or not run with a reason
    for call in ops["calls"]:
        assert {i.name for i in K.get_op(call["op"]).impls} <= set(call["ms"]) | set(call["not_run"])

    roof = json.loads((out / "roofline.json").read_text())
    # the roofline (traced on the meta device) finds every call the ops step timed on real tensors
    assert len(roof["rows"]) == len(ops["calls"])
    assert all(r.get("best_us") for r in roof["rows"])
    assert all(r["floor_here_us"] > 0 and r["floor_h100_us"] > 0 for r in roof["rows"])

    assert json.loads((out / "classifiers" / "bench.json").read_text())["complete"]
    assert (out / "classifiers" / "table.md").exists()
    peers = json.loads((out / "peers" / "bench.json").read_text())
    assert {r["model"] for r in peers["rows"]} == {"ascan_t", "resnet18"}
    unets = json.loads((out / "unets.json").read_text())
    assert unets["complete"] and unets["rows"][0]["model"] == "ascan_unet_c2i_s"
    parity = session["steps"][1]["data"]
    assert parity["counts"]["passed"] > 0 and parity["counts"]["failed"] == 0
    assert session["autotune"]["decisions"] > 0


@pytest.mark.slow
def test_the_whole_cpu_rehearsal_through_the_shell_script(tmp_path):
    out = tmp_path / "all"
    r = _sh("--no-install", "--rehearse-on-cpu", "--out", str(out), timeout=1200)
    session = _session(out)
    assert r.returncode == 0, [(s["name"], s["status"], s.get("reason")) for s in session["steps"]]
    assert [s["name"] for s in session["steps"]] == [s.name for s in gs.STEPS]
    assert json.loads((out / "compile" / "bench.json").read_text())["rows"][0]["compiled"] is not None


def test_the_readme_documents_every_step_and_the_boxes():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a GPU", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert listed == [s.name for s in gs.STEPS]
    full, quick = (sum(gs.MODES[m].timebox.values()) for m in ("full", "quick"))
    assert f"add up to {full:.0f} s; {quick:.0f} s" in section
