"""Fuzz every ascan_kernels op x impl x dtype against a float64 reference written apart
from the package (tests/fuzz_cases.py: the cases, the reference and the checks).

Each case runs in a worker subprocess (``python tests/fuzz_cases.py --worker``, one per
session, restarted after a death), so a crash (SIGSEGV, abort) in a kernel fails that
case - "worker died with signal N while running <case>" - instead of killing pytest.

* default run: a seeded slice of the grid (``fuzz_cases.default_cases``, ~85 cases);
* ``-m slow``: the full grid (``fuzz_cases.all_cases``).

``ASCAN_FUZZ_SEED`` changes the seed; ``ASCAN_FUZZ_RESULTS=path`` appends every result
(JSON lines) to ``path``. A forced impl that raises KernelUnavailableError is skipped
with its reason ("declined"); the ``auto`` impl (no forcing) never may.
Reproduce one case in-process: ``python tests/fuzz_cases.py --run <case id>``.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

import fuzz_cases as FC  # tests/ is on sys.path: pytest puts a test file's folder (no __init__.py) there


pytestmark = pytest.mark.fuzz

CASE_TIMEOUT_S = float(os.environ.get("ASCAN_FUZZ_CASE_TIMEOUT", "300"))
START_TIMEOUT_S = 180.0
DEFAULT_IDS = FC.default_cases()
FULL_IDS = FC.all_cases()


class WorkerDied(Exception):
    pass


class Worker:
    """One ``fuzz_cases.py --worker`` subprocess; restarted after it dies or hangs."""

    def __init__(self):
        self.proc = None
        self.lines = None
        self.err = None

    def _start(self):
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
        self.err = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen([sys.executable, FC.__file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, env=env, text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        first = self._next(START_TIMEOUT_S, "starting")
        if not first.get("ready"):
            raise WorkerDied(f"worker sent {first!r} instead of its ready line")

    @staticmethod
    def _read(stream, q):
        for line in stream:
            q.put(line)
        q.put(None)  # EOF: the worker is gone

    def stderr_tail(self, n=2500) -> str:
        if self.err is None:
            return ""
        self.err.seek(0)
        data = self.err.read().decode(errors="replace")
        # keep the end; drop the per-case progress lines
        kept = [ln for ln in data.splitlines() if not ln.startswith("[fuzz worker] running")]
        return "\n".join(kept)[-n:]

    def _next(self, timeout, what) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self._kill()
            raise WorkerDied(f"worker timed out after {timeout:.0f}s while {what}\n{self.stderr_tail()}")
        if line is None:
            rc = self.proc.wait()
            why = f"died with signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with code {rc}"
            tail = self.stderr_tail()
            self.proc = None
            raise WorkerDied(f"worker {why} while {what}\n--- worker stderr (tail) ---\n{tail}")
        return json.loads(line)

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # the worker this fixture started, by its own handle
            self.proc.wait()
        self.proc = None

    def run(self, cid: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(cid + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # reported by _next as the worker's death
        res = self._next(CASE_TIMEOUT_S, f"running {cid}")
        if res.get("id") != cid:
            self._kill()
            raise WorkerDied(f"worker answered {res.get('id')!r} for {cid!r}")
        return res

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self._kill()
        self.proc = None


@pytest.fixture(scope="session")
def fuzz_worker():
    w = Worker()
    yield w
    w.close()


def _record(res: dict) -> None:
    path = os.environ.get("ASCAN_FUZZ_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(res) + "\n")


def _check(worker: Worker, cid: str) -> None:
    try:
        res = worker.run(cid)
    except WorkerDied as e:
        _record({"id": cid, "status": "fail", "msg": str(e).splitlines()[0]})
        pytest.fail(str(e), pytrace=False)
    _record(res)
    if res["status"] == "declined":
        pytest.skip(f"declined: {res['msg']}")
    if res["status"] != "pass":
        ran = f" (ran {res['impl_ran']})" if res.get("impl_ran") else ""
        pytest.fail(f"{cid}{ran}: {res['msg']}\n  spec: {FC.describe(cid)}\n"
                    f"  repro: python tests/fuzz_cases.py --run {cid}", pytrace=False)


@pytest.mark.parametrize("cid", DEFAULT_IDS)
def test_fuzz(fuzz_worker, cid):
    _check(fuzz_worker, cid)


@pytest.mark.slow
@pytest.mark.parametrize("cid", FULL_IDS)
def test_fuzz_full(fuzz_worker, cid):
    _check(fuzz_worker, cid)


def test_case_list_is_deterministic_and_covers_the_registry():
    """The grid names every impl the registry has for every op, and the same seed gives
    the same cases and inputs."""
    import ascan_kernels as K

    assert set(FC.IMPLS) == set(K.list_ops())
    for op, impls in FC.IMPLS.items():
        assert set(impls) == {i.name for i in K.get_op(op).impls}, op
    assert FC.all_cases() == FULL_IDS and FC.default_cases() == DEFAULT_IDS
    assert set(DEFAULT_IDS) <= set(FULL_IDS) and len(set(FULL_IDS)) == len(FULL_IDS)
    assert FC.make_spec("conv_bn", "geom", 1) == FC.make_spec("conv_bn", "geom", 1)


def test_worker_reports_a_crash_and_restarts(fuzz_worker):
    """A worker that dies mid-case fails that case with the signal, and the next case
    gets a fresh worker."""
    w = Worker()
    with pytest.raises(WorkerDied, match=r"signal 11 \(SIGSEGV\) while running " + FC.SELFTEST_SEGV):
        w.run(FC.SELFTEST_SEGV)
    assert w.run("conv_bn-eager-f32-basic-0")["status"] == "pass"
    w.close()
