"""group_norm_silu: each impl against the eager reference.

* ``cpu`` (``ascan_C::group_norm_silu`` on the CPU, C++ at::vec per instruction set):
  numbers against the eager reference, both memory formats, ragged shapes, cancellation,
  rejections, opcheck, torch.compile, every instruction-set variant, and the UNet on top
  of it;
* ``triton``: under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets
  TRITON_INTERPRET=1), on CUDA tensors otherwise;
* ``cuda`` (``ascan_C::group_norm_silu`` on CUDA tensors): the kernel's math through its CPU
  reference loop (``ascan_C::group_norm_silu_reference``) and the impl's Python glue on CPU
  tensors anywhere; GPU parity only where a CUDA device is present.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import ascan_kernels as K
from ascan_kernels.ops.group_norm_silu import cuda as gn_cuda
from ascan_kernels.ops.group_norm_silu import group_norm_silu_reference as reference
from ascan_kernels.testing import assert_close, assert_error_within

from _helpers import (DT_IDS, HAS_NORM_ACT, KERNEL_DTYPES, check_lowp, check_lowp_ulps, cpu_rand, cuda_forced, eager,
                      fmt, fp32, needs_gpu, needs_ops, needs_triton, triton_forced, triton_rand, triton_reason, raises_ascan_error)

# ============================================================================== cpu impl
needs_cpu = pytest.mark.skipif(K.available("group_norm_silu").get("cpu") != "ok",
                               reason=f"cpu impl unavailable: {K.available('group_norm_silu').get('cpu')}")

OP = "group_norm_silu"
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
# (N, C, H, W, groups): ragged (C=40 in 8 groups, odd H*W, N=1/3), one channel per group,
# 1x1 maps (both formats at once), C not a multiple of any vector width, and maps large
# enough for the parallel paths (channels_last: several row blocks, the last one short).
SHAPES = [(2, 64, 8, 8, 32), (3, 40, 7, 9, 8), (1, 40, 5, 3, 8), (2, 32, 4, 4, 32), (1, 24, 1, 1, 8),
          (2, 40, 32, 32, 8), (1, 96, 24, 24, 32)]


def _make(shape, dtype, fmt, *, affine=True, film=True, offset=0.0, vec_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W, G = shape
    vd = vec_dtype or dtype
    x = (torch.randn(N, C, H, W, generator=g) * 1.5 + offset).to(dtype).contiguous(memory_format=FORMATS[fmt])
    w = (1 + 0.3 * torch.randn(C, generator=g)).to(vd) if affine else None
    b = (0.3 * torch.randn(C, generator=g)).to(vd) if affine else None
    sc = (0.2 * torch.randn(N, C, generator=g)).to(vd) if film else None
    sh = (0.2 * torch.randn(N, C, generator=g)).to(vd) if film else None
    return x, G, w, b, 1e-5, sc, sh


def _f32(args):
    return tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)


def _f64(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) else a for a in args)


def _run_cpu(args):
    with torch.no_grad(), K.use(**{OP: "cpu"}):
        return K.group_norm_silu(*args)


@needs_cpu
@pytest.mark.parametrize("film", [True, False], ids=["film", "nofilm"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_fp32_matches_reference(shape, fmt, affine, film):
    args = _make(shape, torch.float32, fmt, affine=affine, film=film)
    out = _run_cpu(args)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert out.stride() == args[0].stride()  # the input's memory format
    assert_close(out, reference(*args))


@needs_cpu
@pytest.mark.parametrize("film", [True, False], ids=["film", "nofilm"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_bf16_error_within_eager(shape, fmt, film):
    """bf16 in and out, computed in fp32 and rounded once: no worse than eager bf16
    (which rounds after group_norm, the FiLM multiply and add, and silu)."""
    args = _make(shape, torch.bfloat16, fmt, film=film)
    out = _run_cpu(args)
    assert out.dtype == torch.bfloat16 and out.stride() == args[0].stride()
    assert_error_within(out, reference(*args), reference(*_f32(args)), factor=1.0, floor=1e-2)


@needs_cpu
@pytest.mark.parametrize("x_dtype,vec_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.float32, torch.float64), (torch.bfloat16, torch.float16)])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cpu_mixed_vector_dtypes(x_dtype, vec_dtype, fmt):
    """The kernel widens weight/bias/scale/shift of any float dtype to fp32 up front and
    writes x's dtype."""
    args = _make((3, 40, 7, 9, 8), x_dtype, fmt, vec_dtype=vec_dtype)
    x, G, w, b, eps, sc, sh = args
    out = torch.ops.ascan_C.group_norm_silu(x, G, w, b, eps, sc, sh)
    assert out.dtype == x_dtype
    assert_close(out, reference(*_f32(args)).to(x_dtype), dtype=x_dtype)


