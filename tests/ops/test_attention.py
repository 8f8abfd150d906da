"""attention: each impl against the eager reference.

* the reference against textbook math, the parity matrix over the impls that run natively
  here (``native_impls``: ``sdpa``), gradients, dropout, bad input; the ``sdpa`` impl's
  selection rule;
* ``triton`` (flash attention, forward and backward): under Triton's CPU interpreter when
  there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA tensors otherwise.
  Shapes are small and ragged: none of the lengths is a multiple of the kernels' blocks,
  and Lq != Lk in most cases.
"""
import math

import pytest
import torch

import ascan_kernels as K
from ascan_kernels.ops.attention import attention_reference
from ascan_kernels.ops.attention.sdpa import SDPA_CPU_LOWP_MIN_SCORES
from ascan_kernels.testing import assert_close, assert_error_within, grads_by_impl, native_impls

from _helpers import KERNEL_DTYPES, TRITON_DEV, needs_triton, triton_rand


def fused_impls(op):
    return native_impls(op)


# ---------------------------------------------------------------------------- attention
def qkv(B=2, H=3, Lq=17, Lk=17, D=32, Dv=None, dtype=torch.float32):
    return (torch.randn(B, H, Lq, D).to(dtype), torch.randn(B, H, Lk, D).to(dtype),
            torch.randn(B, H, Lk, Dv or D).to(dtype))


def test_reference_matches_textbook_math():
    q, k, v = qkv(Lq=5, Lk=7, D=8, dtype=torch.float64)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8)
    want = torch.einsum("bhqk,bhkd->bhqd", torch.exp(s) / torch.exp(s).sum(-1, keepdim=True), v)
    with K.use(attention="eager"):
        assert_close(K.attention(q, k, v), want)


MASKS = ["none", "bool_keypad", "float_full", "float_broadcast"]


def make_mask(kind, B, H, Lq, Lk, dtype):
    if kind == "none":
        return None
    if kind == "bool_keypad":  # key padding: the last 3 keys of the last sample are padding
        m = torch.ones(B, 1, 1, Lk, dtype=torch.bool)
        m[-1, ..., -3:] = False
        return m
    if kind == "float_full":
        return torch.randn(B, H, Lq, Lk).to(dtype)
    return torch.randn(1, H, 1, Lk).to(dtype)


