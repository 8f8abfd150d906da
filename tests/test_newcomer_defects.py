"""The defects a newcomer hit (issue "A newcomer's first hour", section 3), one test or
more each, against references that do not come from the code under test (float64 math
written here, PyTorch's own contracts, the unfused model)."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan import AsCAN, AsCANConfig, AsCANSegmenter, AsCANUNet, UNetConfig, build_model, generate, list_models
from ascan.layers import ConvBN
from ascan_kernels.ops.conv_bias_act.onednn_hazards import axis_reads_only_padding
from ascan_kernels.testing import assert_close, assert_error_within, fused_eager_pair, machine_lacks, native_impls

TINY = AsCANConfig(name="tiny_test", dims=(32, 32, 64, 64), layouts=("C", "CC", "CT", "T"), stem_chs=(16, 32))
TINY_UNET = UNetConfig("tiny_unet", channels=(32, 64, 64), layouts=("C", "CT", "T"), mid_layout="T",
                       head_dim=32, groups=8)
TINY_T2I = dataclasses.replace(TINY_UNET, name="tiny_unet_t2i", context_dim=24)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (a crash there fails the test, not the run)."""
    full = {**os.environ, **env}
    full.pop("TRITON_INTERPRET", None) if "TRITON_INTERPRET" not in env else None
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, timeout=600)


def bn_params(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.1,
            torch.randn(c, generator=g) * 0.1, torch.rand(c, generator=g) + 0.5)