@needs_cpu
def test_cpu_op_returns_the_references_dtype_under_promotion():
    """bf16 x with fp32 scale/shift: the reference promotes to fp32 (group_norm keeps
    bf16, ``* (1 + scale)`` promotes), so the op does too: the cpu kernel, which writes
    x's dtype, declines with the reason and the reference runs."""
    x, G, w, b, eps, sc, sh = _make((2, 32, 5, 5, 8), torch.bfloat16, "cl", vec_dtype=torch.float32)
    with torch.no_grad(), K.trace() as t:
        got = K.group_norm_silu(x, G, w, b, eps, sc, sh)
    want = reference(x, G, w, b, eps, sc, sh)
    assert got.dtype == want.dtype == torch.float32
    assert "type promotion" in dict(t.records[0].skipped)["cpu"]
    assert_close(got, want)
    with K.use(**{OP: "cpu"}), pytest.raises(K.KernelUnavailableError, match="type promotion"):
        K.group_norm_silu(x, G, w, b, eps, sc, sh)


@needs_cpu
@pytest.mark.parametrize("x_dtype,p_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float64),
                                             (torch.bfloat16, torch.float16), (torch.float64, torch.float32)])
def test_cpu_op_rejects_param_dtypes_pytorch_rejects(x_dtype, p_dtype):
    x, G, w, b, eps, _, _ = _make((2, 32, 5, 5, 8), x_dtype, "nchw", vec_dtype=p_dtype, film=False)
    with pytest.raises(TypeError, match=r"ascan_kernels.group_norm_silu: weight is .* but x is"):
        K.group_norm_silu(x, G, w, b, eps)


@needs_cpu
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype,offset,atol", [(torch.float32, 1e4, 2e-2), (torch.bfloat16, 256.0, 6e-2)])
def test_cpu_large_mean_no_cancellation(fmt, dtype, offset, atol):
    """mean >> spread: E[x^2] - E[x]^2 in fp32 would lose every digit of the variance (as
    eager's channels_last GroupNorm does at 1e4); two-pass statistics and the centred
    apply keep the result close to a float64 reference on the same inputs."""
    args = _make((2, 64, 16, 16, 32), dtype, fmt, offset=offset)
    out = _run_cpu(args)
    want = reference(*_f64(args))
    err = (out.double() - want).abs().max().item()
    assert err < atol, f"max error {err:.3e} vs float64 reference (mean {offset:g})"


@needs_cpu
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cpu_matches_cpp_scalar_reference(fmt):
    """The CUDA kernels' scalar CPU reference (ascan_C::group_norm_silu_reference, the shared
    per-element math) and this kernel agree."""
    args = _make((3, 40, 7, 9, 8), torch.float32, fmt)
    want = torch.ops.ascan_C.group_norm_silu_reference(*args)
    assert_close(_run_cpu(args), want)


@needs_cpu
def test_cpu_auto_selected_and_traced():
    args = _make((2, 64, 8, 8, 32), torch.float32, "cl")
    with torch.no_grad(), K.trace() as tr:
        K.group_norm_silu(*args)
    assert tr.impls(OP) == ["cpu"]


