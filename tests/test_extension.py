"""The compiled extension ascan_kernels._C: build metadata, the C++ add_layer_norm kernel
(every instruction-set variant), its input checks, and its registration with torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ascan_kernels import _ext
from ascan_kernels._ext import has_cuda_kernels, load_extension

EXT, WHY = load_extension()
needs_ext = pytest.mark.skipif(EXT is None, reason=f"ascan_kernels._C is not available: {WHY}")

EPS = 1e-5
LOW_PRECISION = [torch.bfloat16, torch.float16]


def op(x, residual, weight, bias, eps=EPS):
    return torch.ops.ascan_C.add_layer_norm(x, residual, weight, bias, eps)


def make_inputs(shape, dtype, wdtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    w = (torch.randn(C, generator=g) * 0.5 + 1).to(wdtype or dtype)
    b = (torch.randn(C, generator=g) * 0.5).to(wdtype or dtype)
    return x, r, w, b


# Odd sizes on purpose: C below, at and above one vector step, and not a multiple of any.
SHAPES = [(3, 37, 200), (1, 1, 1), (5, 768), (2, 49, 512), (7, 33), (4, 16), (2, 3, 4, 130), (1, 5000)]


# ------------------------------------------------------------------------- build metadata
@needs_ext
def test_build_info_matches_running_torch():
    info = EXT.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert (info["torch_version_major"], info["torch_version_minor"]) == (major, minor)
    assert info["cxx11_abi"] == bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert info["openmp"] is True
    assert has_cuda_kernels() == info["with_cuda"]

    from ascan_kernels._build_info import BUILD_INFO

    assert BUILD_INFO["torch_version"] == torch.__version__
    assert BUILD_INFO["torch_cuda"] == torch.version.cuda
    assert BUILD_INFO["with_cuda"] == info["with_cuda"]
    if not BUILD_INFO["with_cuda"]:
        assert BUILD_INFO["why_no_cuda"], "a CPU-only build must say why"


@needs_ext
def test_cpu_kernel_isa_follows_torch():
    isa = EXT.cpu_kernel_isa()
    cap = torch.backends.cpu.get_cpu_capability()
    assert isa in ("avx512", "avx2", "base")
    if cap == "DEFAULT":
        assert isa == "base"
    if cap == "AVX2":
        assert isa in ("avx2", "base")


# ------------------------------------------------------------------------- numerics
@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_eager(shape):
    x, r, w, b = make_inputs(shape, torch.float32)
    s, out = op(x, r, w, b)
    ref_s = x + r
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(out, F.layer_norm(ref_s, (shape[-1],), w, b, EPS), atol=1e-5, rtol=1e-5)
    assert s.is_contiguous() and out.is_contiguous() and out.shape == x.shape


def max_err(a, ref):
    return (a.float() - ref).abs().max().item()


@needs_ext
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("w_same_dtype", [False, True], ids=["w_fp32", "w_lowp"])
def test_low_precision_within_twice_eager_error(dtype, shape, w_same_dtype):
    x, r, w, b = make_inputs(shape, dtype, None if w_same_dtype else torch.float32)
    s, out = op(x, r, w, b)
    assert s.dtype == out.dtype == dtype
    # s is rounded exactly like eager's x + r ...
    assert torch.equal(s, x + r)
    # ... and out is within 2x of eager's own error against an fp32 reference computed from
    # the same low-precision inputs (the rule flash-attention's tests use).
    C = shape[-1]
    ref = F.layer_norm(x.float() + r.float(), (C,), w.float(), b.float(), EPS)
    eager = F.layer_norm(x + r, (C,), w, b, EPS)
    floor = 1e-3 if dtype == torch.bfloat16 else 1e-4
    assert max_err(out, ref) <= 2 * max_err(eager, ref) + floor


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_empty_rows(dtype):
    for shape in [(0, 8), (0, 5, 8), (2, 0, 8)]:
        x = torch.randn(shape).to(dtype)
        s, out = op(x, x, torch.ones(8), torch.zeros(8))
        assert s.shape == out.shape == shape and s.dtype == out.dtype == dtype


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C", [1, 31, 32, 33, 200, 4097])
def test_every_output_element_written_and_deterministic(dtype, C):
    rows = 67
    x, r, w, b = make_inputs((rows, C), dtype, torch.float32)
    # Free two NaN-filled blocks of the outputs' size (a live guard block behind them keeps
    # malloc from returning them to the OS), so the outputs are likely carved from NaN
    # memory and any element the kernel failed to write shows. Best effort: blocks above
    # malloc's mmap threshold come back zeroed.
    poison = [torch.full((rows * C,), float("nan"), dtype=dtype) for _ in range(2)]
    guard = torch.empty(64)
    del poison
    s1, o1 = op(x, r, w, b)
    del guard
    s2, o2 = op(x, r, w, b)
    assert not s1.isnan().any() and not o1.isnan().any()
    assert torch.equal(s1, s2) and torch.equal(o1, o2)


@needs_ext
def test_normalised_rows_have_zero_mean_unit_variance():
    x, r, _, _ = make_inputs((6, 130), torch.float32)
    _, out = op(x, r, torch.ones(130), torch.zeros(130))
    torch.testing.assert_close(out.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


@needs_ext
def test_large_offset_is_numerically_safe():
    # mean >> std: E[s^2] - E[s]^2 would cancel catastrophically in float32.
    x = torch.randn(4, 256) + 1e4
    r = torch.zeros(4, 256)
    w, b = torch.ones(256), torch.zeros(256)
    _, out = op(x, r, w, b)
    ref = F.layer_norm(x.double(), (256,), w.double(), b.double(), EPS)
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=0)


@needs_ext
def test_nan_stays_in_its_row():
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    x[1, 4] = float("nan")
    _, out = op(x, r, torch.ones(16), torch.zeros(16))
    assert out[1].isnan().all() and torch.isfinite(out[[0, 2]]).all()


@needs_ext
def test_parallel_path_matches_single_row_calls():
    # Enough rows for several threads' chunks; each row must equal the row done alone.
    x, r, w, b = make_inputs((16, 196, 128), torch.float32, torch.float32)
    _, out = op(x, r, w, b)
    for i in (0, 7, 15):
        _, one = op(x[i, 5:6].contiguous(), r[i, 5:6].contiguous(), w, b)
        assert torch.equal(out[i, 5:6], one)


# Each CPU instruction-set variant of the kernel, forced the way torch's own kernels are
# (ATEN_CPU_CAPABILITY), in a fresh process: the choice is made once per process.
ISA_SCRIPT = textwrap.dedent("""
    import json, torch, torch.nn.functional as F
    from ascan_kernels._ext import load_extension
    ext, why = load_extension()
    assert ext is not None, why
    res = {"isa": ext.cpu_kernel_isa(), "ok": True, "errors": []}
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((3, 37, 200), (5, 768), (7, 33), (1, 1)):
            for wd in (torch.float32, dtype):
                C = shape[-1]
                x = torch.randn(shape, generator=g).to(dtype)
                r = torch.randn(shape, generator=g).to(dtype)
                w = torch.randn(C, generator=g).to(wd)
                b = torch.randn(C, generator=g).to(wd)
                s, out = torch.ops.ascan_C.add_layer_norm(x, r, w, b, 1e-5)
                ref = F.layer_norm(x.float() + r.float(), (C,), w.float(), b.float(), 1e-5)
                eager = F.layer_norm(x + r, (C,), w, b, 1e-5)
                err = (out.float() - ref).abs().max().item()
                base = (eager.float() - ref).abs().max().item()
                tol = 1e-5 if dtype == torch.float32 else 2 * base + 1e-3
                if not torch.equal(s, x + r) or err > tol:
                    res["ok"] = False
                    res["errors"].append(f"{dtype} {shape} w={wd}: err {err:.2e} > {tol:.2e}")
    print(json.dumps(res))