def conv_bn_f64(x, w, bn, stride, padding, dilation, groups=1, eps=1e-5):
    """conv + inference BN in float64 by hand: unfold + einsum, then the affine."""
    g_, b_, m_, v_ = (t.double() for t in bn)
    N, C, H, W = x.shape
    kh, kw = w.shape[2:]
    cols = F.unfold(x.double(), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    Ho = (H + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    cols = cols.reshape(N, groups, C // groups * kh * kw, Ho * Wo)
    wg = w.double().reshape(groups, w.shape[0] // groups, -1)
    y = torch.einsum("ngkl,gok->ngol", cols, wg).reshape(N, w.shape[0], Ho, Wo)
    s = g_ / torch.sqrt(v_ + eps)
    return (y - m_[:, None, None]) * s[:, None, None] + b_[:, None, None]


def gelu_f64(y):
    return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))


# ------------------------------------------------------------------ 1. the segfault
def test_axis_predicate_matches_brute_force():
    for L in range(1, 8):
        for k in range(1, 4):
            for s in range(1, 4):
                for p in range(0, 4):
                    for d in range(1, 4):
                        out = (L + 2 * p - d * (k - 1) - 1) // s + 1
                        if out < 1:
                            continue
                        dead = all(not any(0 <= o * s - p + j * d < L for j in range(k)) for o in range(out))
                        assert axis_reads_only_padding(L, k, s, p, d) == dead, (L, k, s, p, d)


def test_conv_that_reads_only_padding_does_not_crash():
    """The issue's call (it SIGSEGV'd in oneDNN's channels_last path) and its family, in a
    fresh interpreter: correct values, and the cpu impl declines with the reason."""
    code = """
    import itertools, torch, ascan_kernels as K
    torch.manual_seed(0)
    bn = [torch.rand(3) + .5, torch.randn(3), torch.randn(3), torch.rand(3) + .5]
    for (H, W, k, s, p, d), fmt in itertools.product(
            [(7, 1, 1, 2, 1, 2), (1, 7, 1, 2, 1, 2), (3, 1, 1, 3, 2, 2), (5, 2, 1, 3, 1, 3), (2, 1, 2, 2, 3, 2)],
            [torch.contiguous_format, torch.channels_last]):
        x = torch.randn(2, 17, H, W).contiguous(memory_format=fmt)
        w = torch.randn(3, 17, k, k)
        res = None
        for op in ("conv_bn_gelu", "conv_bn", "conv_bn_add"):
            args = (x, w, None, *bn)
            if op == "conv_bn_add":
                ref = K.conv_bn(x, w, None, *bn, stride=s, padding=p, dilation=d)
                args = args + (torch.randn_like(ref),)
            with torch.no_grad(), K.trace() as t:
                y = getattr(K, op)(*args, stride=s, padding=p, dilation=d)
            assert torch.isfinite(y).all(), op
            assert t.records[0].impl == "eager", t.table()
            assert "reads only zero padding" in dict(t.records[0].skipped)["cpu"]
    print("OK")
    """
    out = run_python(code)
    assert out.returncode == 0 and "OK" in out.stdout, f"rc={out.returncode}\n{out.stderr[-2000:]}"


def test_padding_only_conv_values():
    """Every output of such a conv is the folded BN bias (no tap reaches the input)."""
    x = torch.randn(2, 17, 7, 1)
    w = torch.randn(3, 17, 1, 1)
    bn = bn_params(3)
    with torch.no_grad():
        got = K.conv_bn_gelu(x, w, None, *bn, stride=2, padding=1, dilation=2)
    want = gelu_f64(conv_bn_f64(x, w, bn, 2, 1, 2))
    assert got.shape == want.shape == (2, 3, 5, 2)
    assert_close(got.double(), want, dtype=torch.float32)


# ------------------------------------------------------- 2. fully masked attention rows
def _attention_impls():
    return ["eager"] + native_impls("attention") + (["triton"] if K.available("attention")["triton"] == "ok" else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_are_zero_in_every_impl(dtype, kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 16).to(dtype) for n in (5, 7, 7))
    keep = torch.rand(2, 2, 5, 7) > 0.4
    keep[..., 0] = True
    keep[1, :, 2] = False  # one fully masked query row per head of sample 1
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf")).to(dtype)
    for impl in _attention_impls():
        with K.use(attention=impl):
            try:
                o = K.attention(q, k, v, mask)
            except K.KernelUnavailableError as e:
                pytest.skip(f"{impl} declines {dtype}: {e}") if impl == "triton" else None
                raise
        assert torch.isfinite(o).all(), impl
        assert (o[1, :, 2] == 0).all(), impl
    # The live rows against float64 math written here.
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / 4.0
    s = s.masked_fill(~keep, float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    want = torch.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdim=True), v.double())
    with K.use(attention="eager"):
        got = K.attention(q, k, v, mask).double()
    live = keep.any(-1)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert ((got - want)[live].abs() <= tol * (1 + want[live].abs())).all()


def test_empty_caption_under_bf16_autocast_is_finite():
    """ascan_unet_t2i_s-like UNet, bf16 autocast, one sample's context_mask all False (the
    classifier-free-guidance null caption): the fused model is finite and close to the
    unfused one (both define the empty row as attending to nothing)."""
    fused, eager = fused_eager_pair(lambda fused: AsCANUNet(TINY_T2I, fused=fused))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in fused.parameters():  # the zero-initialised output layers would hide everything
            p.normal_(0, 0.05)
    eager.load_state_dict(fused.state_dict())
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    ctx = torch.randn(2, 6, 24)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = fused.eval()(x, t, ctx, mask).float()
        b = eager.eval()(x, t, ctx, mask).float()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).norm() / b.norm() < 0.05


# -------------------------------------------------------- 3. inference_mode and caches
def _models_small():
    yield "classifier", lambda fused: AsCAN(TINY, num_classes=10, fused=fused), \
        lambda: (torch.randn(2, 3, 64, 64),)
    yield "segmenter", lambda fused: AsCANSegmenter(TINY, num_classes=5, head_channels=16, fused=fused), \
        lambda: (torch.randn(2, 3, 64, 64),)
    yield "unet_c2i", lambda fused: AsCANUNet(TINY_UNET, num_classes=10, fused=fused), \
        lambda: (torch.randn(2, 4, 16, 16), torch.tensor([1, 900]), torch.tensor([0, 10]))
    yield "unet_t2i", lambda fused: AsCANUNet(TINY_T2I, fused=fused), \
        lambda: (torch.randn(2, 4, 16, 16), torch.tensor([1, 900]), torch.randn(2, 5, 24))


