"""linear_gelu / linear_add: each impl against the eager reference.

* the parity matrix over the impls that run natively here (``native_impls``: ``cpu``,
  oneDNN), gradients, bad input, the ``cpu`` impl's oneDNN custom op;
* ``triton`` (GEMM + fused epilogue): under Triton's CPU interpreter when there is no GPU
  (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA tensors otherwise.
"""
import pytest
import torch

import ascan_kernels as K
from ascan_kernels.testing import (assert_close, assert_error_within, grads_by_impl, native_impls,
                                   skip_if_machine_lacks)

from _helpers import KERNEL_DTYPES, TRITON_DEV, eager, fp32, needs_triton, triton_forced, triton_rand, triton_reason


def fused_impls(op):
    return native_impls(op)


# -------------------------------------------------------------------------- linear_gelu
@pytest.mark.parametrize("impl", fused_impls("linear_gelu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 37, 24), (5, 64), (1, 1, 1, 8)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu_matches_reference(impl, dtype, shape, approximate):
    skip_if_machine_lacks("linear_gelu", impl, dtype)
    x = torch.randn(*shape).to(dtype)
    w = (torch.randn(48, shape[-1]) / shape[-1] ** 0.5).to(dtype)
    b = torch.randn(48).to(dtype)
    with torch.no_grad():
        with K.use(linear_gelu=impl):
            got = K.linear_gelu(x, w, b, approximate)
        want = K.linear_gelu_reference(x, w, b, approximate)
    assert got.shape == (*shape[:-1], 48) and got.dtype == dtype
    if dtype == torch.float32:
        assert_close(got, want)
    else:
        ref = K.linear_gelu_reference(x.float(), w.float(), b.float(), approximate)
        assert_error_within(got, want, ref, factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", fused_impls("linear_gelu"))
def test_linear_gelu_gradients(impl):
    inputs = (torch.randn(4, 7, 12), torch.randn(20, 12) * 0.3, torch.randn(20))
    grads = grads_by_impl("linear_gelu", (impl, "eager"), K.linear_gelu, inputs)
    for a, b_ in zip(grads[impl], grads["eager"]):
        assert_close(a, b_)


def test_linear_gelu_bad_input():
    x, w = torch.randn(4, 12), torch.randn(20, 12)
    with pytest.raises(ValueError, match=r"linear_gelu: x last dim 11 != weight in_features 12"):
        K.linear_gelu(x[:, :11], w)
    with pytest.raises(ValueError, match=r"linear_gelu: bias must have shape \(20,\)"):
        K.linear_gelu(x, w, torch.zeros(3))
    with pytest.raises(TypeError, match=r"linear_gelu: x must be a floating-point tensor"):
        K.linear_gelu(x.int(), w)
    with pytest.raises(ValueError, match=r"linear_gelu: weight must be 2-D"):
        K.linear_gelu(x, w[None])


@pytest.mark.skipif(K.available("linear_gelu").get("cpu") != "ok", reason="oneDNN path unavailable")
def test_opcheck_linear_act():
    x, w, b = torch.randn(3, 5, 8), torch.randn(6, 8), torch.randn(6)
    r = torch.randn(3, 5, 6)
    torch.library.opcheck(torch.ops.ascan.linear_act.default, (x, w, b, None, "gelu"))
    torch.library.opcheck(torch.ops.ascan.linear_act.default, (x, w, None, r, "none"))
    torch.library.opcheck(torch.ops.ascan.linear_act.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), None, "gelu_tanh"))
    torch.library.opcheck(torch.ops.ascan.linear_act.default, (x, w, b, r.requires_grad_(), "none"))


# --------------------------------------------------------------------------- linear_add
@pytest.mark.parametrize("impl", fused_impls("linear_add"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 37, 24), (5, 64), (1, 1, 1, 8)])
def test_linear_add_matches_reference(impl, dtype, shape):
    skip_if_machine_lacks("linear_add", impl, dtype)
    x = torch.randn(*shape).to(dtype)
    w = (torch.randn(48, shape[-1]) / shape[-1] ** 0.5).to(dtype)
    b = torch.randn(48).to(dtype)
    r = torch.randn(*shape[:-1], 48).to(dtype)
    with torch.no_grad():
        with K.use(linear_add=impl), K.trace() as t:
            got = K.linear_add(x, w, b, r)
        assert t.impls() == [impl]
        want = K.linear_add_reference(x, w, b, r)
    if dtype == torch.float32:
        assert_close(got, want)
    else:
        ref = K.linear_add_reference(x.float(), w.float(), b.float(), r.float())
        assert_error_within(got, want, ref, factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", fused_impls("linear_add"))
def test_linear_add_gradients(impl):
    inputs = (torch.randn(4, 7, 12), torch.randn(20, 12) * 0.3, torch.randn(20), torch.randn(4, 7, 20))
    grads = grads_by_impl("linear_add", (impl, "eager"), K.linear_add, inputs)
    for a, b_ in zip(grads[impl], grads["eager"]):
        assert_close(a, b_)


def test_linear_add_bad_input():
    x, w = torch.randn(4, 12), torch.randn(20, 12)
    with pytest.raises(ValueError, match=r"linear_add: residual must have shape \(4, 20\)"):
        K.linear_add(x, w, None, torch.zeros(4, 19))
    with pytest.raises(TypeError, match=r"linear_add: dtypes must match"):
        K.linear_add(x, w, None, torch.zeros(4, 20, dtype=torch.float64))


# =========================================================================== triton impl
needs_triton_linear = needs_triton("linear_gelu")
# (leading dims of x, N, K): ragged against every tile size, plus one aligned case
SHAPES = [((17,), 33, 40), ((2, 9), 20, 24), ((1,), 16, 16), ((3, 5), 64, 48)]


def check(got, args, op, fn):
    """fp32: the eager result at fp32 tolerance (fp16's on a GPU, where tl.dot runs in
    tf32); fp16/bf16: no worse than twice eager's own error against fp32."""
    want = eager(op, fn, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == torch.float32:
        assert_close(got, want, dtype=torch.float16 if TRITON_DEV == "cuda" else torch.float32)
    else:
        ref = eager(op, fn, *fp32(args))
        floor = 4 * torch.finfo(got.dtype).eps * max(1.0, ref.abs().max().item())
        assert_error_within(got, want, ref, factor=2.0, floor=floor)


def lin_args(lead, N, Kd, dtype, bias=True):
    return triton_rand(*lead, Kd, dtype=dtype), triton_rand(N, Kd, dtype=dtype, scale=Kd ** -0.5), \
        (triton_rand(N, dtype=dtype) if bias else None)


# -------------------------------------------------------------------------- linear_gelu
@needs_triton_linear
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_triton_linear_gelu_forward(dtype, shape, approximate):
    lead, N, Kd = shape
    args = (*lin_args(lead, N, Kd, dtype), approximate)
    check(triton_forced("linear_gelu", K.linear_gelu, *args), args, "linear_gelu", K.linear_gelu)


@needs_triton_linear
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_triton_linear_gelu_no_bias_and_strided_weight(dtype):
    x = triton_rand(7, 40, dtype=dtype)
    w = triton_rand(40, 33, dtype=dtype, scale=40 ** -0.5).t()  # (N, K) view with K-stride 33
    args = (x, w, None, "none")
    check(triton_forced("linear_gelu", K.linear_gelu, *args), args, "linear_gelu", K.linear_gelu)


# --------------------------------------------------------------------------- linear_add
@needs_triton_linear
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_triton_linear_add_forward(dtype, shape, bias):
    lead, N, Kd = shape
    args = (*lin_args(lead, N, Kd, dtype, bias), triton_rand(*lead, N, dtype=dtype))
    check(triton_forced("linear_add", K.linear_add, *args), args, "linear_add", K.linear_add)


@needs_triton_linear
def test_triton_linear_add_strided_residual():
    x, w, b = lin_args((6,), 20, 24, torch.float32)
    res = triton_rand(20, 6).t()  # (M, N) view, column-major
    args = (x, w, b, res)
    check(triton_forced("linear_add", K.linear_add, *args), args, "linear_add", K.linear_add)


# ---------------------------------------------------------------------------- gradients
def _grads(op, fn, ins, dtype):
    low = [t.to(dtype) for t in ins]
    got = grads_by_impl(op, ("triton",), fn, low)["triton"]
    if dtype == torch.float32:
        want = grads_by_impl(op, ("eager",), fn, ins)["eager"]
        for g, e in zip(got, want):
            assert_close(g, e, dtype=torch.float16 if TRITON_DEV == "cuda" else torch.float32)
        return
    lowp = grads_by_impl(op, ("eager",), fn, low)["eager"]
    ref = grads_by_impl(op, ("eager",), fn, ins)["eager"]
    for g, lo, r in zip(got, lowp, ref):
        assert g.dtype == dtype
        floor = 4 * torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
        assert_error_within(g, lo, r, factor=2.0, floor=floor)


@needs_triton_linear
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_triton_linear_gelu_gradients(dtype, approximate):
    ins = list(lin_args((2, 9), 33, 40, torch.float32))
    _grads("linear_gelu", lambda x, w, b: K.linear_gelu(x, w, b, approximate), ins, dtype)


@needs_triton_linear
def test_triton_linear_gelu_gradients_without_saved_preactivation():
    # Called without save_pre (as under no_grad) but differentiated anyway: the backward
    # recomputes the pre-activation.
    x, w, b = lin_args((5,), 20, 24, torch.float32)
    w.requires_grad_()
    y, pre = torch.ops.ascan_triton.linear_gelu_fwd(x, w, b, "none", False)
    assert pre.numel() == 0
    y.sum().backward()
    w2 = w.detach().clone().requires_grad_()
    torch.nn.functional.gelu(torch.nn.functional.linear(x, w2, b)).sum().backward()
    assert_close(w.grad, w2.grad, dtype=torch.float16 if TRITON_DEV == "cuda" else torch.float32)


@needs_triton_linear
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_triton_linear_add_gradients(dtype):
    x, w, b = lin_args((2, 9), 33, 40, torch.float32)
    _grads("linear_add", lambda x, w, b, r: K.linear_add(x, w, b, r), [x, w, b, triton_rand(2, 9, 33)], dtype)


# ------------------------------------------------------------------------------ autocast
@needs_triton_linear
def test_triton_autocast_computes_in_the_autocast_dtype():
    x, w, b = lin_args((17,), 33, 40, torch.float32)
    res = triton_rand(17, 33)
    with torch.autocast(TRITON_DEV, dtype=torch.bfloat16):
        got = triton_forced("linear_gelu", K.linear_gelu, x, w, b, "none")
        want = eager("linear_gelu", K.linear_gelu, x, w, b, "none")
        got_add = triton_forced("linear_add", K.linear_add, x, w, b, res)
        want_add = eager("linear_add", K.linear_add, x, w, b, res)
    assert got.dtype == want.dtype == torch.bfloat16
    assert got_add.dtype == want_add.dtype == torch.float32  # bf16 matmul + fp32 residual
    assert_close(got, want, dtype=torch.bfloat16)
    assert_close(got_add, want_add, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------ opcheck
@needs_triton_linear
def test_triton_opcheck_custom_ops():
    ops = torch.ops.ascan_triton
    x, w, b = lin_args((17,), 33, 40, torch.float32)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(ops.linear_gelu_fwd, (x, w, b, "none", True))
    torch.library.opcheck(ops.linear_gelu_fwd, (x, w, None, "tanh", False))
    r = triton_rand(17, 33).requires_grad_()
    torch.library.opcheck(ops.linear_add_fwd, (x, w, b, r))
    torch.library.opcheck(ops.linear_add_fwd, (x.detach().reshape(1, 17, 40), w.detach(), None,
                                               triton_rand(1, 17, 33)))


# --------------------------------------------------------------------------- rejections
@needs_triton_linear
def test_triton_rejections_say_why():
    x64, w64 = torch.randn(4, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    assert "float64 not supported" in triton_reason("linear_gelu", K.linear_gelu, x64, w64, None, "none")
    assert "empty input" in triton_reason("linear_gelu", K.linear_gelu, triton_rand(0, 16), triton_rand(8, 16), None,
                                          "none")
    assert "empty input" in triton_reason("linear_add", K.linear_add, triton_rand(4, 16), triton_rand(0, 16), None,
                                          triton_rand(4, 0))
    meta = torch.empty(4, 16, device="meta")
    assert "device meta" in triton_reason("linear_add", K.linear_add, meta, torch.empty(8, 16, device="meta"), None,
                                          torch.empty(4, 8, device="meta"))


@needs_triton_linear
@pytest.mark.skipif(TRITON_DEV != "cpu", reason="the interpreter rule applies to CPU tensors")
def test_triton_cpu_tensors_are_not_auto_selected():
    with K.trace() as t:
        K.linear_gelu(triton_rand(3, 16), triton_rand(8, 16))
    assert t.impls("linear_gelu") != ["triton"]
    assert "interpreter" in t.records[0].why
