"""Triton linear_gelu / linear_add (GEMM + fused epilogue) against the eager references.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets
TRITON_INTERPRET=1), on CUDA tensors otherwise.
"""
import pytest
import torch

import ascan_kernels as K
from ascan_kernels.testing import assert_close, assert_error_within, grads_by_impl

pytestmark = pytest.mark.skipif(K.available("linear_gelu")["triton"] != "ok",
                                reason=f"triton impl unavailable: {K.available('linear_gelu')['triton']}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (leading dims of x, N, K): ragged against every tile size, plus one aligned case
SHAPES = [((17,), 33, 40), ((2, 9), 20, 24), ((1,), 16, 16), ((3, 5), 64, 48)]


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def forced(op, fn, *args):
    with K.use(**{op: "triton"}), K.trace() as t:
        out = fn(*args)
    assert t.impls(op) == ["triton"]
    return out


def eager(op, fn, *args):
    with K.use(**{op: "eager"}):
        return fn(*args)


def fp32(ts):
    return [t.float() if isinstance(t, torch.Tensor) else t for t in ts]


def check(got, args, op, fn):
    """fp32: the eager result at fp32 tolerance (fp16's on a GPU, where tl.dot runs in
    tf32); fp16/bf16: no worse than twice eager's own error against fp32."""
    want = eager(op, fn, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == torch.float32:
        assert_close(got, want, dtype=torch.float16 if DEV == "cuda" else torch.float32)
    else:
        ref = eager(op, fn, *fp32(args))
        floor = 4 * torch.finfo(got.dtype).eps * max(1.0, ref.abs().max().item())
        assert_error_within(got, want, ref, factor=2.0, floor=floor)


def lin_args(lead, N, Kd, dtype, bias=True):
    return rand(*lead, Kd, dtype=dtype), rand(N, Kd, dtype=dtype, scale=Kd ** -0.5), \
        (rand(N, dtype=dtype) if bias else None)


# -------------------------------------------------------------------------- linear_gelu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu_forward(dtype, shape, approximate):
    lead, N, Kd = shape
    args = (*lin_args(lead, N, Kd, dtype), approximate)
    check(forced("linear_gelu", K.linear_gelu, *args), args, "linear_gelu", K.linear_gelu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_gelu_no_bias_and_strided_weight(dtype):
    x = rand(7, 40, dtype=dtype)
    w = rand(40, 33, dtype=dtype, scale=40 ** -0.5).t()  # (N, K) view with K-stride 33
    args = (x, w, None, "none")
    check(forced("linear_gelu", K.linear_gelu, *args), args, "linear_gelu", K.linear_gelu)


# --------------------------------------------------------------------------- linear_add
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_add_forward(dtype, shape, bias):
    lead, N, Kd = shape
    args = (*lin_args(lead, N, Kd, dtype, bias), rand(*lead, N, dtype=dtype))
    check(forced("linear_add", K.linear_add, *args), args, "linear_add", K.linear_add)


def test_linear_add_strided_residual():
    x, w, b = lin_args((6,), 20, 24, torch.float32)
    res = rand(20, 6).t()  # (M, N) view, column-major
    args = (x, w, b, res)
    check(forced("linear_add", K.linear_add, *args), args, "linear_add", K.linear_add)


# ---------------------------------------------------------------------------- gradients
def _grads(op, fn, ins, dtype):
    low = [t.to(dtype) for t in ins]
    got = grads_by_impl(op, ("triton",), fn, low)["triton"]
    if dtype == torch.float32:
        want = grads_by_impl(op, ("eager",), fn, ins)["eager"]
        for g, e in zip(got, want):
            assert_close(g, e, dtype=torch.float16 if DEV == "cuda" else torch.float32)
        return
    lowp = grads_by_impl(op, ("eager",), fn, low)["eager"]
    ref = grads_by_impl(op, ("eager",), fn, ins)["eager"]
    for g, lo, r in zip(got, lowp, ref):
        assert g.dtype == dtype
        floor = 4 * torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
        assert_error_within(g, lo, r, factor=2.0, floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu_gradients(dtype, approximate):
    ins = list(lin_args((2, 9), 33, 40, torch.float32))
    _grads("linear_gelu", lambda x, w, b: K.linear_gelu(x, w, b, approximate), ins, dtype)


def test_linear_gelu_gradients_without_saved_preactivation():
    # Called without save_pre (as under no_grad) but differentiated anyway: the backward
    # recomputes the pre-activation.
    x, w, b = lin_args((5,), 20, 24, torch.float32)
    w.requires_grad_()
    y, pre = torch.ops.ascan_triton.linear_gelu_fwd(x, w, b, "none", False)
    assert pre.numel() == 0
    y.sum().backward()
    w2 = w.detach().clone().requires_grad_()
    torch.nn.functional.gelu(torch.nn.functional.linear(x, w2, b)).sum().backward()
    assert_close(w.grad, w2.grad, dtype=torch.float16 if DEV == "cuda" else torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_add_gradients(dtype):
    x, w, b = lin_args((2, 9), 33, 40, torch.float32)
    _grads("linear_add", lambda x, w, b, r: K.linear_add(x, w, b, r), [x, w, b, rand(2, 9, 33)], dtype)


# ------------------------------------------------------------------------------ autocast
def test_autocast_computes_in_the_autocast_dtype():
    x, w, b = lin_args((17,), 33, 40, torch.float32)
    res = rand(17, 33)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        got = forced("linear_gelu", K.linear_gelu, x, w, b, "none")
        want = eager("linear_gelu", K.linear_gelu, x, w, b, "none")
        got_add = forced("linear_add", K.linear_add, x, w, b, res)
        want_add = eager("linear_add", K.linear_add, x, w, b, res)
    assert got.dtype == want.dtype == torch.bfloat16
    assert got_add.dtype == want_add.dtype == torch.float32  # bf16 matmul + fp32 residual
    assert_close(got, want, dtype=torch.bfloat16)
    assert_close(got_add, want_add, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------ opcheck
def test_opcheck_custom_ops():
    ops = torch.ops.ascan_triton
    x, w, b = lin_args((17,), 33, 40, torch.float32)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(ops.linear_gelu_fwd, (x, w, b, "none", True))
    torch.library.opcheck(ops.linear_gelu_fwd, (x, w, None, "tanh", False))
    r = rand(17, 33).requires_grad_()
    torch.library.opcheck(ops.linear_add_fwd, (x, w, b, r))
    torch.library.opcheck(ops.linear_add_fwd, (x.detach().reshape(1, 17, 40), w.detach(), None,
                                               rand(1, 17, 33)))


# --------------------------------------------------------------------------- rejections
def reason(op, fn, *args):
    with K.use(**{op: "triton"}), pytest.raises(K.KernelUnavailableError) as e:
        fn(*args)
    return str(e.value)


def test_rejections_say_why():
    x64, w64 = torch.randn(4, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    assert "float64 not supported" in reason("linear_gelu", K.linear_gelu, x64, w64, None, "none")
    assert "empty input" in reason("linear_gelu", K.linear_gelu, rand(0, 16), rand(8, 16), None, "none")
    assert "empty input" in reason("linear_add", K.linear_add, rand(4, 16), rand(0, 16), None, rand(4, 0))
    meta = torch.empty(4, 16, device="meta")
    assert "device meta" in reason("linear_add", K.linear_add, meta, torch.empty(8, 16, device="meta"), None,
                                   torch.empty(4, 8, device="meta"))


@pytest.mark.skipif(DEV != "cpu", reason="the interpreter rule applies to CPU tensors")
def test_cpu_tensors_are_not_auto_selected():
    with K.trace() as t:
        K.linear_gelu(rand(3, 16), rand(8, 16))
    assert t.impls("linear_gelu") != ["triton"]
    assert "interpreter" in t.records[0].why