@pytest.mark.parametrize("name,make,inputs", list(_models_small()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_model_under_inference_mode_then_no_grad_then_training(name, make, inputs):
    """First call under inference_mode (the BN-fold cache is filled there), then no_grad,
    then a training step: no 'Inference tensors ...' error, and the same numbers as the
    unfused model."""
    fused, eager = fused_eager_pair(make)
    args = inputs()
    fused.eval(), eager.eval()
    with torch.inference_mode():
        a = fused(*args)
        want = eager(*args)
    with torch.no_grad():
        b = fused(*args)
    assert_close(a, want, scale=10)
    assert_close(b, want, scale=10)
    a.sum()  # inference tensors are readable outside too
    fused.train()
    fused(*args).float().square().mean().backward()
    assert all(p.grad is not None for p in fused.parameters() if p.requires_grad)


def test_model_built_under_inference_mode_runs_fused():
    with torch.inference_mode():
        m = AsCAN(TINY, num_classes=10, fused=True).eval()
        y1 = m(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        y2 = m(torch.randn(1, 3, 64, 64))
    assert y1.shape == y2.shape == (1, 10)


def test_forced_triton_conv_under_inference_mode():
    if K.available("conv_bn_gelu")["triton"] != "ok":
        pytest.skip(f"triton: {K.available('conv_bn_gelu')['triton']}")
    layer = ConvBN(16, 16, 3, fused=True).eval()
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), K.use(conv_bn_gelu="triton"):
        a = layer(x)
    with torch.no_grad(), K.use(conv_bn_gelu="triton"):
        b = layer(x)
    with torch.no_grad(), K.use(conv_bn_gelu="eager"):
        want = layer(x)
    assert_close(a, want)
    assert_close(b, want)


# ------------------------------------------------------------ 4. folded= is validated
@pytest.mark.parametrize("folded,exc,msg", [
    ((torch.randn(8, 4, 1, 1), torch.randn(8)), ValueError, r"folded weight must have shape \(8, 4, 3, 3\)"),
    ((torch.randn(8, 4, 3, 3), torch.randn(7)), ValueError, r"folded bias must have shape \(8,\)"),
    ((torch.randn(8, 4, 3, 3, device="meta"), torch.randn(8, device="meta")), ValueError, "x's device cpu"),
    ((torch.randn(8, 4, 3, 3),), TypeError, "pair"),
    (5, TypeError, "pair"),
])
def test_folded_is_validated(folded, exc, msg):
    x, w = torch.randn(2, 4, 10, 10), torch.randn(8, 4, 3, 3)
    with pytest.raises(exc, match=msg):
        K.conv_bn_gelu(x, w, None, *bn_params(8), folded=folded)


# --------------------------------------- 5. compile and export of every registered model
def _compile_export_cases():
    return [
        ("ascan_t", dict(num_classes=10), lambda: (torch.randn(1, 3, 64, 64),)),
        ("ascan_t_seg", dict(num_classes=5), lambda: (torch.randn(1, 3, 64, 64),)),
        ("ascan_unet_c2i_s", dict(num_classes=10), lambda: (torch.randn(1, 4, 8, 8), torch.tensor([5]),
                                                            torch.tensor([3]))),
        ("ascan_unet_t2i_s", {}, lambda: (torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.randn(1, 3, 768))),
    ]


def _inputs_for(name):
    if "unet" in name:
        cond = torch.tensor([3]) if "c2i" in name else torch.randn(1, 3, 2048 if "xl" in name else 768)
        return (torch.randn(1, 4, 8, 8), torch.tensor([5]), cond)
    return (torch.randn(1, 3, 64, 64),)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "ascan_unet_t2i_xl" else n
                                  for n in list_models()])  # t2i_xl: ~20 s to trace; its smaller sibling stays
