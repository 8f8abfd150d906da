"""Registry behaviour: selection order, force/forbid, grad rules, trace, logging, env vars."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import ascan_kernels as K
from ascan_kernels import registry as R


@pytest.fixture
def toy_op():
    """A private op with three impls, removed again after the test."""
    calls = []

    def ref(x, flag=False):
        calls.append("eager")
        return x + 1

    def fast(x, flag=False):
        calls.append("fast")
        return x + 1

    def mid(x, flag=False):
        calls.append("mid")
        return x + 1

    op = R.register_op("toy_op", ref)
    op.register(R.Impl("fast", fast, priority=20, autograd=False,
                       supports=lambda x, flag=False: "flag set" if flag else None))
    op.register(R.Impl("mid", mid, priority=10, autograd=True))
    op.register(R.Impl("broken", mid, priority=30, available=lambda: "not installed here"))
    yield op, calls
    del R._OPS["toy_op"]
    R._invalidate_cache()


def test_available_lists_every_impl_with_ok_or_reason(toy_op):
    assert K.available("toy_op") == {"broken": "not installed here", "fast": "ok", "mid": "ok", "eager": "ok"}
    every = K.available()
    assert set(every) >= {"conv_bn_gelu", "conv_bn_add", "conv_bn", "attention", "layer_norm",
                          "add_layer_norm", "linear_gelu"}
    for op, impls in every.items():
        assert list(impls)[-1] == "eager" and impls["eager"] == "ok", op


def test_dispatch_walks_priorities_and_records_reasons(toy_op):
    op, calls = toy_op
    x = torch.zeros(3)
    with K.trace() as t:
        op(x)
        op(x, flag=True)
    assert calls == ["fast", "mid"]
    first, second = t.records
    assert first.impl == "fast" and first.skipped == (("broken", "not installed here"),)
    assert second.impl == "mid" and ("fast", "flag set") in second.skipped
    table = t.table()
    assert "toy_op" in table and "flag set" in table and "not installed here" in table
    assert "fast" in t.table(per_call=True).splitlines()[2]


def test_prefer_steers_auto_selection_but_not_forcing(toy_op):
    op, calls = toy_op
    op.register(R.Impl("picky", lambda x, flag=False: calls.append("picky") or x, priority=25,
                       prefer=lambda x, flag=False: "measured slower" if x.numel() < 10 else None))
    with K.trace() as t:
        op(torch.zeros(3))
        op(torch.zeros(20))
        with K.use(toy_op="picky"):
            op(torch.zeros(3))
    assert calls == ["fast", "picky", "picky"]
    assert ("picky", "not preferred: measured slower") in t.records[0].skipped


def test_grad_skips_impls_without_backward(toy_op):
    op, calls = toy_op
    x = torch.zeros(3, requires_grad=True)
    with K.trace() as t:
        op(x)
    assert calls == ["mid"]
    assert ("fast", "inputs require grad and this impl has no backward") in t.records[0].skipped
    with torch.no_grad():
        op(x)
    assert calls[-1] == "fast"


def test_use_forces_and_forbids_and_restores(toy_op):
    op, calls = toy_op
    x = torch.zeros(3)
    with K.use(toy_op="eager"):
        op(x)
    with K.use(toy_op="!fast"):
        op(x)
    with K.use(toy_op=["!fast", "!mid"]):
        op(x)
    op(x)
    assert calls == ["eager", "mid", "eager", "fast"]


def test_use_all_forces_eager_everywhere(toy_op):
    op, calls = toy_op
    with K.use("eager"):
        op(torch.zeros(3))
    assert calls == ["eager"]


def test_forced_impl_that_cannot_run_raises(toy_op):
    op, _ = toy_op
    with K.use(toy_op="fast"):
        with pytest.raises(K.KernelUnavailableError, match=r"toy_op: impl 'fast' was forced .*flag set"):
            op(torch.zeros(3), flag=True)
    with K.use(toy_op="broken"):
        with pytest.raises(K.KernelUnavailableError, match="not installed here"):
            op(torch.zeros(3))


def test_bad_use_arguments(toy_op):
    with pytest.raises(K.KernelUnavailableError, match=r"toy_op: no impl named 'nope'.*impls"):
        with K.use(toy_op="nope"):
            pass
    with pytest.raises(KeyError, match="unknown op 'no_such_op'"):
        with K.use(no_such_op="eager"):
            pass
    with pytest.raises(ValueError, match="eager reference cannot be forbidden"):
        with K.use(toy_op="!eager"):
            pass
    with pytest.raises(ValueError, match="cannot force two impls"):
        with K.use(toy_op=["fast", "mid"]):
            pass


def test_parse_env():
    assert R.parse_env("attention=eager, conv_bn_gelu=!cpu|!triton") == {
        "attention": ("eager", frozenset()),
        "conv_bn_gelu": (None, frozenset({"cpu", "triton"})),
    }
    with pytest.raises(ValueError, match="expected op=impl"):
        R.parse_env("attention")


def test_fallback_logging_once_per_reason(toy_op, caplog):
    op, _ = toy_op
    K.set_fallback_logging(True)
    try:
        with caplog.at_level(logging.WARNING, logger="ascan_kernels"):
            for _ in range(3):
                op(torch.zeros(3), flag=True)
    finally:
        K.set_fallback_logging(False)
    msgs = [r.getMessage() for r in caplog.records if "toy_op" in r.getMessage()]
    assert len(msgs) == 2  # one per (impl, reason): broken and fast
    assert any("'fast': flag set" in m for m in msgs)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


CALL_CONV = """
import torch, ascan_kernels as K
x = torch.randn(1, 4, 8, 8); w = torch.randn(6, 4, 3, 3); c = torch.ones(6)
with K.trace() as t, torch.no_grad():
    K.conv_bn_gelu(x, w, None, c, c * 0, c * 0, c, padding=1)
