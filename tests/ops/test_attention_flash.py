"""attention: the ``flash_attn`` (flash-attn 2) and ``flash_attn4`` (flash-attn-4) impls.

* the layout/argument adapters on CPU, against ``attention_reference``, through stand-in
  kernels written here from flash-attn's documented contract (float64 math on
  (B, L, H, D) tensors; FA4 also returns lse (B, H, Lq)), with checks that no input or
  output is copied where a view does;
* the ``ascan_fa4::fwd``/``bwd`` custom ops on CPU over those stand-ins: values,
  gradients, ``torch.compile(fullgraph=True)``, ``opcheck``, and the fake impls under
  FakeTensorMode without any kernel;
* availability: every reason the probes give (package missing, namespace only, wrong
  version, no CUDA, ImportError / OSError "undefined symbol" / missing shared library,
  missing entry points), and with the real flash-attn-4 when it was installed into
  ``$ASCAN_FA4_SITE`` (default /tmp/fa4site: ``pip install --target`` of flash-attn-4
  and its dependencies); skipped when that folder is absent;
* what the registry says for CPU tensors, masks, float32, dropout, head dims;
* on a GPU with the packages installed: parity with the reference (fp16/bf16, Lq != Lk,
  head dims 32/64/128), gradients, and ``torch.compile(fullgraph=True)`` with FA4.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import ascan_kernels as K
from ascan_kernels.ops.attention import attention_reference
from ascan_kernels.ops.attention import flash_attn as fa
from ascan_kernels.registry import Op
from ascan_kernels.testing import assert_close, assert_error_within

ROOT = pathlib.Path(__file__).resolve().parents[2]
FA4_SITE = pathlib.Path(os.environ.get("ASCAN_FA4_SITE", "/tmp/fa4site"))


# ------------------------------------------------------------------ stand-in kernels
def flash_math(q, k, v, softmax_scale=None):
    """flash-attn's documented math on its (B, L, H, D) layout, in float64: scores
    ``q k^T * softmax_scale`` (default 1/sqrt(D)), no mask, not causal. Returns (out
    (B, Lq, H, Dv) in q's dtype, contiguous; lse (B, H, Lq) float32, natural log)."""
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(s - lse[..., None]), v.double())
    return out.to(q.dtype).contiguous(), lse.float()


class StandIn:
    """Records what the adapter passed and checks flash-attn's input contract."""

    def __init__(self):
        self.calls = []

    def _check(self, q, k, v):
        B, Lq, H, D = q.shape
        assert k.shape[:1] == (B,) and k.shape[2:] == (H, D) and v.shape[:3] == k.shape[:3]
        assert all(t.stride(-1) == 1 for t in (q, k, v)), "flash-attn reads unit-stride head dims"


class FA2StandIn(StandIn):
    """``flash_attn.flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False)``
    -> out (B, Lq, H, D)."""

    def __call__(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        self._check(q, k, v)
        out = flash_math(q, k, v, softmax_scale)[0]
        self.calls.append(dict(q=q, k=k, v=v, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                               out=out))
        return out


class FA4StandIn(StandIn):
    """``flash_attn.cute.flash_attn_func(q, k, v, softmax_scale=None, causal=False,
    return_lse=False)`` -> (out (B, Lq, H, Dv), lse (B, H, Lq) float32 or None)."""

    def __call__(self, q, k, v, softmax_scale=None, causal=False, return_lse=False):
        self._check(q, k, v)
        out, lse = flash_math(q, k, v, softmax_scale)
        self.calls.append(dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal, return_lse=return_lse,
                               out=out))
        return out, (lse if return_lse else None)