def test_export_every_registered_model(name):
    """torch.export of the fused model, on the meta device (shapes only: the XL models
    would need tens of GB otherwise); no data-dependent guard may stop it."""
    with torch.device("meta"):
        m = build_model(name, fused=True).eval()
        args = tuple(a.to("meta") for a in _inputs_for(name))
    ep = torch.export.export(m, args)
    out = ep.module()(*args)
    assert out.shape[0] == 1


@pytest.mark.parametrize("name,kw,inputs", _compile_export_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_export_runs_and_matches(name, kw, inputs):
    m = build_model(name, fused=True, **kw).eval()
    args = inputs()
    with torch.no_grad():
        ep = torch.export.export(m, args)
        assert_close(ep.module()(*args), m(*args))


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,inputs", _compile_export_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_compile_fullgraph_every_model_family(name, kw, inputs):
    m = build_model(name, fused=True, **kw).eval()
    args = inputs()
    with torch.no_grad():
        assert_close(torch.compile(m, fullgraph=True)(*args), m(*args), scale=10)


def test_compile_fullgraph_tiny_unets():
    """The UNet code (both conditionings) under fullgraph compile, at tiny widths."""
    for make, args in ((lambda: AsCANUNet(TINY_UNET, num_classes=10, fused=True),
                        (torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.tensor([3]))),
                       (lambda: AsCANUNet(TINY_T2I, fused=True),
                        (torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.randn(1, 3, 24)))):
        m = make().eval()
        with torch.no_grad():
            assert_close(torch.compile(m, fullgraph=True)(*args), m(*args), scale=10)


# --------------------------------------------- 6. output dtypes follow the reference
def _impls_for(op):
    out = native_impls(op)
    if K.available(op).get("triton") == "ok":
        out.append("triton")
    return out


@pytest.mark.parametrize("op", ["linear_add", "conv_bn_add"])
def test_autocast_fp32_residual_keeps_the_references_dtype(op):
    torch.manual_seed(0)
    if op == "linear_add":
        x, w, b, r = torch.randn(2, 5, 16), torch.randn(16, 16), torch.randn(16), torch.randn(2, 5, 16)
        call = lambda: K.linear_add(x, w, b, r)  # noqa: E731
    else:
        x, w, r = torch.randn(2, 16, 6, 6), torch.randn(16, 16, 1, 1), torch.randn(2, 16, 6, 6)
        call = lambda: K.conv_bn_add(x, w, None, *bn_params(16), r)  # noqa: E731
    with torch.no_grad():
        with K.use(**{op: "eager"}):
            ref32 = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with K.use(**{op: "eager"}):
                want = call()
            assert want.dtype == torch.float32  # bf16 GEMM + fp32 residual promotes
            for impl in _impls_for(op):
                if machine_lacks(op, impl, torch.bfloat16):
                    continue
                with K.use(**{op: impl}):
                    got = call()
                assert got.dtype == want.dtype, impl
                assert_error_within(got, want, ref32, factor=2.0, floor=1e-2)


def test_group_norm_silu_promotes_like_the_reference():
    x = torch.randn(2, 16, 5, 5).bfloat16()
    scale, shift = torch.randn(2, 16) * 0.1, torch.randn(2, 16) * 0.1
    with torch.no_grad():
        want = K.group_norm_silu_reference(x, 4, None, None, 1e-5, scale, shift)
        assert want.dtype == torch.float32
        for impl in ["eager"] + _impls_for("group_norm_silu"):
            with K.use(group_norm_silu=impl):
                try:
                    got = K.group_norm_silu(x, 4, None, None, 1e-5, scale, shift)
                except K.KernelUnavailableError as e:
                    assert "type promotion" in str(e), impl  # the honest refusal
                    continue
            assert got.dtype == want.dtype, impl
        assert K.group_norm_silu(x, 4, None, None, 1e-5, scale, shift).dtype == torch.float32


# ------------------------------- 7. GroupNorm on channels_last: accurate, also for grads
def test_group_norm_channels_last_large_mean_is_accurate():
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 5, 5) * 0.01 + 50
    g = torch.randn(2, 4, 5, 5)
    xd = x0.double().requires_grad_()
    # float64 GroupNorm + SiLU by hand
    v = xd.reshape(2, 2, -1)
    n = ((v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)).reshape_as(xd)
    want = n * torch.sigmoid(n)
    (want * g.double()).sum().backward()
    for impl in ["eager"] + native_impls("group_norm_silu"):
        x = x0.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
        with K.use(group_norm_silu=impl) if impl == "eager" else K.use():
            y = K.group_norm_silu(x, 2, None, None, 1e-6)
        assert (y.double() - want).abs().max() < 5e-3, impl
        if y.requires_grad:
            (y * g).sum().backward()
            assert (x.grad.double() - xd.grad).abs().max() < 0.5, impl  # |grad| ~ 100: fp32's limit here