""")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@needs_ext
@pytest.mark.parametrize("capability,expected", [("default", "base"), ("avx2", "avx2"), ("avx512", "avx512")])
def test_each_instruction_set_variant(capability, expected):
    flags = cpu_flags()
    if expected == "avx2" and not {"avx2", "fma", "f16c", "bmi2"} <= flags:
        pytest.skip("this CPU has no AVX2+FMA+F16C")
    if expected == "avx512" and not {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        pytest.skip("this CPU has no AVX-512")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["isa"] != expected and sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        pytest.fail(f"ATEN_CPU_CAPABILITY={capability} ran the {res['isa']} kernels, expected {expected}")
    assert res["ok"], res["errors"]


# ------------------------------------------------------------------------- bad input
def bad_cases():
    x = torch.randn(4, 8)
    ones, zeros = torch.ones(8), torch.zeros(8)
    return [
        ("int32", (x.int(), x.int(), ones, zeros, EPS), "x must be float32, bfloat16 or float16, got Int"),
        ("float64", (x.double(), x.double(), ones, zeros, EPS), "x must be float32, bfloat16 or float16, got Double"),
        ("shape", (x, x[:, :7].contiguous(), ones, zeros, EPS), r"residual shape \[4, 7\] differs from x shape \[4, 8\]"),
        ("mixed", (x, x.bfloat16(), ones, zeros, EPS), "residual dtype BFloat16 differs from x dtype Float"),
        ("weight_size", (x, x, torch.ones(7), zeros, EPS), r"weight must have shape \(8\) .*got \[7\]"),
        ("bias_size", (x, x, ones, torch.zeros(2, 8), EPS), r"bias must have shape \(8\) .*got \[2, 8\]"),
        ("weight_dtype", (x, x, ones.double(), zeros, EPS), "weight dtype must be float32 or x's dtype Float, got Double"),
        ("bias_dtype", (x.bfloat16(), x.bfloat16(), ones, zeros.half(), EPS), "bias dtype must be float32 or x's dtype BFloat16, got Half"),
        ("x_noncontig", (x.t(), x.t().contiguous(), torch.ones(4), torch.zeros(4), EPS), "x must be contiguous"),
        ("res_noncontig", (x.t().contiguous(), x.t(), torch.ones(4), torch.zeros(4), EPS), "residual must be contiguous"),
        ("weight_noncontig", (x, x, torch.ones(16)[::2], zeros, EPS), "weight must be contiguous"),
        ("empty_C", (x[:, :0], x[:, :0], torch.ones(0), torch.zeros(0), EPS), r"the normalised \(last\) dim of x is empty, shape \[4, 0\]"),
        ("zero_dim", (torch.tensor(1.0), torch.tensor(1.0), torch.ones(1), torch.zeros(1), EPS), "x must have at least 1 dim, got a 0-dim tensor"),
        ("eps", (x, x, ones, zeros, -1.0), "eps must be finite and >= 0, got -1"),
    ]


@needs_ext
@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_with_the_problem(case):
    _, args, msg = case
    with pytest.raises(RuntimeError, match=f"ascan add_layer_norm: {msg}"):
        op(*args)


# ------------------------------------------------------------------------- torch integration
@needs_ext
@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                          (torch.bfloat16, torch.bfloat16)], ids=["fp32", "bf16_wfp32", "bf16"])
def test_opcheck(dtype, wdtype):
    x, r, w, b = make_inputs((3, 5, 24), dtype, wdtype)
    torch.library.opcheck(torch.ops.ascan_C.add_layer_norm.default, (x, r, w, b, EPS))


@needs_ext
def test_opcheck_with_autograd():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("ascan_C::add_layer_norm", "Autograd"):
        pytest.skip("no autograd formula registered for ascan_C::add_layer_norm (ascan_kernels.ops does that)")
    x, r, w, b = make_inputs((3, 5, 24), torch.float32, torch.float32)
    args = (x.requires_grad_(), r.requires_grad_(), w.requires_grad_(), b.requires_grad_(), EPS)
    torch.library.opcheck(torch.ops.ascan_C.add_layer_norm.default, args)


@needs_ext
def test_fake_kernel_gives_shapes_without_computing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 7, 48, dtype=torch.bfloat16)
        s, out = op(x, x, torch.empty(48), torch.empty(48))
    assert s.shape == out.shape == (2, 7, 48) and s.dtype == out.dtype == torch.bfloat16


@needs_ext
def test_direct_binding_matches_torch_ops_and_skips_autograd_only_when_unneeded():
    x, r, w, b = make_inputs((4, 49, 96), torch.bfloat16, torch.float32)
    s1, o1 = EXT.add_layer_norm(x, r, w, b, EPS)
    s2, o2 = op(x, r, w, b)
    assert torch.equal(s1, s2) and torch.equal(o1, o2)
    assert o1.grad_fn is None
    if torch._C._dispatch_has_kernel_for_dispatch_key("ascan_C::add_layer_norm", "Autograd"):
        xg = x.float().requires_grad_()
        _, og = EXT.add_layer_norm(xg, r.float(), w, b, EPS)
        assert og.grad_fn is not None
        with torch.no_grad():
            assert EXT.add_layer_norm(xg, r.float(), w, b, EPS)[1].grad_fn is None


# ------------------------------------------------------------------------- _ext reasons
def test_load_extension_never_raises_and_caches():
    assert load_extension() is load_extension()
    mod, why = load_extension()
    assert (mod is None) != (why is None)


@pytest.mark.parametrize("info,expected", [
    ({"skipped": "ASCAN_SKIP_EXT=1 was set at build time"}, "^extension not built: ASCAN_SKIP_EXT=1 was set at build"),
    ({"torch_version": "1.0.0+old", "cxx11_abi": True}, "build metadata mismatch: .*compiled against torch 1.0.0\\+old "
                                                       "but running torch .*; rebuild: pip install -e"),
    ({"torch_version": torch.__version__, "cxx11_abi": not torch._C._GLIBCXX_USE_CXX11_ABI},
     "build metadata mismatch: .*_GLIBCXX_USE_CXX11_ABI=.*; rebuild: pip install -e"),
])
def test_reasons_are_actionable(monkeypatch, info, expected):
    monkeypatch.setattr(_ext, "_build_info", lambda: info)
    mod, why = _ext._load()
    assert mod is None
    assert why is not None
    import re

    assert re.search(expected, why), why