def fa4_bwd_standin(q, k, v, out, dout, lse, softmax_scale=None, causal=False, *, dq, dk, dv):
    """``flash_attn.cute.interface._flash_attn_bwd``: writes dq, dk, dv and returns them.
    Textbook softmax backward in float64 (a custom op's body runs below autograd, so no
    autograd here): P = softmax(S), dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
    dQ = scale dS K, dK = scale dS^T Q."""
    assert not causal
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, dout))
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64) * scale
    assert_close(lse, torch.logsumexp(s, dim=-1).float())  # the forward's lse came back
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v64)
    delta = (do64 * o).sum(-1).transpose(1, 2)[..., None]  # (B, H, Lq, 1)
    ds = p * (torch.einsum("bqhd,bkhd->bhqk", do64, v64) - delta)
    dq.copy_(torch.einsum("bhqk,bkhd->bqhd", ds, k64) * scale)
    dk.copy_(torch.einsum("bhqk,bqhd->bkhd", ds, q64) * scale)
    dv.copy_(torch.einsum("bhqk,bqhd->bkhd", p, do64))
    return dq, dk, dv


@pytest.fixture
def fa4_standin(monkeypatch):
    """The ascan_fa4 custom ops run the stand-ins (on CPU tensors) instead of flash-attn-4."""
    fwd = FA4StandIn()
    monkeypatch.setitem(fa._PROBED, "fa4", fa.Backend(None, "stand-in", fwd=fwd, bwd=fa4_bwd_standin))
    return fwd


def bhld(B=2, H=3, Lq=5, Lk=7, D=16, Dv=None, dtype=torch.float64):
    return (torch.randn(B, H, Lq, D, dtype=dtype), torch.randn(B, H, Lk, D, dtype=dtype),
            torch.randn(B, H, Lk, Dv or D, dtype=dtype))


SHAPES = [(2, 3, 5, 7, 16), (1, 2, 9, 9, 32), (2, 1, 1, 13, 8)]  # Lq != Lk, self, one query


# ------------------------------------------------------------------ adapters on CPU
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [None, 0.3])
def test_fa2_adapter_matches_reference(shape, scale):
    B, H, Lq, Lk, D = shape
    q, k, v = bhld(B, H, Lq, Lk, D)
    kernel = FA2StandIn()
    got = fa.run_fa2(kernel, q, k, v, 0.0, scale)
    assert got.shape == (B, H, Lq, D) and got.dtype == q.dtype
    assert_close(got, attention_reference(q, k, v, scale=scale))
    call = kernel.calls[0]
    # our default scale is flash-attn's (1/sqrt(D)), always passed explicitly; never causal
    assert call["softmax_scale"] == pytest.approx(D ** -0.5 if scale is None else scale)
    assert call["causal"] is False and call["dropout_p"] == 0.0


def test_fa2_adapter_passes_dropout():
    kernel = FA2StandIn()
    fa.run_fa2(kernel, *bhld(), dropout_p=0.25)
    assert kernel.calls[0]["dropout_p"] == 0.25


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("Dv", [None, 24])
def test_fa4_adapter_matches_reference_and_returns_lse(shape, scale, Dv):
    B, H, Lq, Lk, D = shape
    q, k, v = bhld(B, H, Lq, Lk, D, Dv)
    kernel = FA4StandIn()
    out, lse = fa.run_fa4(lambda *a: fa.fa4_forward(kernel, *a), q, k, v, scale)
    assert out.shape == (B, H, Lq, Dv or D) and lse.shape == (B, H, Lq) and lse.dtype == torch.float32
    assert_close(out, attention_reference(q, k, v, scale=scale))
    s = torch.matmul(q, k.transpose(-2, -1)) * (D ** -0.5 if scale is None else scale)
    assert_close(lse, torch.logsumexp(s, dim=-1).float())
    call = kernel.calls[0]
    assert call["return_lse"] is True and call["causal"] is False
    assert call["softmax_scale"] == pytest.approx(D ** -0.5 if scale is None else scale)


def _packed_qkv(B=2, L=6, H=3, D=16):
    """q, k, v as the model makes them: (B, H, L, D) views of one (B, L, 3, H, D) projection."""
    qkv = torch.randn(B, L, 3, H, D, dtype=torch.float64)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