def test_fused_unet_training_step_matches_unfused():
    fused, eager = fused_eager_pair(lambda fused: AsCANUNet(TINY_UNET, num_classes=10, fused=fused))
    for m in (fused, eager):
        m.train()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.linspace(-0.05, 0.05, p.numel()).reshape(p.shape))
    x = torch.randn(2, 4, 16, 16) * 0.01 + 3
    args = (x, torch.tensor([1, 900]), torch.tensor([0, 10]))
    fused(*args).square().mean().backward()
    eager(*args).square().mean().backward()
    for (n, a), (_, b) in zip(fused.named_parameters(), eager.named_parameters()):
        assert_close(a.grad, b.grad, scale=50, msg=n)


# ------------------------------------------------------------------ 8. NaN propagation
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cin", [3, 4])
def test_conv_nan_stays_in_its_receptive_field(dtype, cin):
    """A NaN at one input pixel reaches exactly the outputs whose 3x3 window covers it
    (the stem: Cin=3, channels_last, bf16 leaked into the neighbour on oneDNN)."""
    x = torch.randn(1, cin, 8, 8).to(dtype)
    x[0, 1, 3, 4] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(8, cin, 3, 3) * 0.2).to(dtype)
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[2:5, 3:6] = True
    for impl in ["eager"] + native_impls("conv_bn_gelu"):
        if machine_lacks("conv_bn_gelu", impl, dtype):
            continue
        with torch.no_grad(), K.use(conv_bn_gelu=impl):
            y = K.conv_bn_gelu(x, w, None, *bn_params(8), padding=1)
        assert torch.equal(y.isnan().any(1)[0], expect), (impl, y.isnan().any(1)[0])


def test_sdpa_nan_query_row_is_the_documented_exception():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    q[0, 0, 1, 3] = float("nan")
    with K.use(attention="eager"):
        ref = K.attention(q, k, v)
    assert ref[0, 0, 1].isnan().all() and ref[0, 0, [0, 2, 3]].isfinite().all()
    if "sdpa" in native_impls("attention"):
        with K.use(attention="sdpa"):
            got = K.attention(q, k, v)
        assert got[0, 0, [0, 2, 3]].isfinite().all()
        row = got[0, 0, 1]
        assert row.isnan().all() or (row == 0).all()  # the documented CPU sdpa behaviour
    doc = sys.modules[K.get_op("attention").reference.__module__].__doc__
    assert "returns 0 (not NaN) for a query row containing" in doc


