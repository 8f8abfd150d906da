"""The fast CPU group_norm_silu (ascan_C::group_norm_silu_cpu, impl "cpu"): numbers against
the eager reference, both memory formats, ragged shapes, cancellation, rejections, opcheck,
torch.compile, every instruction-set variant, and the UNet on top of it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import ascan_kernels as K
from ascan_kernels.ops.group_norm import group_norm_silu_reference as reference
from ascan_kernels.testing import assert_close, assert_error_within

pytestmark = pytest.mark.skipif(K.available("group_norm_silu").get("cpu") != "ok",
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


@pytest.mark.parametrize("film", [True, False], ids=["film", "nofilm"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape, fmt, affine, film):
    args = _make(shape, torch.float32, fmt, affine=affine, film=film)
    out = _run_cpu(args)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert out.stride() == args[0].stride()  # the input's memory format
    assert_close(out, reference(*args))


@pytest.mark.parametrize("film", [True, False], ids=["film", "nofilm"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_error_within_eager(shape, fmt, film):
    """bf16 in and out, computed in fp32 and rounded once: no worse than eager bf16
    (which rounds after group_norm, the FiLM multiply and add, and silu)."""
    args = _make(shape, torch.bfloat16, fmt, film=film)
    out = _run_cpu(args)
    assert out.dtype == torch.bfloat16 and out.stride() == args[0].stride()
    assert_error_within(out, reference(*args), reference(*_f32(args)), factor=1.0, floor=1e-2)


@pytest.mark.parametrize("x_dtype,vec_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.float32, torch.float64), (torch.bfloat16, torch.float16)])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mixed_vector_dtypes(x_dtype, vec_dtype, fmt):
    """The kernel widens weight/bias/scale/shift of any float dtype to fp32 up front and
    writes x's dtype."""
    args = _make((3, 40, 7, 9, 8), x_dtype, fmt, vec_dtype=vec_dtype)
    x, G, w, b, eps, sc, sh = args
    out = torch.ops.ascan_C.group_norm_silu_cpu(x, G, w, b, eps, sc, sh)
    assert out.dtype == x_dtype
    assert_close(out, reference(*_f32(args)).to(x_dtype), dtype=x_dtype)


def test_op_returns_the_references_dtype_under_promotion():
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


@pytest.mark.parametrize("x_dtype,p_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float64),
                                             (torch.bfloat16, torch.float16), (torch.float64, torch.float32)])
def test_op_rejects_param_dtypes_pytorch_rejects(x_dtype, p_dtype):
    x, G, w, b, eps, _, _ = _make((2, 32, 5, 5, 8), x_dtype, "nchw", vec_dtype=p_dtype, film=False)
    with pytest.raises(TypeError, match=r"ascan_kernels.group_norm_silu: weight is .* but x is"):
        K.group_norm_silu(x, G, w, b, eps)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype,offset,atol", [(torch.float32, 1e4, 2e-2), (torch.bfloat16, 256.0, 6e-2)])
def test_large_mean_no_cancellation(fmt, dtype, offset, atol):
    """mean >> spread: E[x^2] - E[x]^2 in fp32 would lose every digit of the variance (as
    eager's channels_last GroupNorm does at 1e4); two-pass statistics and the centred
    apply keep the result close to a float64 reference on the same inputs."""
    args = _make((2, 64, 16, 16, 32), dtype, fmt, offset=offset)
    out = _run_cpu(args)
    want = reference(*_f64(args))
    err = (out.double() - want).abs().max().item()
    assert err < atol, f"max error {err:.3e} vs float64 reference (mean {offset:g})"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_matches_cpp_scalar_reference(fmt):
    """The CUDA kernels' scalar CPU reference (ascan_C::group_norm_silu, the shared
    per-element math) and this kernel agree."""
    args = _make((3, 40, 7, 9, 8), torch.float32, fmt)
    want = torch.ops.ascan_C.group_norm_silu(*args)
    assert_close(_run_cpu(args), want)


def test_auto_selected_and_traced():
    args = _make((2, 64, 8, 8, 32), torch.float32, "cl")
    with torch.no_grad(), K.trace() as tr:
        K.group_norm_silu(*args)
    assert tr.impls(OP) == ["cpu"]