@pytest.mark.parametrize("impl", fused_impls("attention"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 17, 17, 32), (1, 2, 5, 19, 64), (2, 1, 33, 4, 16)])
@pytest.mark.parametrize("mask", MASKS)
def test_attention_matches_reference(impl, dtype, shape, mask):
    B, H, Lq, Lk, D = shape
    q, k, v = qkv(B, H, Lq, Lk, D, dtype=dtype)
    m = make_mask(mask, B, H, Lq, Lk, dtype)
    with K.use(attention=impl), K.trace() as t:
        got = K.attention(q, k, v, m)
    assert t.impls() == [impl]
    with K.use(attention="eager"):
        want = K.attention(q, k, v, m)
    assert got.shape == (B, H, Lq, D) and got.dtype == dtype
    if dtype == torch.float32:
        assert_close(got, want)
    else:
        ref = K.attention(q.float(), k.float(), v.float(), None if m is None or m.dtype == torch.bool else m.float())
        assert_error_within(got, want, ref, factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", fused_impls("attention"))
def test_attention_gradients(impl):
    m = torch.randn(2, 3, 9, 13)
    grads = grads_by_impl("attention", (impl, "eager"), lambda q, k, v: K.attention(q, k, v, m),
                          qkv(Lq=9, Lk=13, D=16))
    for a, b in zip(grads[impl], grads["eager"]):
        assert_close(a, b)


def test_attention_dropout_statistics():
    q, k, v = qkv(B=1, H=1, Lq=64, Lk=64, D=8)
    v = torch.ones_like(v)  # every output element is then sum(dropped probs)/(1-p)
    for impl in ["eager"] + fused_impls("attention"):
        with K.use(attention=impl):
            out = K.attention(q, k, v, dropout_p=0.5)
        assert 0.8 < out.mean().item() < 1.2, impl
        assert out.std().item() > 0.05, impl  # dropout really happened


BAD_ATTN = [
    (lambda q, k, v: K.attention(q[0], k, v), r"attention: q must be 4-D"),
    (lambda q, k, v: K.attention(q, k[:, :2], v[:, :2]), r"share \(batch, heads\)"),
    (lambda q, k, v: K.attention(q, k[..., :16], v), r"head dims differ"),
    (lambda q, k, v: K.attention(q, k, v[:, :, :5]), r"k and v lengths differ"),
    (lambda q, k, v: K.attention(q, k, v, torch.zeros(2, 3, 4, 4)), r"attn_mask shape \(2, 3, 4, 4\) does not broadcast"),
    (lambda q, k, v: K.attention(q, k, v, torch.zeros(1, dtype=torch.int64)), r"attn_mask must be bool or floating"),
    (lambda q, k, v: K.attention(q, k.double(), v), r"dtypes must match"),
    (lambda q, k, v: K.attention(q.long(), k, v), r"q must be a floating-point tensor"),
    (lambda q, k, v: K.attention(q, k, v, dropout_p=1.0), r"dropout_p must be in \[0, 1\)"),
    (lambda q, k, v: K.attention(q, k.to("meta"), v), r"one device"),
]


@pytest.mark.parametrize("fn,msg", BAD_ATTN)
def test_attention_bad_input(fn, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        fn(*qkv())


def test_attention_empty_and_noncontiguous():
    q, k, v = qkv()
    with K.trace() as t:
        out = K.attention(q[:0], k[:0], v[:0])
    assert out.shape == (0, 3, 17, 32) and t.impls() == ["eager"]
    qt = q.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert_close(K.attention(qt, k, v), K.attention(q, k, v))


# ============================================================================= sdpa impl
@pytest.mark.skipif(K.available("attention").get("sdpa") != "ok", reason="sdpa unavailable")
def test_sdpa_not_preferred_for_small_bf16_cpu_attention():
    small = qkv(B=1, H=2, Lq=16, Lk=16, D=32, dtype=torch.bfloat16)
    big = qkv(B=1, H=8, Lq=384, Lk=384, D=32, dtype=torch.bfloat16)
    assert 1 * 2 * 16 * 16 < SDPA_CPU_LOWP_MIN_SCORES <= 8 * 384 * 384
    with K.trace() as t:
        K.attention(*small)
        K.attention(*big)
        K.attention(*(x.float() for x in small))
    assert t.impls() == ["eager", "sdpa", "sdpa"]
    assert "not preferred" in dict(t.records[0].skipped)["sdpa"]


# =========================================================================== triton impl
needs_triton_attention = needs_triton("attention")
# fp32 tl.dot runs in tf32 on a GPU: compare at fp16's tolerance there
FP32_TOL = torch.float16 if TRITON_DEV == "cuda" else torch.float32

# (B, H, Lq, Lk, D, mask): mask None, "bool" (B, H, Lq, Lk), "float" (1, H, Lq, Lk)
# additive, "padding" bool (B, 1, 1, Lk), "square" float (Lq, Lk)
CASES = [
    (1, 2, 17, 17, 64, None),
    (2, 2, 40, 67, 32, "bool"),
    (2, 2, 67, 40, 16, "float"),
    (2, 2, 1, 40, 64, "padding"),
    (1, 2, 40, 17, 128, "square"),
]
GRAD_CASES = [CASES[0], CASES[1], CASES[2], CASES[3]]


def triton_mask(kind, B, H, Lq, Lk):
    if kind is None:
        return None
    if kind == "bool":
        m = torch.rand(B, H, Lq, Lk, device=TRITON_DEV) > 0.3
        m[..., 0] = True  # at least one key per row (fully masked rows have their own test)
        return m
    if kind == "padding":
        m = torch.rand(B, 1, 1, Lk, device=TRITON_DEV) > 0.4
        m[..., 0] = True
        return m
    if kind == "float":
        return torch.randn(1, H, Lq, Lk, device=TRITON_DEV)
    if kind == "square":
        return torch.randn(Lq, Lk, device=TRITON_DEV)
    raise ValueError(kind)


def case_inputs(case, dtype=torch.float32):
    B, H, Lq, Lk, D, kind = case
    return [triton_rand(B, H, Lq, D, dtype=dtype), triton_rand(B, H, Lk, D, dtype=dtype),
            triton_rand(B, H, Lk, D, dtype=dtype)], triton_mask(kind, B, H, Lq, Lk)


def forced(*args, **kwargs):
    with K.use(attention="triton"), K.trace() as t:
        out = K.attention(*args, **kwargs)
    assert t.impls("attention") == ["triton"]
    return out


def eager(*args, **kwargs):
    with K.use(attention="eager"):
        return K.attention(*args, **kwargs)


def lowp_floor(ref, dtype):
    return 4 * torch.finfo(dtype).eps * max(1.0, ref.abs().max().item())


def check(got, want_lowp, want_fp32, dtype):
    """fp32: the reference at fp32 tolerance; fp16/bf16: error against the fp32
    reference no more than twice eager's own error in that dtype."""
    assert got.dtype == dtype and got.shape == want_fp32.shape
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        assert_close(got, want_fp32, dtype=FP32_TOL)
    else:
        assert_error_within(got, want_lowp, want_fp32, factor=2.0, floor=lowp_floor(want_fp32, dtype))


# ------------------------------------------------------------------------------ forward
@needs_triton_attention
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[:5]}-{c[5]}")
def test_triton_forward_matches_reference(dtype, case):
    (q, k, v), mask = case_inputs(case)
    low = [t.to(dtype) for t in (q, k, v)]
    got = forced(*low, mask)
    check(got, eager(*low, mask), eager(q, k, v, mask), dtype)


@needs_triton_attention
def test_triton_explicit_scale_and_half_precision_float_mask():
    (q, k, v), _ = case_inputs((1, 2, 17, 40, 32, None))
    mask = torch.randn(1, 1, 17, 40, device=TRITON_DEV).to(torch.bfloat16)
    got = forced(q, k, v, mask, 0.0, 0.3)
    assert_close(got, attention_reference(q, k, v, mask, scale=0.3), dtype=FP32_TOL)


@needs_triton_attention
def test_triton_log_sum_exp_is_stored():
    (q, k, v), mask = case_inputs((2, 2, 40, 17, 32, "float"))
    scale = 32 ** -0.5
    o, lse = torch.ops.ascan_triton.flash_attn_fwd(q, k, v, mask, scale)
    want = torch.logsumexp(q @ k.transpose(-2, -1) * scale + mask, dim=-1)
    assert lse.shape == (2, 2, 40) and lse.dtype == torch.float32
    assert_close(lse, want, dtype=FP32_TOL)


# ---------------------------------------------------------------------------- gradients
@needs_triton_attention
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c[:5]}-{c[5]}")
def test_triton_gradients_match_reference(dtype, case):
    ins, mask = case_inputs(case)
    fn = lambda q, k, v: K.attention(q, k, v, mask)  # noqa: E731
    low = [t.to(dtype) for t in ins]
    got = grads_by_impl("attention", ("triton",), fn, low)["triton"]
    want = grads_by_impl("attention", ("eager",), fn, ins)["eager"]
    if dtype == torch.float32:
        for name, g, w in zip("qkv", got, want):
            assert_close(g, w, dtype=FP32_TOL, msg=f"d{name}")
        return
    lowp = grads_by_impl("attention", ("eager",), fn, low)["eager"]
    for g, lo, w in zip(got, lowp, want):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert_error_within(g, lo, w, factor=2.0, floor=lowp_floor(w, dtype))