# ------------------------------- 9. bf16 conv weight grads with a channels_last weight
@pytest.mark.parametrize("repeat", range(3))
def test_bf16_conv_weight_grad_with_channels_last_weight_is_finite(repeat):
    """Taps that get no contribution (stride 2, padding 1 at the borders) must get a
    zero gradient, not uninitialised memory; both the op and a whole model."""
    torch.manual_seed(repeat)
    w = (torch.randn(8, 4, 3, 3) * 0.2).contiguous(memory_format=torch.channels_last).requires_grad_()
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    bn = bn_params(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        K.conv_bn_gelu(x, w, None, *bn, stride=2, padding=1, training=False).float().sum().backward()
    w32 = w.detach().clone().contiguous().requires_grad_()
    K.conv_bn_gelu(x, w32, None, *bn, stride=2, padding=1).sum().backward()
    assert torch.isfinite(w.grad).all()
    assert_close(w.grad, w32.grad, dtype=torch.bfloat16, scale=4)


def test_channels_last_model_bf16_training_grads_are_finite():
    m = AsCAN(TINY, num_classes=10, fused=True).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x).float().logsumexp(1).mean().backward()
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad and all(p.grad.abs().max() < 1e6 for p in m.parameters() if p.grad is not None)


# ---------------------------------------- 10. errors that name the op or the model
def test_conv_training_one_value_per_channel():
    x, w = torch.randn(1, 4, 1, 1), torch.randn(8, 4, 1, 1)
    with pytest.raises(ValueError, match="conv_bn_gelu: training-mode BatchNorm needs more than one value"):
        K.conv_bn_gelu(x, w, None, *bn_params(8), training=True)


def test_attention_mask_of_wrong_type():
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(TypeError, match="attention: attn_mask must be a torch.Tensor, got list"):
        K.attention(q, q, q, [[True, False, True]])


def test_layer_norm_mixed_dtypes():
    with pytest.raises(TypeError, match="layer_norm: weight is torch.float32 but x is torch.float64"):
        K.layer_norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), torch.zeros(8))