@pytest.mark.parametrize("make", ["contiguous", "packed_qkv"])
@pytest.mark.parametrize("which", ["fa2", "fa4"])
def test_adapters_make_no_copies(make, which):
    q, k, v = bhld(Lq=6, Lk=6) if make == "contiguous" else _packed_qkv()
    if which == "fa2":
        kernel = FA2StandIn()
        out = fa.run_fa2(kernel, q, k, v)
    else:
        kernel = FA4StandIn()
        out = fa.run_fa4(lambda *a: fa.fa4_forward(kernel, *a), q, k, v)[0]
    call = kernel.calls[0]
    for ours, theirs in ((q, call["q"]), (k, call["k"]), (v, call["v"])):
        # the same memory, read through transposed strides
        assert theirs.data_ptr() == ours.data_ptr() and theirs.stride() == ours.transpose(1, 2).stride()
    # the output is the kernel's (B, Lq, H, D) memory viewed as (B, H, Lq, D): the head merge is free
    assert out.data_ptr() == call["out"].data_ptr() and out.stride() == call["out"].transpose(1, 2).stride()
    assert out.transpose(1, 2).is_contiguous()


def test_adapter_copies_only_a_strided_head_dim():
    q, k, v = bhld(D=32)
    q = q[..., ::2]  # head dim stride 2: the kernels cannot read it as is
    k = k[..., :16]  # a slice with a unit head-dim stride: still a view
    kernel = FA2StandIn()
    got = fa.run_fa2(kernel, q, k, v[..., :16])
    call = kernel.calls[0]
    assert call["q"].stride(-1) == 1 and call["q"].data_ptr() != q.data_ptr()
    assert call["k"].data_ptr() == k.data_ptr()
    assert_close(got, attention_reference(q, k, v[..., :16]))


# ------------------------------------------------------------------ FA4 custom ops on CPU
def test_fa4_custom_op_forward_and_gradients(fa4_standin):
    q, k, v = (t.requires_grad_() for t in bhld(Lq=5, Lk=7, D=16, Dv=8))
    out, lse = fa.run_fa4(torch.ops.ascan_fa4.fwd, q, k, v, 0.4)
    want = attention_reference(q, k, v, scale=0.4)
    assert_close(out, want)
    assert not lse.requires_grad  # lse is marked non-differentiable
    w = torch.randn_like(want)
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(got, ref):
        assert_close(a, b)


def test_fa4_custom_op_compiles_without_graph_breaks(fa4_standin):
    q, k, v = (t.requires_grad_() for t in bhld(Lq=6, Lk=4, D=16))

    def f(q, k, v):
        return fa._fa4_attention(q, k, v).sum()  # the registry's entry: adapter + ascan_fa4::fwd

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")  # fullgraph: a break raises
    loss = compiled(q, k, v)
    assert_close(loss, attention_reference(q, k, v).sum())
    loss.backward()
    ref = torch.autograd.grad(attention_reference(q, k, v).sum(), (q, k, v))
    for t, r in zip((q, k, v), ref):
        assert_close(t.grad, r)


def test_fa2_glue_traces_without_graph_breaks(monkeypatch):
    """The registry's entry for flash-attn 2 (probe lookup, adapter) is plain Python Dynamo
    traces; flash-attn 2 itself registers torch custom ops for its kernels."""
    kernel = FA2StandIn()
    monkeypatch.setitem(fa._PROBED, "fa2", fa.Backend(None, "stand-in", fwd=kernel))
    q, k, v = bhld(Lq=6, Lk=4, D=16)
    torch._dynamo.reset()
    got = torch.compile(fa._fa2_attention, fullgraph=True, backend="eager")(q, k, v, None, 0.0, 0.5)
    assert_close(got, attention_reference(q, k, v, scale=0.5))


# AOT dispatch (opcheck's slowest check, ~8 s here) is covered by the aot_eager compile above.
OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_fa4_custom_ops_opcheck(fa4_standin):
    """Schema, autograd registration, and the fake impls against the real outputs."""
    q, k, v = (fa.to_flash_layout(t) for t in bhld(Lq=5, Lk=3, D=8))
    torch.library.opcheck(torch.ops.ascan_fa4.fwd.default,
                          tuple(t.clone().requires_grad_() for t in (q, k, v)) + (0.5,), test_utils=OPCHECKS)
    out, lse = torch.ops.ascan_fa4.fwd(q, k, v, 0.5)
    torch.library.opcheck(torch.ops.ascan_fa4.bwd.default, (torch.randn_like(out), q, k, v, out, lse, 0.5),
                          test_utils=OPCHECKS)


