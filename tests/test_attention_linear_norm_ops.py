"""attention, linear_gelu, layer_norm, add_layer_norm: impls against the eager reference."""
import math

import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan_kernels.testing import (assert_close, assert_error_within, grads_by_impl, native_impls,
                                   skip_if_machine_lacks)


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


# --------------------------------------------------------------- layer_norm, add_layer_norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_matches_reference(dtype):
    x = torch.randn(3, 37, 200).to(dtype) * 3 + 1
    w, b = torch.randn(200), torch.randn(200)
    for impl in ["eager"] + native_impls("layer_norm"):
        with K.use(layer_norm=impl):
            got = K.layer_norm(x, w, b)
        mean = x.float().mean(-1, keepdim=True)
        var = x.float().var(-1, unbiased=False, keepdim=True)
        want = (x.float() - mean) / torch.sqrt(var + 1e-5) * w + b
        assert_close(got.float(), want, dtype=dtype)


@pytest.mark.parametrize("impl", fused_impls("add_layer_norm"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 37, 200), (2, 49, 512), (5, 768), (1, 1, 1)])
def test_add_layer_norm_matches_reference(impl, dtype, shape):
    x, r = torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)
    w, b = torch.randn(shape[-1]), torch.randn(shape[-1])
    with torch.no_grad():
        with K.use(add_layer_norm=impl), K.trace() as t:
            s, out = K.add_layer_norm(x, r, w, b)
        assert t.impls() == [impl]
        ws, wout = K.add_layer_norm_reference(x, r, w, b)
    assert_close(s, ws, dtype=dtype)
    assert_close(out, wout, dtype=dtype)


@pytest.mark.parametrize("impl", fused_impls("add_layer_norm"))
def test_add_layer_norm_gradients(impl):
    inputs = (torch.randn(2, 9, 24), torch.randn(2, 9, 24), torch.randn(24), torch.randn(24))
    # both outputs carry gradient: the sum (through sin) and the normalised rows
    grads = grads_by_impl("add_layer_norm", (impl, "eager"),
                          lambda *a: (lambda s, o: (s.sin(), o))(*K.add_layer_norm(*a)), inputs)
    for a, b_ in zip(grads[impl], grads["eager"]):
        assert_close(a, b_)


def test_norm_bad_input():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"layer_norm: weight must have shape \(8,\)"):
        K.layer_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"add_layer_norm: residual shape \(2, 5, 7\) != x shape \(2, 5, 8\)"):
        K.add_layer_norm(x, x[..., :7])
    with pytest.raises(TypeError, match=r"add_layer_norm: x must be a floating-point tensor"):
        K.add_layer_norm(x.int(), x)
    with pytest.raises(ValueError, match=r"layer_norm: x must have a non-empty last dim"):
        K.layer_norm(torch.randn(3, 0))
    with pytest.raises(ValueError, match=r"add_layer_norm: all tensors must be on one device"):
        K.add_layer_norm(x, x.to("meta"))


def test_add_layer_norm_empty_rows():
    x = torch.randn(0, 8)
    s, out = K.add_layer_norm(x, x, torch.ones(8), torch.zeros(8))
    assert s.shape == out.shape == (0, 8)


@pytest.mark.skipif(K.available("attention").get("sdpa") != "ok", reason="sdpa unavailable")
def test_sdpa_not_preferred_for_small_bf16_cpu_attention():
    from ascan_kernels.ops.attention import SDPA_CPU_LOWP_MIN_SCORES

    small = qkv(B=1, H=2, Lq=16, Lk=16, D=32, dtype=torch.bfloat16)
    big = qkv(B=1, H=8, Lq=384, Lk=384, D=32, dtype=torch.bfloat16)
    assert 1 * 2 * 16 * 16 < SDPA_CPU_LOWP_MIN_SCORES <= 8 * 384 * 384
    with K.trace() as t:
        K.attention(*small)
        K.attention(*big)
        K.attention(*(x.float() for x in small))
    assert t.impls() == ["eager", "sdpa", "sdpa"]
    assert "not preferred" in dict(t.records[0].skipped)["sdpa"]
