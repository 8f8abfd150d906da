"""Triton layer_norm, add_layer_norm, group_norm_silu against the eager references.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets
TRITON_INTERPRET=1), on CUDA tensors otherwise.
"""
import pytest
import torch

import ascan_kernels as K
from ascan_kernels.testing import assert_close, assert_error_within, grads_by_impl

pytestmark = pytest.mark.skipif(K.available("layer_norm")["triton"] != "ok",
                                reason=f"triton impl unavailable: {K.available('layer_norm')['triton']}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEV).to(dtype)


def forced(op, fn, *args):
    """Run ``fn(*args)`` with ``op`` forced to the triton impl; check it ran."""
    with K.use(**{op: "triton"}), K.trace() as t:
        out = fn(*args)
    assert t.impls(op) == ["triton"]
    return out


def eager(op, fn, *args):
    with K.use(**{op: "eager"}):
        return fn(*args)


def check_lowp(got, lowp, ref):
    """Low precision: no worse than twice eager's own error against fp32 (plus a few ulps)."""
    floor = 4 * torch.finfo(got.dtype).eps * max(1.0, ref.abs().max().item())
    assert_error_within(got, lowp, ref, factor=2.0, floor=floor)


def fp32(ts):
    return [t.float() if isinstance(t, torch.Tensor) else t for t in ts]


# --------------------------------------------------------------------------- layer_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32), (7, 200), (3, 11, 513), (2, 4096)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_forward(dtype, shape, affine):
    C = shape[-1]
    args = (rand(*shape, dtype=dtype) * 3 + 1, rand(C, dtype=dtype) if affine else None,
            rand(C, dtype=dtype) if affine else None, 1e-5)
    got = forced("layer_norm", K.layer_norm, *args)
    want = eager("layer_norm", K.layer_norm, *args)
    assert got.shape == want.shape and got.dtype == dtype
    assert_close(got, want)


def test_layer_norm_strided_rows_and_mixed_weight_dtype():
    base = rand(9, 2 * 200)
    x = base[:, ::2]                            # rows with a column stride of 2: no copy
    w, b = rand(200), rand(200)
    got = forced("layer_norm", K.layer_norm, x, w, b, 1e-6)
    assert_close(got, eager("layer_norm", K.layer_norm, x, w, b, 1e-6))
    xb = rand(5, 64, dtype=torch.bfloat16)   # bf16 activations, fp32 affine
    got = forced("layer_norm", K.layer_norm, xb, rand(64), rand(64), 1e-5)
    assert got.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 200), (2, 3, 33)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_gradients(dtype, shape, affine):
    C = shape[-1]
    ins = [rand(*shape) * 2 + 0.5] + ([rand(C), rand(C)] if affine else [])
    fn = (lambda x, w, b: K.layer_norm(x, w, b)) if affine else (lambda x: K.layer_norm(x))
    low = [t.to(dtype) for t in ins]
    got = grads_by_impl("layer_norm", ("triton",), fn, low)["triton"]
    if dtype == torch.float32:
        for g, e in zip(got, grads_by_impl("layer_norm", ("eager",), fn, ins)["eager"]):
            assert_close(g, e)
        return
    lowp = grads_by_impl("layer_norm", ("eager",), fn, low)["eager"]
    ref = grads_by_impl("layer_norm", ("eager",), fn, ins)["eager"]
    for g, lo, r in zip(got, lowp, ref):
        assert g.dtype == dtype
        check_lowp(g, lo, r)