def test_fa4_fake_impls_give_shapes_without_a_kernel(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    # No kernel at all: any real call would raise KernelUnavailableError.
    monkeypatch.setitem(fa._PROBED, "fa4", fa.Backend("no kernel in this test"))
    with FakeTensorMode():
        q = torch.empty(2, 5, 3, 64, dtype=torch.bfloat16)  # (B, Lq, H, D)
        k = torch.empty(2, 9, 3, 64, dtype=torch.bfloat16)
        v = torch.empty(2, 9, 3, 32, dtype=torch.bfloat16)
        out, lse = torch.ops.ascan_fa4.fwd(q, k, v, 0.125)
        assert out.shape == (2, 5, 3, 32) and out.dtype == torch.bfloat16 and out.is_contiguous()
        assert lse.shape == (2, 3, 5) and lse.dtype == torch.float32
        dq, dk, dv = torch.ops.ascan_fa4.bwd(torch.empty_like(out), q, k, v, out, lse, 0.125)
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
        assert dq.dtype == torch.bfloat16 and dq.is_contiguous()
    with pytest.raises(K.KernelUnavailableError, match="no kernel in this test"):
        torch.ops.ascan_fa4.fwd(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8), 1.0)


def test_fa4_fwd_decomposition_matches_the_contract():
    table = K.decompositions()
    decomp = table[torch.ops.ascan_fa4.fwd.default]
    q, k, v = (fa.to_flash_layout(t) for t in bhld(Lq=4, Lk=6, D=16, Dv=8))
    out, lse = decomp(q, k, v, 0.3)
    want_out, want_lse = flash_math(q, k, v, 0.3)
    assert out.shape == want_out.shape and out.is_contiguous()
    assert_close(out, want_out)
    assert lse.dtype == torch.float32
    assert_close(lse, want_lse)


# ------------------------------------------------------------------ availability reasons
def _probe2(version="2.8.3", spec=None, cuda=True, module=None, error=None, **kw):
    def import_module(name):
        assert name == "flash_attn"
        if error is not None:
            raise error
        return module if module is not None else types.SimpleNamespace(__version__=version,
                                                                          flash_attn_func=FA2StandIn())
    return fa.probe_fa2(dist_version=lambda n: version if n == fa.FA2_DIST else None, find_spec=lambda n: spec,
                        cuda_available=lambda: cuda, import_module=import_module, **kw)


ABI = ImportError("/site-packages/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
                  "_ZN3c104cuda9SetDeviceEi")
NO_LIB = OSError("libcudart.so.12: cannot open shared object file: No such file or directory")


@pytest.mark.parametrize("case,want", [
    (dict(version=None), r"^flash-attn is not installed \(pip install flash-attn"),
    (dict(version=None, spec=types.SimpleNamespace(origin=None)),
     r"flash-attn 2 is not installed: the flash_attn package here is only flash-attn-4's"),
    (dict(version="1.0.9"), r"flash-attn 1\.0\.9 is installed; this impl needs flash-attn 2\.x"),
    (dict(version="3.0.0b1"), r"flash-attn 3\.0\.0b1 is installed; this impl needs flash-attn 2\.x"),
    (dict(cuda=False), r"^no CUDA device \(flash-attn 2\.8\.3 is installed"),
    (dict(error=ABI), r"flash-attn 2\.8\.3: import flash_attn failed: ABI mismatch, it was built against another "
                      r"torch/CUDA .*undefined symbol: _ZN3c104cuda9SetDeviceEi"),
    (dict(error=OSError("flash_attn_2_cuda.so: undefined symbol: cudaGetDriverEntryPoint")), r"ABI mismatch"),
    (dict(error=NO_LIB), r"a shared library it needs cannot be loaded: libcudart\.so\.12"),
    (dict(error=RuntimeError("CUDA driver version is insufficient")),
     r"import flash_attn failed \(RuntimeError: CUDA driver version is insufficient\)"),
    (dict(module=types.SimpleNamespace(__version__="2.8.3")), r"flash_attn has no flash_attn_func"),
])
def test_fa2_unavailable_reasons(case, want):
    b = _probe2(**case)
    assert b.reason is not None and b.fwd is None
    assert re.search(want, b.reason), b.reason