@needs_cpu
def test_cpu_requires_grad_falls_back_to_eager():
    x, *rest = _make((2, 64, 8, 8, 32), torch.float32, "nchw")
    x.requires_grad_()
    with K.trace() as tr:
        K.group_norm_silu(x, *rest).sum().backward()
    assert tr.impls(OP) == ["eager"] and x.grad is not None


@needs_cpu
def test_cpu_empty_batch():
    x = torch.randn(0, 32, 4, 4)
    out = torch.ops.ascan_C.group_norm_silu(x, 8, None, None, 1e-5, None, None)
    assert out.shape == x.shape


@pytest.mark.parametrize("make,reason", [
    (lambda: _make((2, 32, 4, 4, 8), torch.float16, "nchw"), "dtype float16 not supported"),
    (lambda: _make((2, 32, 4, 4, 8), torch.float64, "nchw"), "dtype float64 not supported"),
    (lambda: (torch.randn(2, 32, 16), 8, None, None, 1e-5, None, None), "x must be 4-D"),
    (lambda: (torch.randn(2, 32, 2, 4, 4), 8, None, None, 1e-5, None, None), "x must be 4-D"),
    (lambda: (torch.randn(2, 32, 8, 8)[:, :, ::2], 8, None, None, 1e-5, None, None),
     "must be contiguous (NCHW) or channels_last"),
    (lambda: (torch.randn(2, 8, 8, 32).permute(0, 3, 2, 1), 8, None, None, 1e-5, None, None),
     "must be contiguous (NCHW) or channels_last"),
])
@needs_cpu
def test_cpu_forced_rejections(make, reason):
    args = make()
    with K.use(**{OP: "cpu"}), pytest.raises(K.KernelUnavailableError, match=f"'cpu'.*{re.escape(reason)}"):
        K.group_norm_silu(*args)


@needs_cpu
def test_cpu_forced_with_grad_is_rejected():
    x, *rest = _make((2, 32, 4, 4, 8), torch.float32, "nchw")
    x.requires_grad_()
    with K.use(**{OP: "cpu"}), pytest.raises(K.KernelUnavailableError, match="no backward"):
        K.group_norm_silu(x, *rest)


@needs_cpu
def test_cpu_cpp_checks():
    op = torch.ops.ascan_C.group_norm_silu
    x = torch.randn(2, 32, 4, 4)
    with pytest.raises(RuntimeError, match="num_groups must be positive and divide C=32"):
        op(x, 5, None, None, 1e-5, None, None)
    with pytest.raises(RuntimeError, match=r"scale must have shape \[2, 32\]"):
        op(x, 8, None, None, 1e-5, torch.randn(32), None)
    with pytest.raises(RuntimeError, match="weight must be a floating tensor"):
        op(x, 8, torch.ones(32, dtype=torch.int32), None, 1e-5, None, None)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        op(x.half(), 8, None, None, 1e-5, None, None)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("optional", [True, False], ids=["all", "none"])
def test_cpu_opcheck(dtype, fmt, optional):
    args = _make((3, 40, 7, 9, 8), dtype, fmt, affine=optional, film=optional)
    torch.library.opcheck(torch.ops.ascan_C.group_norm_silu, args)


@needs_cpu
def test_cpu_torch_compile_traces_it():
    args = _make((2, 64, 8, 8, 32), torch.float32, "cl")
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: K.group_norm_silu(*a), fullgraph=True, backend="aot_eager")
    with torch.no_grad(), K.use(**{OP: "cpu"}):
        out = fn(*args)
    assert_close(out, reference(*args))
    assert out.is_contiguous(memory_format=torch.channels_last)


_ISA_SCRIPT = textwrap.dedent("""
    import torch, ascan_kernels as K
    from ascan_kernels._ext import load_extension
    from ascan_kernels.ops.group_norm_silu import group_norm_silu_reference as ref
    print(load_extension()[0].cpu_kernel_isa())
    g = torch.Generator().manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(3, 40, 7, 9, generator=g).to(dt).contiguous(memory_format=fmt)
            w, b = torch.randn(40, generator=g), torch.randn(40, generator=g)
            sc, sh = torch.randn(3, 40, generator=g) * 0.1, torch.randn(3, 40, generator=g) * 0.1
            out = torch.ops.ascan_C.group_norm_silu(x, 8, w, b, 1e-5, sc, sh)
            want = ref(x.float(), 8, w, b, 1e-5, sc, sh)
            tol = 1e-4 if dt == torch.float32 else 3e-2
            torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)
    print("ok")
""")


