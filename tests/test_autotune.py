"""Autotuned dispatch: the measured choice, the cache file (round trip, corruption, several
writers at once, environment keys), torch.compile, trace, and the CLI."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import ascan_kernels as K
from ascan_kernels import autotuning as A
from ascan_kernels import registry as R

SLOW_S = 0.004


def _sleep(s=SLOW_S):
    if not torch.compiler.is_compiling():  # Dynamo cannot trace time.sleep
        time.sleep(s)


@pytest.fixture
def toy():
    """A private op whose highest-priority impl is slow: the built-in rule picks it, timing
    must not (fast < eager < slow). The impls add different constants so that a compiled graph shows which ran."""
    calls = []

    def ref(x):
        calls.append("eager")
        _sleep(SLOW_S / 2)
        return x + 1

    def slow(x):
        calls.append("slow")
        _sleep()
        return x + 2

    def fast(x):
        calls.append("fast")
        return x + 3

    def boom(x):
        raise RuntimeError("kernel launch failed")

    op = R.register_op("toy_tuned", ref)
    op.register(R.Impl("slow", slow, priority=30))
    op.register(R.Impl("fast", fast, priority=20, prefer=lambda x: "measured slower on the author's machine"))
    op.register(R.Impl("boom", boom, priority=10))
    yield op, calls
    del R._OPS["toy_tuned"]
    R._invalidate_cache()
    A.clear_memory()


@pytest.fixture
def cache(tmp_path):
    A.clear_memory()
    yield tmp_path / "autotune.json"
    A.clear_memory()


def _decisions(path):
    doc = json.loads(path.read_text())
    return {(op, sig): d["impl"] for sec in doc["environments"].values()
            for op, entries in sec["ops"].items() for sig, d in entries.items()}


def test_off_keeps_the_builtin_rules(toy, cache):
    op, calls = toy
    with K.trace() as t:
        assert op(torch.zeros(2)).tolist() == [2.0, 2.0]
    assert t.records[0].impl == "slow" and t.records[0].tuned is None
    assert not cache.exists()


def test_times_every_eligible_impl_and_keeps_the_fastest(toy, cache):
    op, calls = toy
    with K.autotune(cache), K.trace() as t:
        y = op(torch.zeros(2))
        calls.clear()
        op(torch.zeros(2))  # decided: one call, no timing
    assert y.tolist() == [3.0, 3.0] and calls == ["fast"]
    rec = t.records[0]
    assert rec.impl == "fast" and rec.tuned.startswith("autotuned (timed): fast ")
    # the prefer rule is what timing replaces; the failing impl is reported, never chosen
    assert "slow" in rec.tuned and "eager" in rec.tuned and "boom failed (RuntimeError: kernel launch failed)" in rec.tuned
    assert ("slow", "slower when autotuned") in rec.skipped
    assert "autotuned (timed): fast" in t.table()
    assert list(_decisions(cache).values()) == ["fast"]
    # outside the block the built-in rule is back
    assert op(torch.zeros(2)).tolist() == [2.0, 2.0]


def test_cache_round_trip_without_timing(toy, cache, monkeypatch):
    op, _ = toy
    with K.autotune(cache):
        op(torch.zeros(4))
    A.clear_memory()  # a new process: only the file is left
    monkeypatch.setattr(A, "time_impls", lambda *a, **k: pytest.fail("timed although the cache had the answer"))
    with K.autotune(cache), K.trace() as t:
        assert op(torch.zeros(4)).tolist() == [3.0] * 4
    assert t.records[0].tuned.startswith("autotuned (cache): fast")
    # another signature is a miss, and retune=True times again where the cache has the answer
    monkeypatch.undo()
    with K.autotune(cache, retune=True), K.trace() as t:
        op(torch.zeros(4))
        op(torch.zeros(5, dtype=torch.float64))
    assert [r.tuned.split(":")[0] for r in t.records] == ["autotuned (timed)"] * 2
    assert len(_decisions(cache)) == 2


def test_decision_for_an_impl_that_can_no_longer_run_is_retimed(toy, cache):
    op, _ = toy
    with K.autotune(cache):
        op(torch.zeros(3))
    with K.use(toy_tuned="!fast"), K.autotune(cache), K.trace() as t:
        assert op(torch.zeros(3)).tolist() == [1.0] * 3  # eager beats the sleeping 'slow'
    assert t.records[0].impl == "eager" and "(timed)" in t.records[0].tuned


def test_forced_and_grad_calls_are_not_tuned(toy, cache):
    op, _ = toy
    with K.autotune(cache), K.trace() as t:
        with K.use(toy_tuned="slow"):
            op(torch.zeros(2))
        op(torch.zeros(2, requires_grad=True))  # only eager has a backward here
    assert [r.impl for r in t.records] == ["slow", "eager"]
    assert all(r.tuned is None for r in t.records) and not cache.exists()


def test_corrupt_cache_warns_and_is_replaced(toy, cache):
    op, _ = toy
    for junk in ("{not json", json.dumps({"format": 1, "environments": {"k": {"ops": {"toy": {"s": 3}}}}}),
                 json.dumps([1, 2])):
        A.clear_memory()
        cache.write_text(junk)
        with pytest.warns(RuntimeWarning, match=f"ignoring the corrupt cache {cache}"), K.autotune(cache):
            assert op(torch.zeros(2)).tolist() == [3.0, 3.0]
        assert list(_decisions(cache).values()) == ["fast"]  # valid again
    assert not list(cache.parent.glob(".tmp-*"))


def test_unwritable_cache_keeps_the_decision_in_memory(toy, tmp_path):
    op, _ = toy
    A.clear_memory()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="cannot write the cache"), K.autotune(blocker / "autotune.json"):
        assert op(torch.zeros(2)).tolist() == [3.0, 3.0]
        assert op(torch.zeros(2)).tolist() == [3.0, 3.0]
    A.clear_memory()


def test_environment_key_has_device_isa_threads_and_versions(toy, cache):
    op, _ = toy
    with K.autotune(cache):
        op(torch.zeros(2))
    env = next(iter(json.loads(cache.read_text())["environments"].values()))["env"]
    assert env["isa"] == torch.backends.cpu.get_cpu_capability() and env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__ and env["ascan_kernels"] == K.__version__ and env["device"]
    threads = torch.get_num_threads()
    try:  # another thread count is another environment: the decision is timed again
        torch.set_num_threads(1 if threads > 1 else 2)
        with K.autotune(cache), K.trace() as t:
            op(torch.zeros(2))
        assert "(timed)" in t.records[0].tuned
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())["environments"]) == 2


def test_compile_uses_the_cached_decision_and_never_times(toy, cache, monkeypatch):
    op, _ = toy
    x = torch.zeros(3)
    with K.autotune(cache):
        op(x)
    A.clear_memory()
    monkeypatch.setattr(A, "time_impls", lambda *a, **k: pytest.fail("timed while torch.compile traced"))
    torch._dynamo.reset()
    with K.autotune(cache):
        got = torch.compile(lambda t: op(t) * 1, fullgraph=True, backend="eager")(x)
    assert got.tolist() == [3.0] * 3  # the tuned impl is in the graph
    # a miss while tracing: the built-in rule, still no timing
    torch._dynamo.reset()
    with K.autotune(cache):
        got = torch.compile(lambda t: op(t) * 1, fullgraph=True, backend="eager")(torch.zeros(7))
    assert got.tolist() == [2.0] * 7
    torch._dynamo.reset()


def test_a_block_per_forward_keeps_the_dispatch_memo(toy, cache, monkeypatch):
    """``with autotune(): model(x)`` around every call must not redo selection each time."""
    op, _ = toy
    asked = []
    real = A.choose
    monkeypatch.setattr(A, "choose", lambda *a, **k: asked.append(1) or real(*a, **k))
    for _ in range(3):
        with K.autotune(cache):
            assert op(torch.zeros(2)).tolist() == [3.0, 3.0]
    assert len(asked) == 1
    with K.autotune(cache, retune=True):  # another kind of block: asked again, and timed again
        op(torch.zeros(2))
    assert len(asked) == 2


def test_triton_interpreter_is_never_timed(cache, monkeypatch):
    """Under TRITON_INTERPRET=1 the Triton impls accept CPU tensors; their speed there means
    nothing, so they are not candidates (and a timed interpreter would take minutes)."""
    from ascan_kernels.backends import triton as runtime

    if not runtime.interpreting() or "triton" not in K.available()["add_layer_norm"] \
            or K.available()["add_layer_norm"]["triton"] != "ok":
        pytest.skip("needs TRITON_INTERPRET=1 with triton installed (tests/conftest.py sets it without a GPU)")
    monkeypatch.setattr(A, "time_impls", _spy := _TimeSpy(A.time_impls))
    x = torch.randn(2, 64)
    with torch.no_grad(), K.autotune(cache), K.trace() as t:
        K.add_layer_norm(x, x, torch.ones(64), torch.zeros(64))
    assert "triton" not in _spy.timed[0]
    assert "not timed on cpu: CPU tensors run under Triton's interpreter" in dict(t.records[0].skipped)["triton"]


class _TimeSpy:
    def __init__(self, real):
        self.real, self.timed = real, []

    def __call__(self, fns, *a, **k):
        self.timed.append(sorted(fns))
        return self.real(fns, *a, **k)


def test_real_model_ops_tuned_within_tolerance(cache):
    """Whatever timing picks computes what the eager model computes."""
    import ascan

    torch.manual_seed(0)
    fused = ascan.build_model("ascan_t", fused=True, num_classes=10).eval()
    plain = ascan.build_model("ascan_t", fused=False, num_classes=10).eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), K.autotune(cache), K.trace() as t:
        y = fused(x)
    assert sum(1 for r in t.records if r.tuned) >= 10
    torch.testing.assert_close(y, plain(x).detach(), rtol=1e-4, atol=1e-4)


_WRITER = textwrap.dedent("""
    import sys, torch, ascan_kernels as K
    worker, path = int(sys.argv[1]), sys.argv[2]
    with torch.no_grad(), K.autotune(path):
        for j in range(4):
            d = 8 * (4 * worker + j + 1)
            K.add_layer_norm(torch.randn(2, d), torch.randn(2, d), torch.ones(d), torch.zeros(d))