# ----------------------------------------------------------------------- add_layer_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32), (33, 200), (2, 7, 513)])
def test_add_layer_norm_forward(dtype, shape):
    C = shape[-1]
    args = (rand(*shape, dtype=dtype), rand(*shape, dtype=dtype), rand(C, dtype=dtype), rand(C, dtype=dtype), 1e-5)
    s, y = forced("add_layer_norm", K.add_layer_norm, *args)
    s_ref, y_ref = eager("add_layer_norm", K.add_layer_norm, *args)
    assert s.dtype == y.dtype == dtype
    # one rounding of the same sum (the interpreter truncates where a GPU rounds to nearest)
    exact = args[0].float() + args[1].float()
    assert ((s.float() - exact).abs() <= torch.finfo(dtype).eps * exact.abs()).all()
    assert_close(s, s_ref)
    assert_close(y, y_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_add_layer_norm_gradients(dtype, affine):
    shape, C = (3, 5, 200), 200
    ins = [rand(*shape), rand(*shape)] + ([rand(C), rand(C)] if affine else [])
    fn = ((lambda x, r, w, b: K.add_layer_norm(x, r, w, b)) if affine
          else (lambda x, r: K.add_layer_norm(x, r)))
    low = [t.to(dtype) for t in ins]
    got = grads_by_impl("add_layer_norm", ("triton",), fn, low)["triton"]
    if dtype == torch.float32:
        for g, e in zip(got, grads_by_impl("add_layer_norm", ("eager",), fn, ins)["eager"]):
            assert_close(g, e)
        return
    lowp = grads_by_impl("add_layer_norm", ("eager",), fn, low)["eager"]
    ref = grads_by_impl("add_layer_norm", ("eager",), fn, ins)["eager"]
    for g, lo, r in zip(got, lowp, ref):
        check_lowp(g, lo, r)


# ---------------------------------------------------------------------- group_norm_silu
GN_CASES = [  # (shape, groups)
    ((2, 8, 5, 3), 4),
    ((1, 12, 7, 9), 3),
    ((3, 6, 11), 2),              # 1-D spatial
    ((1, 4, 64, 80), 1),          # big enough for several splits per group
]


def gn_args(shape, groups, dtype, affine, film, channels_last):
    N, C = shape[:2]
    x = rand(*shape) * 2 + 3  # an offset mean: the statistics must not cancel
    if channels_last:
        x = x.to(memory_format=torch.channels_last) if x.dim() == 4 else x.transpose(1, 2).contiguous().transpose(1, 2)
    x = x.to(dtype)
    w = rand(C, dtype=dtype) if affine else None
    b = rand(C, dtype=dtype) if affine else None
    sc = rand(N, C, dtype=dtype) * 0.5 if film else None
    sh = rand(N, C, dtype=dtype) if film else None
    return (x, groups, w, b, 1e-5, sc, sh)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GN_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine,film", [(True, True), (False, False), (True, False), (False, True)])
def test_group_norm_silu_forward(dtype, case, channels_last, affine, film):
    shape, groups = case
    if shape == (1, 4, 64, 80) and not affine:
        pytest.skip("the multi-split case runs with affine only (the interpreter is slow)")
    args = gn_args(shape, groups, dtype, affine, film, channels_last)
    got = forced("group_norm_silu", K.group_norm_silu, *args)
    assert got.shape == args[0].shape and got.dtype == dtype
    assert got.stride() == torch.empty_like(args[0]).stride()  # keeps the memory format
    if dtype == torch.float32:
        assert_close(got, eager("group_norm_silu", K.group_norm_silu, *args))
    else:
        lowp = eager("group_norm_silu", K.group_norm_silu, *args)
        ref = K.group_norm_silu_reference(*fp32(args))
        check_lowp(got, lowp, ref)


def test_group_norm_silu_weight_none_bias_only_and_fp32_film_promotes():
    x = rand(2, 8, 4, 4, dtype=torch.bfloat16)
    args = (x, 2, None, rand(8, dtype=torch.bfloat16), 1e-5, rand(2, 8), None)  # fp32 scale
    got = forced("group_norm_silu", K.group_norm_silu, *args)
    want = eager("group_norm_silu", K.group_norm_silu, *args)
    assert got.dtype == want.dtype == torch.float32
    assert_error_within(got, want, K.group_norm_silu_reference(*fp32(args)), factor=2.0, floor=2e-2)


# ------------------------------------------------------------------------------ opcheck
def test_opcheck_custom_ops():
    ops = torch.ops.ascan_triton
    x = rand(5, 40, dtype=torch.float32).requires_grad_()
    w, b = rand(40).requires_grad_(), rand(40).requires_grad_()
    torch.library.opcheck(ops.layer_norm_fwd, (x, w, b, 1e-5, torch.float32))
    torch.library.opcheck(ops.layer_norm_fwd, (x, None, None, 1e-5, torch.float32))
    r = rand(5, 40).requires_grad_()
    torch.library.opcheck(ops.add_layer_norm_fwd, (x, r, w, b, 1e-5, torch.float32))
    xd = x.detach()
    _, mean, rstd = ops.layer_norm_fwd(xd, w.detach(), None, 1e-5, torch.float32)
    torch.library.opcheck(ops.layer_norm_bwd, (rand(5, 40), xd, w.detach(), mean, rstd, None))
    torch.library.opcheck(ops.layer_norm_bwd, (rand(5, 40), xd, None, mean, rstd, rand(5, 40)))
    xg = rand(2, 8, 3, 5).to(memory_format=torch.channels_last)
    torch.library.opcheck(ops.group_norm_silu_fwd, (xg, 4, rand(8), rand(8), 1e-5, rand(2, 8), rand(2, 8),
                                                    torch.float32))
    torch.library.opcheck(ops.group_norm_silu_fwd, (xg.contiguous(), 2, None, None, 1e-5, None, None,
                                                    torch.float32))


# --------------------------------------------------------------------------- rejections
def reason(op, fn, *args):
    with K.use(**{op: "triton"}), pytest.raises(K.KernelUnavailableError) as e:
        fn(*args)
    return str(e.value)


def test_rejections_say_why():
    x64 = torch.randn(4, 32, dtype=torch.float64, device=DEV)
    assert "float64 not supported" in reason("layer_norm", K.layer_norm, x64, None, None, 1e-5)
    assert "empty input" in reason("layer_norm", K.layer_norm, rand(0, 32), None, None, 1e-5)
    assert "must fit one block" in reason("layer_norm", K.layer_norm, rand(2, 5000), None, None, 1e-5)
    assert "device meta" in reason("layer_norm", K.layer_norm, torch.empty(4, 32, device="meta"), None, None, 1e-5)
    assert "float64 not supported" in reason("add_layer_norm", K.add_layer_norm, x64, x64, None, None, 1e-5)
    w64 = torch.randn(32, dtype=torch.float64, device=DEV)
    # fp32 x with fp64 weight: rejected by the op's validation (as F.layer_norm rejects it)
    with pytest.raises(TypeError, match="layer_norm: weight is torch.float64 but x is torch.float32"):
        K.layer_norm(rand(4, 32), w64, None, 1e-5)
    # spatial dims that do not flatten to one stride (neither NCHW nor channels_last)
    odd = rand(2, 8, 5, 6).transpose(2, 3)
    assert "spatial dims must flatten" in reason("group_norm_silu", K.group_norm_silu, odd, 4, None, None, 1e-5,
                                                 None, None)
    assert "empty input" in reason("group_norm_silu", K.group_norm_silu, rand(0, 8, 2, 2), 4, None, None, 1e-5,
                                   None, None)
    # forward only: a GroupNorm input that needs grad is refused, not silently detached
    xg = rand(1, 4, 2, 2).requires_grad_()
    assert "no backward" in reason("group_norm_silu", K.group_norm_silu, xg, 2, None, None, 1e-5, None, None)


@pytest.mark.skipif(DEV != "cpu", reason="the interpreter rule applies to CPU tensors")
def test_cpu_tensors_are_not_auto_selected():
    with K.trace() as t:
        K.layer_norm(rand(3, 16))
    assert t.impls("layer_norm") != ["triton"]
    assert "interpreter" in t.records[0].why
