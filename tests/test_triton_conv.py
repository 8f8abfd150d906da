"""Triton conv_bn_gelu / conv_bn_add / conv_bn (implicit-GEMM conv, BN folded) against
the eager references.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets
TRITON_INTERPRET=1), on CUDA tensors otherwise.
"""
import gc
import re

import pytest
import torch

import ascan_kernels as K
from ascan_kernels.testing import assert_close, assert_error_within

pytestmark = pytest.mark.skipif(K.available("conv_bn_gelu")["triton"] != "ok",
                                reason=f"triton impl unavailable: {K.available('conv_bn_gelu')['triton']}")

from ascan_kernels.triton import conv as TC  # noqa: E402  (imports triton: only once available)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CL = torch.channels_last


def layout(t, how):
    return t.contiguous(memory_format=CL) if how == "cl" else t.contiguous()


def make(cin, cout, k, dtype, hw, n=2, bias=False, x_layout="cl", groups=1):
    """x, conv weight/bias and eval-mode BN params with non-trivial running stats."""
    x = layout(torch.randn(n, cin, *hw, device=DEV).to(dtype), x_layout)
    w = (torch.randn(cout, cin // groups, k, k, device=DEV) / (cin // groups * k * k) ** 0.5).to(dtype)
    b = (torch.randn(cout, device=DEV) * 0.1).to(dtype) if bias else None
    bn = [(torch.rand(cout, device=DEV) + 0.5).to(dtype),          # gamma
          (torch.randn(cout, device=DEV) * 0.2).to(dtype),         # beta
          (torch.randn(cout, device=DEV) * 0.3).to(dtype),         # running_mean
          (torch.rand(cout, device=DEV) + 0.5).to(dtype)]          # running_var
    return x, w, b, bn


def out_hw(hw, k, stride, pad):
    return tuple((s + 2 * pad - k) // stride + 1 for s in hw)


def call(op, x, w, b, bn, residual=None, **kw):
    if op == "conv_bn_add":
        return K.conv_bn_add(x, w, b, *bn, residual, **kw)
    return getattr(K, op)(x, w, b, *bn, **kw)


def run(op, impl, *args, **kw):
    with torch.no_grad(), K.use(**{op: impl}), K.trace() as t:
        out = call(op, *args, **kw)
    assert t.impls(op) == [impl]
    return out


def fp32(args):
    def up(a):
        if isinstance(a, torch.Tensor):
            return a.float()
        if isinstance(a, list):
            return [up(t) for t in a]
        return a
    return [up(a) for a in args]


def check(op, args, kw):
    """Triton against eager: fp32 at fp32 tolerance (fp16's on a GPU, where tl.dot runs
    in tf32); fp16/bf16 no worse than twice eager's own error against fp32 eager."""
    got = run(op, "triton", *args, **kw)
    want = run(op, "eager", *args, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous(memory_format=CL)
    if got.dtype == torch.float32:
        assert_close(got, want, dtype=torch.float16 if DEV == "cuda" else torch.float32)
    else:
        ref = run(op, "eager", *fp32(args), **kw)
        floor = 4 * torch.finfo(got.dtype).eps * max(1.0, ref.abs().max().item())
        assert_error_within(got, want, ref, factor=2.0, floor=floor)
    return got


# ------------------------------------------------------------------------- conv_bn_gelu
GELU_CASES = [  # (cin, cout, k, stride, hw, x layout, approximate, conv bias)
    (3, 8, 3, 2, (9, 9), "cl", "none", False),       # the stem: Cin=3, stride 2
    (19, 33, 3, 1, (7, 9), "nchw", "tanh", True),    # ragged channels, NCHW input, tanh GELU
    (8, 33, 3, 2, (12, 7), "cl", "none", False),     # stride 2, odd output size
    (16, 32, 3, 1, (7, 12), "cl", "none", False),    # 16-aligned channels: the ALIGNED path
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GELU_CASES)
def test_conv_bn_gelu(case, dtype):
    cin, cout, k, stride, hw, xl, approx, bias = case
    x, w, b, bn = make(cin, cout, k, dtype, hw, bias=bias, x_layout=xl)
    check("conv_bn_gelu", (x, w, b, bn), dict(stride=stride, padding=1, approximate=approx))


# -------------------------------------------------------------------------- conv_bn_add
ADD_CASES = [  # (cin, cout, k, hw, x layout, residual layout)
    (19, 33, 1, (7, 7), "cl", "cl"),       # the C block's projection, ragged
    (8, 8, 1, (12, 9), "nchw", "nchw"),    # NCHW activations and shortcut
    (32, 16, 1, (9, 7), "cl", "cl"),       # ALIGNED
    (8, 33, 3, (9, 12), "cl", "nchw"),     # a 3x3 conv with a residual works too
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADD_CASES)
def test_conv_bn_add(case, dtype):
    cin, cout, k, hw, xl, rl = case
    x, w, b, bn = make(cin, cout, k, dtype, hw, x_layout=xl)
    res = layout(torch.randn(2, cout, *hw, device=DEV).to(dtype), rl)
    check("conv_bn_add", (x, w, b, bn, res), dict(padding=k // 2))


# ------------------------------------------------------------------------------ conv_bn
BN_CASES = [  # (cin, cout, k, stride, hw, x layout)
    (33, 19, 1, 1, (7, 9), "cl"),       # projection without a shortcut
    (8, 16, 3, 2, (12, 12), "nchw"),    # a stage's strided 3x3 downsample
    (19, 8, 1, 2, (9, 9), "cl"),        # strided 1x1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BN_CASES)
def test_conv_bn(case, dtype):
    cin, cout, k, stride, hw, xl = case
    x, w, b, bn = make(cin, cout, k, dtype, hw, bias=True, x_layout=xl)
    check("conv_bn", (x, w, b, bn), dict(stride=stride, padding=k // 2))


# ------------------------------------------------------------------- folded= and caching
@pytest.mark.parametrize("dtype", DTYPES)
def test_precomputed_fold(dtype):
    x, w, b, bn = make(19, 33, 3, dtype, (7, 9))
    folded = K.fold_bn(w, b, *bn, 1e-5)
    got = check("conv_bn_gelu", (x, w, b, bn), dict(padding=1, folded=folded))
    again = run("conv_bn_gelu", "triton", x, w, b, bn, padding=1, folded=folded)  # cached weight
    torch.testing.assert_close(again, got, atol=0, rtol=0)
    res = layout(torch.randn(2, 33, 7, 9, device=DEV).to(dtype), "cl")
    check("conv_bn_add", (x, w, b, bn, res), dict(padding=1, folded=folded))


def test_cached_weight_follows_in_place_updates():
    x, w, b, bn = make(8, 16, 1, torch.float32, (5, 6))
    fw, fb = K.fold_bn(w, b, *bn, 1e-5)
    first = run("conv_bn", "triton", x, w, b, bn, folded=(fw, fb))
    fw.mul_(2.0)  # bumps the version counter: the cached GEMM weight must be rebuilt
    second = run("conv_bn", "triton", x, w, b, bn, folded=(fw, fb))
    torch.testing.assert_close(second - fb.view(1, -1, 1, 1), 2 * (first - fb.view(1, -1, 1, 1)),
                               **({"atol": 1e-4, "rtol": 1e-4} if DEV == "cpu" else {"atol": 1e-2, "rtol": 1e-2}))


def test_gemm_weight_layout_and_cache_bounds():
    w = torch.randn(5, 3, 3, 3, device=DEV)
    g = TC.gemm_weight(w, torch.float32)
    assert g.shape == (27, 5) and g.is_contiguous()
    for i in range(3):
        for j in range(3):
            for c in range(3):
                assert torch.equal(g[(i * 3 + j) * 3 + c], w[:, c, i, j])
    TC.clear_weight_cache()
    keep = [torch.randn(4, 2, 1, 1, device=DEV) for _ in range(TC._WEIGHT_CACHE_MAX + 8)]
    for t in keep:
        TC._cached_gemm_weight(t, torch.float16)
    assert len(TC._WEIGHT_CACHE) == TC._WEIGHT_CACHE_MAX
    # A new tensor where a freed one lived (same pointer, version and shape) must miss.
    a = torch.randn(4, 2, 1, 1, device=DEV)
    TC._cached_gemm_weight(a, torch.float32)
    del a
    gc.collect()
    b = torch.randn(4, 2, 1, 1, device=DEV)
    torch.testing.assert_close(TC._cached_gemm_weight(b, torch.float32), TC.gemm_weight(b, torch.float32))
    TC.clear_weight_cache()


# ----------------------------------------------------------------------- autocast, model
def test_autocast_bf16():
    x, w, b, bn = make(16, 33, 3, torch.float32, (7, 7))
    with torch.autocast(DEV, dtype=torch.bfloat16):
        got = run("conv_bn_gelu", "triton", x, w, b, bn, padding=1)
        lowp = run("conv_bn_gelu", "eager", x, w, b, bn, padding=1)
    assert got.dtype == torch.bfloat16
    ref = run("conv_bn_gelu", "eager", x, w, b, bn, padding=1)
    assert_error_within(got, lowp, ref, factor=2.0, floor=4 * torch.finfo(torch.bfloat16).eps)


def test_fused_cblock_eval():
    from ascan.layers import CBlock

    blk = CBlock(16, 16, stride=1, expand_ratio=2.0, fused=True).to(DEV).eval()
    with torch.no_grad():
        for bn in (blk.expand.bn, blk.project.bn):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
    x = torch.randn(2, 16, 7, 6, device=DEV).contiguous(memory_format=CL)
    ops = ("conv_bn_gelu", "conv_bn_add")
    with torch.no_grad():
        with K.use(**{op: "triton" for op in ops}), K.trace() as t:
            got = blk(x)
        assert sorted(t.impls()) == ["triton", "triton"]
        with K.use(**{op: "eager" for op in ops}):
            want = blk(x)
    assert_close(got, want, dtype=torch.float16 if DEV == "cuda" else torch.float32, scale=2.0)


# ------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("geometry", [(3, 2, 1, "gelu", False), (1, 1, 0, "none", True)])
def test_opcheck(geometry):
    k, stride, pad, act, has_res = geometry
    x = torch.randn(2, 8, 7, 9, device=DEV).contiguous(memory_format=CL)
    w = TC.gemm_weight(torch.randn(12, 8, k, k, device=DEV) / (8 * k * k) ** 0.5, torch.float32)
    b = torch.randn(12, device=DEV)
    ho, wo = out_hw((7, 9), k, stride, pad)
    res = torch.randn(2, 12, ho, wo, device=DEV) if has_res else None
    torch.library.opcheck(torch.ops.ascan_triton.conv2d_bias_act.default, (x, w, b, res, k, k, stride, pad, act))


# ------------------------------------------------------------------------ rejections
def _reject_args(kind):
    """(op, args, kwargs, expected reason fragment) for one unsupported case."""
    if kind == "training":
        x, w, b, bn = make(8, 8, 3, torch.float32, (6, 6))
        return "conv_bn_gelu", (x, w, b, bn), dict(padding=1, training=True), "training-mode BatchNorm"
    if kind == "groups":
        x, w, b, bn = make(8, 8, 3, torch.float32, (6, 6), groups=2)
        return "conv_bn", (x, w, b, bn), dict(padding=1, groups=2), "groups=2"
    if kind == "5x5":
        x, w, b, bn = make(8, 8, 5, torch.float32, (6, 6))
        return "conv_bn_gelu", (x, w, b, bn), dict(padding=2), "kernel 5x5"
    if kind == "dilation":
        x, w, b, bn = make(8, 8, 3, torch.float32, (6, 6))
        return "conv_bn", (x, w, b, bn), dict(padding=2, dilation=2), "dilation=(2, 2)"
    if kind == "padding":
        x, w, b, bn = make(8, 8, 3, torch.float32, (6, 6))
        return "conv_bn", (x, w, b, bn), dict(padding=0), "padding=(0, 0)"
    if kind == "float64":
        x, w, b, bn = make(8, 8, 1, torch.float64, (6, 6))
        return "conv_bn", (x, w, b, bn), {}, "dtype torch.float64 not supported"
    if kind == "empty":
        x, w, b, bn = make(8, 8, 1, torch.float32, (6, 6), n=0)
        return "conv_bn", (x, w, b, bn), {}, "empty input"
    if kind == "device":
        x, w, b, bn = make(8, 8, 1, torch.float32, (6, 6))
        return "conv_bn", (x.to("meta"), w.to("meta"), b, [t.to("meta") for t in bn]), {}, "device meta"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["training", "groups", "5x5", "dilation", "padding", "float64", "empty", "device"])
def test_forced_on_unsupported_input_raises(kind):
    op, args, kw, reason = _reject_args(kind)
    with K.use(**{op: "triton"}), pytest.raises(K.KernelUnavailableError, match=re.escape(reason)):
        with torch.no_grad():
            call(op, *args, **kw)


def test_requires_grad_never_picks_triton():
    x, w, b, bn = make(8, 16, 3, torch.float32, (6, 6))
    x.requires_grad_()
    with K.trace() as t:
        y = call("conv_bn_gelu", x, w, b, bn, padding=1)
    assert t.impls() != ["triton"]
    reasons = dict(t.records[0].skipped)  # (a higher-priority impl may run before triton is asked)
    assert reasons.get("triton", "inputs require grad and this impl has no backward") == \
        "inputs require grad and this impl has no backward"
    y.sum().backward()  # whatever ran is differentiable
    with K.use(conv_bn_gelu="triton"), pytest.raises(K.KernelUnavailableError, match="no backward"):
        call("conv_bn_gelu", x, w, b, bn, padding=1)