@pytest.mark.parametrize("fused", [True, False])
def test_model_errors_are_the_same_fused_or_not(fused):
    m = AsCAN(TINY, num_classes=10, fused=fused).eval()
    with pytest.raises(TypeError, match="tiny_test: input is torch.float64 but the model's parameters are"):
        m(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(TypeError, match="tiny_test: input is torch.bfloat16 .* or run under torch.autocast"):
        m(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="tiny_test: input is on meta but the model's parameters are on cpu"):
        m(torch.randn(1, 3, 64, 64, device="meta"))
    m.train()
    with pytest.raises(ValueError, match="tiny_test: training with input .* one value per channel"):
        m(torch.randn(1, 3, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        m.eval()(torch.randn(1, 3, 64, 64))  # autocast casts: accepted


def test_build_model_arguments():
    with pytest.raises(TypeError, match=r"build_model\('ascan_t'\): unknown argument 'num_clases' "
                                        r"\(did you mean 'num_classes'\?\)"):
        build_model("ascan_t", num_clases=10)
    with pytest.raises(TypeError, match="fused must be True or False, got 'yes'"):
        build_model("ascan_t", fused="yes")


def test_unet_conditions_that_do_not_belong():
    c2i = AsCANUNet(TINY_UNET, num_classes=10).eval()
    t2i = AsCANUNet(TINY_T2I).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([3])
    with pytest.raises(ValueError, match="class-conditional UNet takes no context_mask"):
        c2i(x, t, torch.tensor([1]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"generate: tiny_unet is class-conditional: pass y"):
        generate(c2i, y=torch.tensor([1]), context=torch.randn(1, 3, 24), steps=1, latent_size=8)
    with pytest.raises(ValueError, match=r"generate: tiny_unet_t2i is text-to-image: pass context"):
        generate(t2i, y=torch.tensor([1]), context=torch.randn(1, 3, 24), steps=1, latent_size=8)


def test_load_backbone_reports_keys():
    seg = AsCANSegmenter(TINY, num_classes=5, head_channels=16)
    cls = AsCAN(TINY, num_classes=10)
    res = seg.load_backbone(cls.state_dict())
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    sd = cls.state_dict()
    sd.pop("stem.0.conv.weight")
    sd["extra.weight"] = torch.zeros(1)
    res = seg.load_backbone(sd, strict=False)
    assert res.missing_keys == ["stem.0.conv.weight"] and res.unexpected_keys == ["extra.weight"]
    with pytest.raises(RuntimeError, match="tiny_test_seg.load_backbone: the state_dict does not fit"):
        seg.load_backbone(sd)


# ---------------------------------------------------------------- 11. the registry
def test_forced_impl_says_forced_in_trace():
    x = torch.randn(2, 8)
    with K.use(layer_norm="eager"), K.trace() as t:
        K.layer_norm(x, torch.ones(8), torch.zeros(8))
    assert t.records[0].forced and t.records[0].why == "forced by use()/ASCAN_KERNELS"


def test_trace_table_writes_each_reason_once_and_the_compute_dtype():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(8, 4, 3, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), K.trace() as t:
        for _ in range(3):
            K.conv_bn_gelu(x, w, None, *bn_params(8), padding=1)
            K.conv_bn_gelu(x[:1], w, None, *bn_params(8), padding=1)
    assert t.records[0].dtype == torch.bfloat16 and t.records[0].input_dtype == torch.float32
    table = t.table()
    rows = [ln for ln in table.splitlines() if ln.startswith("conv_bn_gelu")]
    assert len(rows) == 2 and all("bfloat16" in r for r in rows)
    for _, reason in t.records[0].skipped:
        assert table.count(reason) == 1  # written once, as a numbered note


def test_env_eager_everywhere_and_quiet_logging():
    code = """
    import logging, torch
    logging.basicConfig(level=logging.WARNING)
    import ascan_kernels as K
    from ascan import build_model
    m = build_model("ascan_t", num_classes=10).eval()
    with torch.no_grad(), K.trace() as t:
        m(torch.randn(1, 3, 64, 64))
    print("IMPLS", sorted(set(t.impls())))
    """
    out = run_python(code, ASCAN_KERNELS="eager")
    assert out.returncode == 0, out.stderr
    assert "IMPLS ['eager']" in out.stdout
    out = run_python(code, ASCAN_KERNELS_LOG="1")
    assert out.returncode == 0, out.stderr
    # On the expected path nothing is logged about backends for other devices.
    noisy = [ln for ln in out.stderr.splitlines() if "takes cuda" in ln or "no CUDA device" in ln]
    assert not noisy, noisy


def test_env_unknown_bare_impl_fails_clearly():
    out = run_python("import ascan_kernels", ASCAN_KERNELS="attention")
    assert out.returncode != 0 and "expected op=impl, or an impl for every op" in out.stderr


def test_forced_error_describes_inputs_and_every_impl():
    q = torch.randn(1, 2, 3, 8)
    with K.use(attention="triton") if "triton" in K.available("attention") else K.use():
        try:
            K.attention(q.to("meta"), q.to("meta"), q.to("meta"))
        except K.KernelUnavailableError as e:
            msg = str(e)
            assert "inputs: q=(1, 2, 3, 8) float32 meta" in msg
            assert "eager: can run these inputs" in msg
            return
    pytest.skip("no impl to force here")


# ------------------------------------------------------- the import must stay cheap
def test_import_ascan_does_not_import_dynamo_or_triton():
    code = """
    import sys, torch
    import ascan
    print("DYNAMO", "torch._dynamo" in sys.modules, "TRITON", "triton" in sys.modules)
    """
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    if torch.cuda.is_available():
        assert "DYNAMO False" in out.stdout
    else:
        assert "DYNAMO False TRITON False" in out.stdout