def test_requires_grad_falls_back_to_eager():
    x, *rest = _make((2, 64, 8, 8, 32), torch.float32, "nchw")
    x.requires_grad_()
    with K.trace() as tr:
        K.group_norm_silu(x, *rest).sum().backward()
    assert tr.impls(OP) == ["eager"] and x.grad is not None


def test_empty_batch():
    x = torch.randn(0, 32, 4, 4)
    out = torch.ops.ascan_C.group_norm_silu_cpu(x, 8, None, None, 1e-5, None, None)
    assert out.shape == x.shape


@pytest.mark.parametrize("make,reason", [
    (lambda: _make((2, 32, 4, 4, 8), torch.float16, "nchw"), "dtype torch.float16 not supported"),
    (lambda: _make((2, 32, 4, 4, 8), torch.float64, "nchw"), "dtype torch.float64 not supported"),
    (lambda: (torch.randn(2, 32, 16), 8, None, None, 1e-5, None, None), "x must be 4-D"),
    (lambda: (torch.randn(2, 32, 2, 4, 4), 8, None, None, 1e-5, None, None), "x must be 4-D"),
    (lambda: (torch.randn(2, 32, 8, 8)[:, :, ::2], 8, None, None, 1e-5, None, None),
     "must be contiguous (NCHW) or channels_last"),
    (lambda: (torch.randn(2, 8, 8, 32).permute(0, 3, 2, 1), 8, None, None, 1e-5, None, None),
     "must be contiguous (NCHW) or channels_last"),
])
def test_forced_rejections(make, reason):
    args = make()
    with K.use(**{OP: "cpu"}), pytest.raises(K.KernelUnavailableError, match=f"'cpu'.*{re.escape(reason)}"):
        K.group_norm_silu(*args)


def test_forced_with_grad_is_rejected():
    x, *rest = _make((2, 32, 4, 4, 8), torch.float32, "nchw")
    x.requires_grad_()
    with K.use(**{OP: "cpu"}), pytest.raises(K.KernelUnavailableError, match="no backward"):
        K.group_norm_silu(x, *rest)


def test_cpp_checks():
    op = torch.ops.ascan_C.group_norm_silu_cpu
    x = torch.randn(2, 32, 4, 4)
    with pytest.raises(RuntimeError, match="num_groups must be positive and divide C=32"):
        op(x, 5, None, None, 1e-5, None, None)
    with pytest.raises(RuntimeError, match=r"scale must have shape \[2, 32\]"):
        op(x, 8, None, None, 1e-5, torch.randn(32), None)
    with pytest.raises(RuntimeError, match="weight must be a floating tensor"):
        op(x, 8, torch.ones(32, dtype=torch.int32), None, 1e-5, None, None)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        op(x.half(), 8, None, None, 1e-5, None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("optional", [True, False], ids=["all", "none"])
def test_opcheck(dtype, fmt, optional):
    args = _make((3, 40, 7, 9, 8), dtype, fmt, affine=optional, film=optional)
    torch.library.opcheck(torch.ops.ascan_C.group_norm_silu_cpu, args)


def test_torch_compile_traces_it():
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
    from ascan_kernels.ops.group_norm import group_norm_silu_reference as ref
    print(load_extension()[0].cpu_kernel_isa())
    g = torch.Generator().manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(3, 40, 7, 9, generator=g).to(dt).contiguous(memory_format=fmt)
            w, b = torch.randn(40, generator=g), torch.randn(40, generator=g)
            sc, sh = torch.randn(3, 40, generator=g) * 0.1, torch.randn(3, 40, generator=g) * 0.1
            out = torch.ops.ascan_C.group_norm_silu_cpu(x, 8, w, b, 1e-5, sc, sh)
            want = ref(x.float(), 8, w, b, 1e-5, sc, sh)
            tol = 1e-4 if dt == torch.float32 else 3e-2
            torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)
    print("ok")
""")


@pytest.mark.parametrize("capability,isa", [("default", "base"), ("avx2", "avx2"), ("avx512", "avx512")])
def test_every_isa_variant(capability, isa):
    """ATEN_CPU_CAPABILITY lowers the kernels' instruction set too (a fresh process)."""
    if isa == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    if isa == "avx512" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU (or torch build) has no AVX512 kernels")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [isa, "ok"]


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