print("IMPL", t.records[0].impl)
"""


def test_env_var_forces_impl():
    out = _run(CALL_CONV, ASCAN_KERNELS="conv_bn_gelu=eager")
    assert out.returncode == 0, out.stderr
    assert "IMPL eager" in out.stdout


def test_env_var_with_unknown_op_fails_clearly():
    out = _run("import ascan_kernels", ASCAN_KERNELS="not_an_op=eager")
    assert out.returncode != 0
    assert "ASCAN_KERNELS names unknown op 'not_an_op'" in out.stderr


def test_env_var_logging():
    out = _run(CALL_CONV, ASCAN_KERNELS="conv_bn_gelu=!cpu", ASCAN_KERNELS_LOG="1")
    assert out.returncode == 0, out.stderr
    assert "conv_bn_gelu ran 'eager' instead of 'cpu': forbidden" in out.stderr


def test_selection_cache_respects_overrides():
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(6, 4, 3, 3)
    c = torch.ones(6)
    with torch.no_grad(), K.trace() as t:
        K.conv_bn_gelu(x, w, None, c, c * 0, c * 0, c, padding=1)
        with K.use(conv_bn_gelu="eager"):
            K.conv_bn_gelu(x, w, None, c, c * 0, c * 0, c, padding=1)
        K.conv_bn_gelu(x, w, None, c, c * 0, c * 0, c, padding=1)
    if K.available("conv_bn_gelu")["cpu"] == "ok":
        assert t.impls() == ["cpu", "eager", "cpu"]
    else:
        assert t.impls() == ["eager"] * 3


def test_trace_keep_inputs_keeps_one_copy_per_distinct_call():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    y = torch.randn(3, 16)
    w, b = torch.ones(16), torch.zeros(16)
    with K.trace() as plain:
        K.layer_norm(y, w, b)
    assert plain.inputs == {}  # off by default: a trace holds no tensors
    with K.trace(keep_inputs=True) as t:
        K.group_norm_silu(x, 4, None, None)
        K.group_norm_silu(x, 4, None, None)
        K.layer_norm(y, w, b)
    assert len(t.records) == 3 and len(t.inputs) == 2
    key = (t.records[0].op, t.records[0].args)
    (kx, *_), kwargs = t.inputs[key]
    assert torch.equal(kx, x) and kx.stride() == x.stride() and kx.data_ptr() != x.data_ptr()
    x.add_(1.0)  # the caller writing into its tensor later does not change the copy
    assert not torch.equal(kx, x)
    # replaying the copy gives what the call gave
    args, kwargs = t.inputs[(t.records[2].op, t.records[2].args)]
    torch.testing.assert_close(K.get_op("layer_norm")(*args, **kwargs), K.layer_norm(y, w, b))