@needs_triton_attention
def test_triton_gradients_through_permuted_qkv_views():
    """The model's layout: q, k, v are permuted views of one (B, L, 3, H, D) projection,
    read and differentiated in place; o comes back as (B, L, H, D) memory."""
    B, L, H, D = 2, 23, 2, 32
    x = triton_rand(B, L, 3 * H * D)
    w = triton_rand(3 * H * D, 3 * H * D) * (3 * H * D) ** -0.5
    out = {}
    for impl in ("triton", "eager"):
        xi = x.clone().requires_grad_()
        q, k, v = (xi @ w).reshape(B, L, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        assert not q.is_contiguous()
        with K.use(attention=impl), K.trace() as t:
            o = K.attention(q, k, v)
        assert t.impls("attention") == [impl]
        if impl == "triton":
            assert o.transpose(1, 2).is_contiguous()  # the head merge after it is a view
        y = o.transpose(1, 2).reshape(B, L, H * D)
        (y * torch.linspace(-1, 1, y.numel(), device=TRITON_DEV).reshape(y.shape)).sum().backward()
        out[impl] = (y.detach(), xi.grad)
    assert_close(out["triton"][0], out["eager"][0], dtype=FP32_TOL)
    assert_close(out["triton"][1], out["eager"][1], dtype=FP32_TOL)


@needs_triton_attention
def test_triton_cross_attention_with_non_contiguous_kv():
    # k, v: permuted views of a (B, Lk, 2, H, D) projection; q a transposed (B, Lq, H, D)
    B, H, Lq, Lk, D = 1, 2, 17, 40, 64
    q = triton_rand(B, Lq, H, D).transpose(1, 2)
    k, v = triton_rand(B, Lk, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    mask = triton_mask("padding", B, H, Lq, Lk)
    got = grads_by_impl("attention", ("triton",), lambda *a: K.attention(*a, mask), [q, k, v])["triton"]
    want = grads_by_impl("attention", ("eager",), lambda *a: K.attention(*a, mask), [q, k, v])["eager"]
    assert_close(forced(q, k, v, mask), attention_reference(q, k, v, mask), dtype=FP32_TOL)
    for g, w in zip(got, want):
        assert_close(g, w, dtype=FP32_TOL)


# -------------------------------------------------------------------- fully masked rows
@needs_triton_attention
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_triton_fully_masked_rows_give_zero_output_and_zero_gradients(kind):
    """Rows with no key to attend give 0 in the kernels and in the reference (the op's
    definition, as flash-attention's), and no gradient flows through them."""
    B, H, Lq, Lk, D = 1, 2, 19, 33, 32
    q, k, v = (triton_rand(B, H, n, D) for n in (Lq, Lk, Lk))
    keep = torch.rand(B, H, Lq, Lk, device=TRITON_DEV) > 0.3
    keep[..., 0] = True
    dead = torch.tensor([0, 5, 18], device=TRITON_DEV)  # first, middle and last (ragged) row
    keep[:, :, dead] = False
    live = torch.ones(Lq, dtype=torch.bool, device=TRITON_DEV)
    live[dead] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape, device=TRITON_DEV).masked_fill(~keep, float("-inf"))
    assert (attention_reference(q, k, v, mask)[:, :, dead] == 0).all()

    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    o = forced(*ins, mask)
    wo = torch.linspace(-1, 1, o.numel(), device=TRITON_DEV).reshape(o.shape)
    (o * wo).sum().backward()
    assert (o[:, :, dead] == 0).all()
    _, lse = torch.ops.ascan_triton.flash_attn_fwd(q, k, v, mask, D ** -0.5)
    assert torch.isinf(lse[:, :, dead]).all() and (lse[:, :, dead] > 0).all()

    # The reference on the live rows only: same outputs and same gradients.
    ref = [q[:, :, live].clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
    ro = attention_reference(*ref, mask[:, :, live])
    (ro * wo[:, :, live]).sum().backward()
    assert_close(o[:, :, live], ro, dtype=FP32_TOL)
    assert (ins[0].grad[:, :, dead] == 0).all()
    assert_close(ins[0].grad[:, :, live], ref[0].grad, dtype=FP32_TOL)
    assert_close(ins[1].grad, ref[1].grad, dtype=FP32_TOL)
    assert_close(ins[2].grad, ref[2].grad, dtype=FP32_TOL)

    # The reference on every row, dead ones included: finite, the same outputs and gradients.
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    fo = attention_reference(*full, mask)
    (fo * wo).sum().backward()
    assert_close(o, fo, dtype=FP32_TOL)
    for a, b in zip(ins, full):
        assert torch.isfinite(b.grad).all()
        assert_close(a.grad, b.grad, dtype=FP32_TOL)


# ------------------------------------------------------------------------------ opcheck
@needs_triton_attention
def test_triton_opcheck_custom_ops():
    ops = torch.ops.ascan_triton
    for case in ((1, 2, 17, 40, 32, None), (2, 2, 17, 40, 16, "padding"), (1, 2, 40, 17, 32, "float")):
        (q, k, v), mask = case_inputs(case)
        scale = case[4] ** -0.5
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        torch.library.opcheck(ops.flash_attn_fwd, (q, k, v, mask, scale))
        o, lse = ops.flash_attn_fwd(q.detach(), k.detach(), v.detach(), mask, scale)
        do = torch.randn_like(o)
        torch.library.opcheck(ops.flash_attn_bwd, (do, q.detach(), k.detach(), v.detach(), o, lse, mask, scale))


@needs_triton_attention
def test_triton_autocast_runs_in_the_autocast_dtype():
    (q, k, v), mask = case_inputs((1, 2, 17, 40, 32, "padding"))
    with torch.autocast(TRITON_DEV, dtype=torch.bfloat16):
        got = forced(q, k, v, mask)
    assert got.dtype == torch.bfloat16
    want = attention_reference(*(t.bfloat16() for t in (q, k, v)), mask)
    assert_close(got, want, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- rejections
def reason(*args, **kwargs):
    with K.use(attention="triton"), pytest.raises(K.KernelUnavailableError) as e:
        K.attention(*args, **kwargs)
    return str(e.value)


@needs_triton_attention
def test_triton_rejections_say_why():
    q, k, v = triton_rand(1, 2, 8, 32), triton_rand(1, 2, 9, 32), triton_rand(1, 2, 9, 32)
    assert "dropout not implemented in the Triton kernel" in reason(q, k, v, None, 0.1)
    assert "head dim 48 not supported" in reason(triton_rand(1, 2, 8, 48), triton_rand(1, 2, 9, 48),
                                                 triton_rand(1, 2, 9, 48))
    assert "v head dim 64 != q head dim 32" in reason(q, k, triton_rand(1, 2, 9, 64))
    assert "float64 not supported" in reason(q.double(), k.double(), v.double())
    assert "empty input" in reason(triton_rand(1, 2, 0, 32), k, v)
    assert "empty input" in reason(q, triton_rand(1, 2, 0, 32), triton_rand(1, 2, 0, 32))
    grad_mask = torch.zeros(1, 1, 8, 9, device=TRITON_DEV, requires_grad=True)
    assert "attn_mask requires grad" in reason(q, k, v, grad_mask)
    meta = [torch.empty(1, 2, 8, 32, device="meta") for _ in range(3)]
    assert "device meta" in reason(*meta)


@needs_triton_attention
@pytest.mark.skipif(TRITON_DEV != "cpu", reason="the interpreter rule applies to CPU tensors")
def test_triton_cpu_tensors_are_not_auto_selected():
    with K.trace() as t:
        K.attention(triton_rand(1, 2, 8, 32), triton_rand(1, 2, 8, 32), triton_rand(1, 2, 8, 32))
    assert t.impls("attention") != ["triton"]
    assert "interpreter" in t.records[0].why