def test_fa2_available_and_version_from_the_module_without_metadata():
    b = _probe2()
    assert b.reason is None and b.version == "2.8.3" and isinstance(b.fwd, FA2StandIn)
    # a source tree without dist metadata: the version comes from flash_attn.__version__
    mod = types.SimpleNamespace(__version__="1.0.4", flash_attn_func=FA2StandIn())
    b = fa.probe_fa2(dist_version=lambda n: None, find_spec=lambda n: types.SimpleNamespace(origin="x/__init__.py"),
                     cuda_available=lambda: True, import_module=lambda n: mod)
    assert "flash_attn 1.0.4 is installed; this impl needs flash-attn 2.x" in b.reason


def test_fa2_import_blocked_in_sys_modules(monkeypatch):
    """A real ImportError from the import system (sys.modules entry None), caught and reported."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    b = fa.probe_fa2(dist_version=lambda n: "2.7.4", cuda_available=lambda: True)
    assert b.reason.startswith("flash-attn 2.7.4: import flash_attn failed: the module is missing although its "
                               "metadata is installed") and b.fwd is None
    assert "import of flash_attn halted; None in sys.modules" in b.reason


def _fa4_modules(fwd=None, bwd=None):
    fwd = fwd if fwd is not None else FA4StandIn()
    bwd = bwd if bwd is not None else fa4_bwd_standin
    cute = types.SimpleNamespace(flash_attn_func=lambda q, k, v, softmax_scale=None, causal=False, return_lse=False:
                                 fwd(q, k, v, softmax_scale, causal, return_lse))
    return {"flash_attn.cute": cute, "flash_attn.cute.interface": types.SimpleNamespace(_flash_attn_bwd=bwd)}


def _probe4(version="4.0.0b36", fa2_version=None, cuda=True, modules=None, error=None):
    mods = _fa4_modules() if modules is None else modules

    def import_module(name):
        if error is not None:
            raise error
        return mods[name]
    versions = {fa.FA4_DIST: version, fa.FA2_DIST: fa2_version}
    return fa.probe_fa4(dist_version=versions.get, cuda_available=lambda: cuda, import_module=import_module)


def _bwd_without_dq(q, k, v, out, dout, lse, softmax_scale=None, causal=False):
    raise AssertionError("never called")


@pytest.mark.parametrize("case,want", [
    (dict(version=None), r"^flash-attn-4 is not installed \(pip install --pre flash-attn-4"),
    (dict(version="3.0.0"), r"flash-attn-4 3\.0\.0 is installed; this impl needs 4\.x"),
    (dict(cuda=False), r"^no CUDA device \(flash-attn-4 4\.0\.0b36 is installed; its kernels run on Hopper"),
    (dict(error=ModuleNotFoundError("No module named 'cutlass'", name="cutlass")),
     r"import flash_attn\.cute failed: its dependency 'cutlass' is not installed"),
    (dict(error=OSError("libcuda.so.1: cannot open shared object file: No such file or directory")),
     r"flash-attn-4 4\.0\.0b36: import flash_attn\.cute failed: a shared library it needs cannot be loaded: "
     r"libcuda\.so\.1"),
    (dict(error=ABI, fa2_version="2.8.3"),
     r"ABI mismatch.*\(importing flash_attn\.cute runs the installed flash-attn 2's flash_attn/__init__\.py first\)$"),
    (dict(modules={"flash_attn.cute": types.SimpleNamespace(), "flash_attn.cute.interface": types.SimpleNamespace()}),
     r"has no flash_attn\.cute\.flash_attn_func \(written against 4\.0\.0b36\)"),
    (dict(modules={**_fa4_modules(), "flash_attn.cute.interface": types.SimpleNamespace()}),
     r"has no flash_attn\.cute\.interface\._flash_attn_bwd"),
    (dict(modules=_fa4_modules(bwd=_bwd_without_dq)),
     r"_flash_attn_bwd has no parameter dq, dk, dv \(written against 4\.0\.0b36\)"),
])
def test_fa4_unavailable_reasons(case, want):
    b = _probe4(**case)
    assert b.reason is not None and b.fwd is None
    assert re.search(want, b.reason), b.reason


def test_fa4_available():
    b = _probe4()
    assert b.reason is None and b.version == "4.0.0b36" and callable(b.fwd) and b.bwd is fa4_bwd_standin


def test_registry_reports_the_probes():
    status = K.available("attention")
    assert status["flash_attn"] == (fa.fa2().reason or "ok")
    assert status["flash_attn4"] == (fa.fa4().reason or "ok")
    order = [i.name for i in K.get_op("attention").impls]
    assert order.index("flash_attn4") < order.index("flash_attn") < order.index("triton") < order.index("sdpa")


def _run_with_fa4_site(code: str) -> dict:
    script = f"import site; site.addsitedir({str(FA4_SITE)!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ASCAN_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_fa4_site = pytest.mark.skipif(not (FA4_SITE / "flash_attn" / "cute").is_dir(),
                                    reason=f"no flash-attn-4 install at {FA4_SITE} (set ASCAN_FA4_SITE)")


@needs_fa4_site
def test_real_flash_attn_4_install_is_reported():
    """The real package on the path: ``python -m ascan_kernels`` says it is installed and
    why it cannot run (no GPU here), and the flash-attn 2 probe is not fooled by FA4's
    ``flash_attn`` namespace package."""
    got = _run_with_fa4_site("""
        import json, torch
        import ascan_kernels as K
        from ascan_kernels import info
        text = info.format_report(info.collect())
        print(json.dumps({"status": K.available("attention"), "text": text, "cuda": torch.cuda.is_available()}))
    """)
    status = got["status"]
    if not got["cuda"]:
        assert status["flash_attn4"].startswith("no CUDA device (flash-attn-4 4.0.0b36 is installed")
    assert status["flash_attn4"] in got["text"]
    assert "only flash-attn-4's flash_attn.cute namespace" in status["flash_attn"]


@needs_fa4_site
@pytest.mark.slow  # importing flash_attn.cute (CuTe DSL, MLIR bindings) takes 5-10 s
def test_real_flash_attn_4_imports_and_has_the_entry_points():
    """Past the CUDA check, the real import and the entry points this module calls, or a
    precise reason (e.g. a CUDA library it needs that is missing here)."""
    got = _run_with_fa4_site("""
        import json
        from ascan_kernels.ops.attention import flash_attn as fa
        b = fa.probe_fa4(cuda_available=lambda: True)
        print(json.dumps({"reason": b.reason, "version": b.version, "fwd": getattr(b.fwd, "__module__", None),
                          "bwd": getattr(b.bwd, "__name__", None)}))
    """)
    assert got["reason"] is None, got["reason"]
    assert got["version"] == "4.0.0b36" and got["fwd"] == "flash_attn.cute.interface" and got["bwd"] == "_flash_attn_bwd"


# ------------------------------------------------------------------ the registry's verdicts
def _q(dtype=torch.bfloat16, D=64, Dv=None, Lq=5, Lk=7):
    return bhld(2, 3, Lq, Lk, D, Dv, dtype=dtype)


def test_cpu_tensors_skip_both_with_the_device_reason():
    with K.trace() as t:
        K.attention(*_q(torch.float32))
    skipped = dict(t.records[0].skipped)
    assert skipped["flash_attn4"] == skipped["flash_attn"] == "device cpu: this impl takes cuda tensors"


def _as_if_on_cuda(impl):
    """The impl with its device check and availability lifted, so the registry's other
    verdicts can be read on CPU tensors."""
    return dataclasses.replace(impl, caps=dataclasses.replace(impl.caps, devices=None), available=lambda: None)


@pytest.fixture
def scratch_op():
    op = Op("attention", attention_reference, autocast=True)  # not registered globally
    op.register(_as_if_on_cuda(fa.fa2_impl()))
    op.register(_as_if_on_cuda(fa.fa4_impl()))
    return op


@pytest.mark.parametrize("case,want2,want4", [
    (dict(dtype=torch.float32), r"dtype float32 not supported \(float16, bfloat16\); flash-attn computes in fp16/bf16",
     r"dtype float32 not supported \(float16, bfloat16\)"),
    (dict(mask=True), r"attn_mask given: flash-attn takes no tensor mask", r"attn_mask given"),
    (dict(dropout=0.1), None, r"dropout not supported by flash-attn-4"),
    (dict(D=12), r"head dim 12 not supported \(flash-attn 2 takes multiples of 8 up to 256",
     r"head dims \(q 12, v 12\) not supported \(flash-attn-4 takes multiples of 8\)"),
    (dict(D=264), r"head dim 264 not supported", r"head dims \(q 264, v 264\) not supported .*8\.\.256 each on sm_90"),
    (dict(D=64, Dv=32), r"v head dim 32 != q head dim 64 \(flash-attn 2 needs them equal\)", None),
    (dict(Lk=0), r"empty input", r"empty input"),
    (dict(Lq=9, Lk=3), None, None),
    (dict(dtype=torch.float16, D=256), None, None),
])
def test_declines_say_why_and_the_next_impl_runs(scratch_op, case, want2, want4):
    q, k, v = _q(case.get("dtype", torch.bfloat16), case.get("D", 64), case.get("Dv"), case.get("Lq", 5),
                 case.get("Lk", 7))
    mask = torch.ones(2, 1, 1, k.shape[2], dtype=torch.bool) if case.get("mask") else None
    args = (q, k, v, mask, case.get("dropout", 0.0), None)
    for name, want in (("flash_attn", want2), ("flash_attn4", want4)):
        reason = scratch_op.why_not(scratch_op.impl(name), args, {}, False)
        if want is None:
            assert reason is None, (name, reason)
        else:
            assert reason is not None and re.search(want, reason), (name, reason)
    impl, skipped = scratch_op.select(args, {})
    if want2 and want4:
        assert impl.name == "eager" and {n for n, _ in skipped} == {"flash_attn", "flash_attn4"}


def test_fa4_head_dims_per_architecture():
    assert fa.fa4_head_dim_reason(256, 256, (9, 0)) is None and fa.fa4_head_dim_reason(200, 136, (9, 0)) is None
    assert fa.fa4_head_dim_reason(256, 256, (10, 0)) is None and fa.fa4_head_dim_reason(192, 128, (10, 0)) is None
    assert "sm_100" in fa.fa4_head_dim_reason(160, 160, (10, 0))
    assert fa.fa4_head_dim_reason(128, 64, (10, 3)) is None


def test_fa2_backward_head_dim_rule(monkeypatch):
    """flash-attn 2's backward takes head dims in (192, 224], and >192 with dropout, only on
    sm_80 / sm_90 (shared memory): asked only when a gradient is needed."""
    monkeypatch.setattr(fa, "device_capability", lambda device: (8, 6))
    q, k, v = (t.requires_grad_() for t in _q(torch.float16, D=224))
    assert "head dim 224 backward needs sm_80 or sm_90" in fa._fa2_supports(q, k, v)
    with torch.no_grad():
        assert fa._fa2_supports(q, k, v) is None
    q, k, v = (t.requires_grad_() for t in _q(torch.float16, D=256))
    assert fa._fa2_supports(q, k, v) is None
    assert "with dropout" in fa._fa2_supports(q, k, v, dropout_p=0.1)
    monkeypatch.setattr(fa, "device_capability", lambda device: (8, 0))
    assert fa._fa2_supports(q, k, v, dropout_p=0.1) is None


def test_forcing_on_cpu_raises_with_the_reason():
    with K.use(attention="flash_attn4"), pytest.raises(K.KernelUnavailableError, match="device cpu"):
        K.attention(*_q())


# ------------------------------------------------------------------ on a GPU
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def _runs_here(impl, dtype=torch.float16, D=64):
    status = K.available("attention")[impl]
    if status != "ok":
        pytest.skip(f"{impl}: {status}")
    q, k, v = (t.cuda() for t in _q(dtype, D))
    why = K.get_op("attention").why_not(K.get_op("attention").impl(impl), (q, k, v, None, 0.0, None), {}, False)
    if why is not None:
        pytest.skip(f"{impl}: {why}")


@needs_cuda
@pytest.mark.parametrize("impl", ["flash_attn", "flash_attn4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("Lq,Lk", [(77, 77), (33, 150), (130, 9)])
def test_gpu_matches_reference(impl, dtype, D, Lq, Lk):
    _runs_here(impl, dtype, D)
    q, k, v = (t.cuda() for t in bhld(2, 4, Lq, Lk, D, dtype=dtype))
    scale = 0.7 if Lq == 33 else None
    with K.use(attention=impl), K.trace() as t:
        got = K.attention(q, k, v, scale=scale)
    assert t.impls() == [impl]
    want = attention_reference(q, k, v, scale=scale)
    ref = attention_reference(q.float(), k.float(), v.float(), scale=scale)
    assert got.shape == (2, 4, Lq, D) and got.dtype == dtype
    assert got.transpose(1, 2).is_contiguous()
    assert_error_within(got, want, ref, factor=2.0, floor=1e-3)


@needs_cuda
@pytest.mark.parametrize("impl", ["flash_attn", "flash_attn4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_gradients_match_reference(impl, dtype):
    _runs_here(impl, dtype)
    ins = [t.cuda() for t in bhld(2, 3, 70, 45, 64, dtype=dtype)]
    grads = {}
    for name in (impl, "eager"):
        xs = [t.detach().clone().requires_grad_() for t in ins]
        with K.use(attention=name):
            out = K.attention(*xs)
        (out * torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape).to(dtype)).sum().backward()
        grads[name] = [x.grad for x in xs]
    f32 = [t.detach().float().requires_grad_() for t in ins]
    out = attention_reference(*f32)
    (out * torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape)).sum().backward()
    for got, want, ref in zip(grads[impl], grads["eager"], (t.grad for t in f32)):
        assert_error_within(got, want, ref, factor=3.0, floor=1e-2)


@needs_cuda
def test_gpu_cross_attention_fa4_with_its_own_v_head_dim():
    _runs_here("flash_attn4")
    q, k, v = (t.cuda() for t in bhld(2, 4, 40, 90, 128, Dv=64, dtype=torch.bfloat16))
    with K.use(attention="flash_attn4"):
        got = K.attention(q, k, v)
    ref = attention_reference(q.float(), k.float(), v.float())
    assert_error_within(got, attention_reference(q, k, v), ref, factor=2.0, floor=1e-3)


@needs_cuda
def test_gpu_fa4_compiles_fullgraph_and_runs_the_custom_op():
    _runs_here("flash_attn4", torch.bfloat16)
    q, k, v = (t.cuda().requires_grad_() for t in bhld(2, 4, 64, 96, 64, dtype=torch.bfloat16))

    def f(q, k, v):
        return K.attention(q, k, v)

    torch._dynamo.reset()
    with K.use(attention="flash_attn4"):
        compiled = torch.compile(f, fullgraph=True)
        got = compiled(q, k, v)
        got.float().sum().backward()
    ref = attention_reference(q.float(), k.float(), v.float())
    assert_error_within(got, attention_reference(q, k, v), ref, factor=2.0, floor=1e-3)
    assert q.grad is not None and torch.isfinite(q.grad).all()