""")


def test_concurrent_writers_keep_every_decision(cache):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(w), str(cache)], stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    got = _decisions(cache)
    assert len(got) == 16 and {op for op, _ in got} == {"add_layer_norm"}
    assert not list(cache.parent.glob(".tmp-*"))


def test_env_var_turns_it_on(cache):
    code = ("import torch, ascan_kernels as K\n"
            "with K.trace() as t:\n"
            "    K.add_layer_norm(torch.randn(2, 64), torch.randn(2, 64), torch.ones(64), torch.zeros(64))\n"
            "print(t.records[0].tuned)")
    env = {**os.environ, "ASCAN_AUTOTUNE": "1", "ASCAN_AUTOTUNE_CACHE": str(cache)}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("autotuned (timed)"), p.stderr
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.stdout.startswith("autotuned (cache)"), p.stderr


def test_cli_fills_the_cache_and_the_report_shows_it(cache):
    env = {**os.environ, "ASCAN_AUTOTUNE_CACHE": str(cache)}
    p = subprocess.run([sys.executable, "-m", "ascan_kernels", "autotune", "--model", "ascan_t", "--batch", "1",
                        "--size", "64"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "autotuned (timed)" in p.stdout and f"cache {cache}" in p.stdout
    n = len(_decisions(cache))
    assert n >= 10
    p = subprocess.run([sys.executable, "-m", "ascan_kernels", "--json"], env=env, capture_output=True, text=True)
    rep = json.loads(p.stdout)["autotune"]
    assert rep["path"] == str(cache) and rep["environments"][0]["this_cpu"]
    assert len(rep["environments"][0]["decisions"]) == n
    p = subprocess.run([sys.executable, "-m", "ascan_kernels"], env=env, capture_output=True, text=True)
    assert f"[this machine]" in p.stdout and f"{n} decisions" in p.stdout
    p = subprocess.run([sys.executable, "-m", "ascan_kernels", "autotune", "--model", "nope"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown model 'nope'" in p.stderr