@needs_cpu
@pytest.mark.parametrize("capability,isa", [("default", "base"), ("avx2", "avx2"), ("avx512", "avx512")])
def test_cpu_every_isa_variant(capability, isa):
    """ATEN_CPU_CAPABILITY lowers the kernels' instruction set too (a fresh process)."""
    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    if isa == "avx512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU (or torch build) has no AVX512 kernels")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [isa, "ok"]


@needs_cpu
@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_unet_matches_eager_on_cpu_impl(kind):
    # tests/ is on sys.path (pytest prepends a test file's folder when it has no __init__)
    from test_unet import TINY, TINY_T2I, c2i_inputs, pair, t2i_inputs

    fused, eager = pair(TINY, num_classes=10) if kind == "c2i" else pair(TINY_T2I)
    args = c2i_inputs() if kind == "c2i" else t2i_inputs()
    fused.eval(), eager.eval()
    with torch.no_grad(), K.trace() as tr:
        got = fused(*args)
    with torch.no_grad():
        want = eager(*args)
    assert set(tr.impls(OP)) == {"cpu"}
    assert_close(got, want, scale=10)


# =========================================================================== triton impl
needs_triton_group_norm = needs_triton("group_norm_silu")


# ---------------------------------------------------------------------- group_norm_silu
TRITON_GN_CASES = [  # (shape, groups)
    ((2, 8, 5, 3), 4),
    ((1, 12, 7, 9), 3),
    ((3, 6, 11), 2),              # 1-D spatial
    ((1, 4, 64, 80), 1),          # big enough for several splits per group
]


def gn_args(shape, groups, dtype, affine, film, channels_last):
    N, C = shape[:2]
    x = triton_rand(*shape) * 2 + 3  # an offset mean: the statistics must not cancel
    if channels_last:
        x = x.to(memory_format=torch.channels_last) if x.dim() == 4 else x.transpose(1, 2).contiguous().transpose(1, 2)
    x = x.to(dtype)
    w = triton_rand(C, dtype=dtype) if affine else None
    b = triton_rand(C, dtype=dtype) if affine else None
    sc = triton_rand(N, C, dtype=dtype) * 0.5 if film else None
    sh = triton_rand(N, C, dtype=dtype) if film else None
    return (x, groups, w, b, 1e-5, sc, sh)


@needs_triton_group_norm
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("case", TRITON_GN_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine,film", [(True, True), (False, False), (True, False), (False, True)])
def test_triton_group_norm_silu_forward(dtype, case, channels_last, affine, film):
    shape, groups = case
    if shape == (1, 4, 64, 80) and not affine:
        pytest.skip("the multi-split case runs with affine only (the interpreter is slow)")
    args = gn_args(shape, groups, dtype, affine, film, channels_last)
    got = triton_forced("group_norm_silu", K.group_norm_silu, *args)
    assert got.shape == args[0].shape and got.dtype == dtype
    assert got.stride() == torch.empty_like(args[0]).stride()  # keeps the memory format
    if dtype == torch.float32:
        assert_close(got, eager("group_norm_silu", K.group_norm_silu, *args))
    else:
        lowp = eager("group_norm_silu", K.group_norm_silu, *args)
        ref = K.group_norm_silu_reference(*fp32(args))
        check_lowp_ulps(got, lowp, ref)


@needs_triton_group_norm
def test_triton_group_norm_silu_weight_none_bias_only_and_fp32_film_promotes():
    x = triton_rand(2, 8, 4, 4, dtype=torch.bfloat16)
    args = (x, 2, None, triton_rand(8, dtype=torch.bfloat16), 1e-5, triton_rand(2, 8), None)  # fp32 scale
    got = triton_forced("group_norm_silu", K.group_norm_silu, *args)
    want = eager("group_norm_silu", K.group_norm_silu, *args)
    assert got.dtype == want.dtype == torch.float32
    assert_error_within(got, want, K.group_norm_silu_reference(*fp32(args)), factor=2.0, floor=2e-2)


# ------------------------------------------------------------------------------ opcheck
@needs_triton_group_norm
def test_triton_opcheck_custom_ops():
    ops = torch.ops.ascan_triton
    xg = triton_rand(2, 8, 3, 5).to(memory_format=torch.channels_last)
    torch.library.opcheck(ops.group_norm_silu_fwd, (xg, 4, triton_rand(8), triton_rand(8), 1e-5, triton_rand(2, 8),
                                                    triton_rand(2, 8), torch.float32))
    torch.library.opcheck(ops.group_norm_silu_fwd, (xg.contiguous(), 2, None, None, 1e-5, None, None,
                                                    torch.float32))


# --------------------------------------------------------------------------- rejections
@needs_triton_group_norm
def test_triton_rejections_say_why():
    # spatial dims that do not flatten to one stride (neither NCHW nor channels_last)
    odd = triton_rand(2, 8, 5, 6).transpose(2, 3)
    assert "spatial dims must flatten" in triton_reason("group_norm_silu", K.group_norm_silu, odd, 4, None, None,
                                                        1e-5, None, None)
    assert "empty input" in triton_reason("group_norm_silu", K.group_norm_silu, triton_rand(0, 8, 2, 2), 4, None, None,
                                          1e-5, None, None)
    # forward only: a GroupNorm input that needs grad is refused, not silently detached
    xg = triton_rand(1, 4, 2, 2).requires_grad_()
    assert "no backward" in triton_reason("group_norm_silu", K.group_norm_silu, xg, 2, None, None, 1e-5, None,
                                          None)


# ============================================================================= cuda impl
# ------------------------------------------------------------------------- shared math: group norm
CUDA_GN_CASES = [  # (shape, groups)
    ((2, 8, 5, 3), 4), ((1, 32, 4, 4), 32), ((2, 12, 7, 1), 3), ((3, 6, 3), 2), ((1, 8, 2, 3, 3), 4), ((2, 16, 6, 6), 1)]


@needs_ops
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("film", [False, True], ids=["", "film"])
def test_cuda_group_norm_silu_matches_eager(dtype, channels_last, film):
    for i, (shape, G) in enumerate(CUDA_GN_CASES):
        if channels_last and len(shape) == 3:
            continue
        N, C = shape[:2]
        x = fmt(cpu_rand(*shape, seed=i, scale=3, offset=1).to(dtype), channels_last)
        w = cpu_rand(C, seed=i + 1, scale=0.5, offset=1) if i % 2 == 0 else None
        b = cpu_rand(C, seed=i + 2) if i % 3 != 1 else None
        sc = cpu_rand(N, C, seed=i + 3, scale=0.3) if film else None
        sh = cpu_rand(N, C, seed=i + 4, scale=0.3) if film else None
        out = torch.ops.ascan_C.group_norm_silu_reference(x, G, w, b, 1e-5, sc, sh)
        assert out.shape == x.shape and out.dtype == dtype and out.stride() == x.stride()
        ref32 = K.group_norm_silu_reference(x.float(), G, w, b, 1e-5, sc, sh)
        lowp = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        eager = K.group_norm_silu_reference(x, G, lowp(w), lowp(b), 1e-5, lowp(sc), lowp(sh))
        check_lowp(out, eager, ref32, dtype)


@needs_ops
def test_cuda_group_norm_large_offset_is_stable():
    x = cpu_rand(2, 4, 16, 16, scale=1.0, offset=1e4)
    out = torch.ops.ascan_C.group_norm_silu_reference(x, 2, None, None, 1e-5, None, None)
    ref = K.group_norm_silu_reference(x.double(), 2)
    # At 1e4 float32 itself quantises x to ~1e-3: compare with eager float32's own error.
    assert_error_within(out.double(), K.group_norm_silu_reference(x, 2).double(), ref, floor=1e-4)


# ------------------------------------------------------------------------- the cuda impl's Python glue
@needs_ops
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_group_norm_impl_glue_on_cpu(channels_last):
    x = fmt(cpu_rand(2, 8, 5, 5, scale=2), channels_last)
    w = cpu_rand(8, seed=1).to(torch.bfloat16)  # params of any float dtype: cast to float32 by the impl
    b, sc, sh = cpu_rand(8, seed=2), cpu_rand(2, 8, seed=3, scale=0.2), cpu_rand(2, 8, seed=4, scale=0.2)
    out = gn_cuda._group_norm_silu(x, 4, w, b, 1e-5, sc, sh)
    assert_close(out, K.group_norm_silu_reference(x, 4, w.float(), b, 1e-5, sc, sh))


# ------------------------------------------------------------------------- torch integration and bad input
@needs_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_opcheck_group_norm_silu(dtype):
    x4 = cpu_rand(2, 6, 3, 5).to(dtype)
    torch.library.opcheck(torch.ops.ascan_C.group_norm_silu_reference.default,
                          (fmt(x4, True), 3, cpu_rand(6), None, 1e-5, cpu_rand(2, 6), None))


def cuda_bad_cases():
    y = cpu_rand(2, 4, 3, 3)
    gn = torch.ops.ascan_C.group_norm_silu_reference if HAS_NORM_ACT else None
    return [
        ("gn_groups", lambda: gn(y, 3, None, None, 1e-5, None, None), "group_norm_silu: num_groups must be positive and divide C=4, got 3"),
        ("gn_scale", lambda: gn(y, 2, None, None, 1e-5, torch.zeros(4), None), r"group_norm_silu: scale must have shape \(2, 4\)"),
        ("gn_weight", lambda: gn(y, 2, torch.ones(4).double(), None, 1e-5, None, None), "group_norm_silu: weight must be float32"),
        ("gn_eps", lambda: gn(y, 2, None, None, float("nan"), None, None), "group_norm_silu: eps must be finite"),
    ]


@needs_ops
@pytest.mark.parametrize("case", cuda_bad_cases(), ids=lambda c: c[0])
def test_cuda_bad_input_names_the_op_and_problem(case):
    raises_ascan_error(*case)


@needs_ops
@pytest.mark.parametrize("name", ["group_norm_silu", "group_norm_silu_reference"])
def test_cuda_fake_kernel_keeps_layout(name):
    """The fake of the op (CPU and CUDA kernels) and of its CPU reference loop (one definition)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 4, 4, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        out = getattr(torch.ops.ascan_C, name)(x, 4, None, None, 1e-5, None, None)
    assert out.stride() == x.stride() and out.dtype == torch.bfloat16


# ------------------------------------------------------------------------- GPU parity (skip on CPU)
@needs_gpu
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu_group_norm_silu_parity(dtype, channels_last):
    for i, (shape, G) in enumerate(CUDA_GN_CASES + [((2, 320, 32, 32), 32), ((1, 64, 63, 65), 32)]):
        if channels_last and len(shape) == 3:
            continue
        N, C = shape[:2]
        x = fmt(cpu_rand(*shape, seed=i, scale=2, offset=0.5), channels_last).to("cuda", dtype)
        w, b = cpu_rand(C, seed=i + 1, offset=1).cuda(), cpu_rand(C, seed=i + 2).cuda()
        sc, sh = cpu_rand(N, C, seed=i + 3, scale=0.3).cuda(), cpu_rand(N, C, seed=i + 4, scale=0.3).cuda()
        with cuda_forced("group_norm_silu"):
            out = K.group_norm_silu(x, G, w, b, 1e-5, sc, sh)
        ref32 = K.group_norm_silu_reference(x.float(), G, w, b, 1e-5, sc, sh)
        eager = K.group_norm_silu_reference(x, G, w.to(dtype), b.to(dtype), 1e-5, sc.to(dtype), sh.to(dtype))
        assert out.stride() == x.stride()
        check_lowp(out, eager, ref32, dtype)
