"""conv_bias_act: ``act(conv2d(x, w, b) + residual)``, each impl against a float64 reference.

The reference here is written apart from the package (float64 conv, the activations from
their formulas), so the op's own eager reference is tested too.

* the parity matrix over the impls that run natively here (``native_impls``), every
  activation, with and without a residual; gradients; autocast (an fp32 residual promotes,
  and goes in before the activation); bad input; the geometries oneDNN crashes on;
* ``ascan::conv2d_bias_act`` (the cpu impl's oneDNN custom op) through ``opcheck``;
* ``triton`` under Triton's CPU interpreter when there is no GPU, on CUDA tensors otherwise,
  and its custom op, GEMM weight layout and weight cache;
* ``cuda``: its Python glue on CPU tensors through the epilogue's CPU reference loop
  (``cuda_ops_on_cpu``), and GPU parity where a CUDA device is present.
"""
import gc
import math

import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan_kernels.ops.conv_bias_act import cuda as conv_cuda
from ascan_kernels.testing import assert_close, assert_error_within, native_impls, skip_if_machine_lacks

from _helpers import TRITON_DEV, cuda_ops_on_cpu, needs_gpu, needs_ops, needs_triton

OP = "conv_bias_act"
ACTS = ["none", "gelu", "gelu_tanh", "silu"]
NATIVE = native_impls(OP)
CL = torch.channels_last


def act64(y: torch.Tensor, act: str) -> torch.Tensor:
    """The activations from their definitions, in whatever dtype y has (float64 here)."""
    if act == "gelu":
        return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    if act == "gelu_tanh":
        return 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if act == "silu":
        return y / (1 + torch.exp(-y))
    return y


def ref64(x, w, b, residual, stride, padding, dilation, groups, act):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual.double()
    return act64(y, act)


def out_hw(hw, k, stride, pad, dil=1):
    return tuple((s + 2 * pad - dil * (k - 1) - 1) // stride + 1 for s in hw)


def make(cin, cout, k, groups=1, hw=(9, 11), n=2, residual=False, stride=1, pad=0, dil=1, dtype=torch.float32,
         device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, *hw, generator=g)
    w = torch.randn(cout, cin // groups, k, k, generator=g) / (cin // groups * k * k) ** 0.5
    b = torch.randn(cout, generator=g) * 0.5
    r = torch.randn(n, cout, *out_hw(hw, k, stride, pad, dil), generator=g) if residual else None
    return [None if t is None else t.to(device=device, dtype=dtype) for t in (x, w, b, r)]


CASES = [  # (cin, cout, k, stride, padding, dilation, groups, hw)
    (4, 8, 3, 1, 1, 1, 1, (9, 11)),     # the UNet's 3x3
    (6, 10, 3, 2, 1, 1, 1, (9, 11)),    # strided downsample, odd size
    (8, 16, 1, 1, 0, 1, 1, (5, 6)),     # a 1x1 projection (with the block's shortcut)
    (8, 8, 3, 1, 1, 1, 8, (7, 5)),      # depthwise
    (3, 5, 3, 1, 2, 2, 1, (10, 10)),    # dilation
]


def run(impl, *args, **kw):
    with torch.no_grad(), K.use(**{OP: impl}), K.trace() as t:
        out = K.conv_bias_act(*args, **kw)
    assert t.impls(OP) == [impl]
    return out


# ============================================================================ parity
@pytest.mark.parametrize("impl", ["eager", *NATIVE])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}d{c[5]}g{c[6]}")
def test_matches_float64(case, act, residual, impl):
    cin, cout, k, s, p, d, g, hw = case
    x, w, b, r = make(cin, cout, k, g, hw, residual=residual, stride=s, pad=p, dil=d)
    got = run(impl, x, w, b, r, stride=s, padding=p, dilation=d, groups=g, act=act)
    want = ref64(x, w, b, r, (s, s), (p, p), (d, d), g, act)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close(got, want.float())


@pytest.mark.parametrize("impl", NATIVE)
@pytest.mark.parametrize("act", ACTS)
def test_bf16_within_eager_error(impl, act):
    skip_if_machine_lacks(OP, impl, torch.bfloat16)
    x, w, b, r = make(8, 16, 3, residual=True, pad=1, dtype=torch.bfloat16)
    got = run(impl, x, w, b, r, padding=1, act=act)
    lowp = run("eager", x, w, b, r, padding=1, act=act)
    assert got.dtype == torch.bfloat16
    assert_error_within(got, lowp, ref64(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, act).float(), factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", NATIVE)
def test_input_layouts(impl):
    x, w, b, r = make(4, 8, 3, residual=True, pad=1)
    want = ref64(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, "silu").float()
    for xin, rin in [(x.contiguous(memory_format=CL), r), (x, r.contiguous(memory_format=CL)),
                     (x.transpose(2, 3).contiguous().transpose(2, 3), r[:, :, :, :].transpose(2, 3).contiguous().transpose(2, 3))]:
        assert_close(run(impl, xin, w, b, rin, padding=1, act="silu"), want)


def test_no_bias():
    x, w, _, r = make(4, 8, 3, residual=True, pad=1)
    for impl in ["eager", *NATIVE]:
        assert_close(run(impl, x, w, None, r, padding=1, act="gelu"),
                     ref64(x, w, None, r, (1, 1), (1, 1), (1, 1), 1, "gelu").float())


# ============================================================================ gradients
@pytest.mark.parametrize("impl", ["eager", *NATIVE])
@pytest.mark.parametrize("act", ACTS)
def test_gradients_match_float64(impl, act):
    x, w, b, r = make(4, 6, 3, residual=True, pad=1, hw=(6, 7))
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    with K.use(**{OP: impl}), K.trace() as t:
        y = K.conv_bias_act(*leaves, padding=1, act=act)
    assert t.impls(OP) == [impl]
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    y.backward(gy)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b, r)]
    ref64(*leaves64, (1, 1), (1, 1), (1, 1), 1, act).backward(gy.double())
    for name, got, want in zip("x w b residual".split(), leaves, leaves64):
        assert_close(got.grad, want.grad.float(), scale=3), name


# ============================================================================ autocast
def _autocast_case():
    x, w, b, r = make(8, 16, 3, residual=True, pad=1)
    return x, w, b, r  # fp32 residual: eager's add promotes to fp32


def _check_autocast(got, x, w, b, r, act):
    with torch.autocast("cpu", dtype=torch.bfloat16), K.use(**{OP: "eager"}):
        lowp = K.conv_bias_act(x, w, b, r, padding=1, act=act)
    assert got.dtype == lowp.dtype == torch.float32  # the fp32 residual promoted the result
    assert_error_within(got, lowp, ref64(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, act).float(), factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", NATIVE)
@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_autocast_fp32_residual_goes_in_before_the_activation(impl, act):
    skip_if_machine_lacks(OP, impl, torch.bfloat16)
    x, w, b, r = _autocast_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(impl, x, w, b, r, padding=1, act=act)
    _check_autocast(got, x, w, b, r, act)


@needs_ops
@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_cuda_glue_autocast_fp32_residual_goes_in_before_the_activation(act):
    """The cuda impl's promotion path on CPU tensors (cuDNN's place taken by ATen's conv,
    the epilogue by its CPU reference loop)."""
    x, w, b, r = _autocast_case()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), cuda_ops_on_cpu("bias_act_epilogue_"):
        got = conv_cuda.conv_cuda(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, act)
    _check_autocast(got, x, w, b, r, act)


@needs_ops
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("act", ACTS)
def test_cuda_glue_matches_float64(act, residual):
    x, w, b, r = make(6, 10, 3, residual=residual, stride=2, pad=1)
    with torch.no_grad(), cuda_ops_on_cpu("bias_act_epilogue_"):
        got = conv_cuda.conv_cuda(x.contiguous(memory_format=CL), w, b, r, (2, 2), (1, 1), (1, 1), 1, act)
    assert_close(got, ref64(x, w, b, r, (2, 2), (1, 1), (1, 1), 1, act).float())


# ============================================================================ bad input
BAD = {
    "x not 4-D": (lambda x, w, b, r: (x[0], w, b, r), {}, "x"),
    "channel mismatch": (lambda x, w, b, r: (x[:, :3], w, b, r), {}, "channels"),
    "bias shape": (lambda x, w, b, r: (x, w, b[:3], r), {}, "bias"),
    "residual shape": (lambda x, w, b, r: (x, w, b, r[:, :, :2]), {}, "residual"),
    "too small": (lambda x, w, b, r: (x[:, :, :1, :1], w, b, None), {"padding": 0}, "too small"),
    "unknown act": (lambda x, w, b, r: (x, w, b, r), {"act": "relu6"}, "activation"),
    "dtype mix": (lambda x, w, b, r: (x, w.double(), b, r), {}, "dtype"),
    "bad groups": (lambda x, w, b, r: (x, w, b, r), {"groups": 0}, "groups"),
    "negative padding": (lambda x, w, b, r: (x, w, b, r), {"padding": -1}, "padding"),
}


@pytest.mark.parametrize("impl", ["eager", *NATIVE])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_op(case, impl):
    mutate, kw, fragment = BAD[case]
    x, w, b, r = make(4, 8, 3, residual=True, pad=1)
    kw = {"padding": 1, **kw}
    with K.use(**{OP: impl}), pytest.raises((ValueError, TypeError)) as e:
        K.conv_bias_act(*mutate(x, w, b, r), **kw)
    assert str(e.value).startswith("ascan_kernels.conv_bias_act:"), str(e.value)
    assert fragment in str(e.value), str(e.value)


def test_empty_batch():
    x, w, b, r = make(4, 8, 3, residual=True, pad=1, n=0)
    for impl in ["eager", *NATIVE]:
        try:
            y = run(impl, x, w, b, r, padding=1, act="gelu")
        except (ValueError, K.KernelUnavailableError) as e:  # a refusal must name the op
            assert "conv_bias_act" in str(e)
        else:
            assert y.shape == (0, 8, 9, 11)


def test_axis_of_only_padding_declined_by_cpu_and_correct():
    """oneDNN's channels_last conv crashes when a whole output axis reads only padding;
    the cpu impl declines such calls (the default dispatch then runs eager)."""
    x = torch.randn(2, 17, 7, 1)
    w = torch.randn(3, 17, 1, 1)
    with torch.no_grad(), K.trace() as t:
        y = K.conv_bias_act(x, w, None, stride=2, padding=1, dilation=2, act="gelu")
    assert "cpu" not in t.impls(OP)
    assert_close(y, ref64(x, w, None, None, (2, 2), (1, 1), (2, 2), 1, "gelu").float())


# ============================================================================ cpu custom op
@pytest.mark.skipif(K.available(OP).get("cpu") != "ok", reason="oneDNN path unavailable")
def test_opcheck_conv2d_bias_act():
    x, w, b, _ = make(4, 8, 3, hw=(7, 6))
    r = torch.randn(2, 8, 4, 3)
    for args in [(x, w, b, None, [1, 1], [1, 1], [1, 1], 1, "gelu"),
                 (x, w, b, r, [2, 2], [1, 1], [1, 1], 1, "silu"),
                 (x.clone().requires_grad_(), w.clone().requires_grad_(), b, None, [1, 1], [0, 0], [1, 1], 1,
                  "gelu_tanh")]:
        torch.library.opcheck(torch.ops.ascan.conv2d_bias_act.default, args)


# ============================================================================ triton impl
needs_triton_conv = needs_triton(OP)


@pytest.fixture
def triton_conv():
    """ascan_kernels.ops.conv_bias_act.triton, imported only where it can run (it imports triton)."""
    return pytest.importorskip("ascan_kernels.ops.conv_bias_act.triton")


TRITON_CASES = [  # (cin, cout, k, stride, residual, act, x layout)
    (3, 8, 3, 2, False, "silu", "cl"),          # ragged Cin, strided
    (19, 33, 3, 1, True, "gelu", "nchw"),       # ragged channels, NCHW input, residual
    (16, 32, 1, 1, True, "none", "cl"),         # ALIGNED 1x1 with the shortcut
    (8, 16, 1, 2, False, "gelu_tanh", "cl"),    # strided 1x1
]


@needs_triton_conv
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}-{c[5]}")
def test_triton_matches_float64(case):
    cin, cout, k, s, res, act, xl = case
    x, w, b, r = make(cin, cout, k, hw=(7, 9), residual=res, stride=s, pad=k // 2, device=TRITON_DEV)
    if xl == "cl":
        x = x.contiguous(memory_format=CL)
    got = run("triton", x, w, b, r, stride=s, padding=k // 2, act=act)
    assert got.is_contiguous(memory_format=CL)
    want = ref64(x.cpu(), w.cpu(), b.cpu(), None if r is None else r.cpu(), (s, s), (k // 2,) * 2, (1, 1), 1, act)
    # tl.dot runs in tf32 on a GPU: fp16's tolerance there
    assert_close(got.cpu(), want.float(), dtype=torch.float16 if TRITON_DEV == "cuda" else torch.float32)


@needs_triton_conv
def test_triton_autocast_fp32_residual_goes_in_before_the_activation():
    x, w, b, r = [t.to(TRITON_DEV) for t in _autocast_case()]
    with torch.autocast(TRITON_DEV, dtype=torch.bfloat16):
        got = run("triton", x, w, b, r, padding=1, act="silu")
    _check_autocast(got.cpu(), *(t.cpu() for t in (x, w, b, r)), "silu")


@needs_triton_conv
def test_triton_declines_what_it_does_not_implement():
    x, w, b, _ = make(8, 8, 3, groups=2, pad=1, device=TRITON_DEV)
    with K.use(**{OP: "triton"}), pytest.raises(K.KernelUnavailableError, match="groups=2"):
        K.conv_bias_act(x, w, b, padding=1, groups=2)
    x, w, b, _ = make(8, 8, 5, pad=2, device=TRITON_DEV)
    with K.use(**{OP: "triton"}), pytest.raises(K.KernelUnavailableError, match="kernel 5x5"):
        K.conv_bias_act(x, w, b, padding=2)


@needs_triton_conv
@pytest.mark.parametrize("geometry", [(3, 2, 1, "gelu", False), (1, 1, 0, "silu", True)])
def test_triton_opcheck(geometry, triton_conv):
    k, stride, pad, act, has_res = geometry
    x = torch.randn(2, 8, 7, 9, device=TRITON_DEV).contiguous(memory_format=CL)
    w = triton_conv.gemm_weight(torch.randn(12, 8, k, k, device=TRITON_DEV) / (8 * k * k) ** 0.5, torch.float32)
    b = torch.randn(12, device=TRITON_DEV)
    res = torch.randn(2, 12, *out_hw((7, 9), k, stride, pad), device=TRITON_DEV) if has_res else None
    torch.library.opcheck(torch.ops.ascan_triton.conv2d_bias_act.default, (x, w, b, res, k, k, stride, pad, act))


@needs_triton_conv
def test_triton_gemm_weight_layout_and_cache_bounds(triton_conv):
    w = torch.randn(5, 3, 3, 3, device=TRITON_DEV)
    g = triton_conv.gemm_weight(w, torch.float32)
    assert g.shape == (27, 5) and g.is_contiguous()
    for i in range(3):
        for j in range(3):
            for c in range(3):
                assert torch.equal(g[(i * 3 + j) * 3 + c], w[:, c, i, j])
    triton_conv.clear_weight_cache()
    keep = [torch.randn(4, 2, 1, 1, device=TRITON_DEV) for _ in range(triton_conv._WEIGHT_CACHE_MAX + 8)]
    for t in keep:
        triton_conv._cached_gemm_weight(t, torch.float16)
    assert len(triton_conv._WEIGHT_CACHE) == triton_conv._WEIGHT_CACHE_MAX
    # A new tensor where a freed one lived (same pointer, version and shape) must miss.
    a = torch.randn(4, 2, 1, 1, device=TRITON_DEV)
    triton_conv._cached_gemm_weight(a, torch.float32)
    del a
    gc.collect()
    b = torch.randn(4, 2, 1, 1, device=TRITON_DEV)
    torch.testing.assert_close(triton_conv._cached_gemm_weight(b, torch.float32),
                               triton_conv.gemm_weight(b, torch.float32))
    triton_conv.clear_weight_cache()


# ============================================================================ cuda on a GPU
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("act", ACTS)
def test_cuda_gpu_parity(act, dtype):
    x, w, b, r = make(16, 32, 3, residual=True, pad=1, dtype=dtype, device="cuda")
    got = run("cuda", x.contiguous(memory_format=CL), w, b, r, padding=1, act=act)
    lowp = run("eager", x, w, b, r, padding=1, act=act)
    want = ref64(x.cpu(), w.cpu(), b.cpu(), r.cpu(), (1, 1), (1, 1), (1, 1), 1, act).float()
    if dtype == torch.float32:
        assert_close(got.cpu(), want, dtype=torch.float16)  # cuDNN may pick tf32 algorithms
    else:
        assert_error_within(got.cpu(), lowp.cpu(), want, factor=2.0, floor=1e-2)


@pytest.mark.skipif("cpu" not in NATIVE, reason="oneDNN path unavailable")
def test_cpu_not_preferred_where_measured_slower_but_forcible():
    x, w, b, r = make(8, 16, 1, residual=True)
    with torch.no_grad(), K.trace() as t:
        K.conv_bias_act(x, w, b, r)                  # fp32, no activation: eager was faster
        K.conv_bias_act(x, w, b, r, act="gelu")      # an activation to fuse: oneDNN
        with K.use(conv_bias_act="cpu"):
            K.conv_bias_act(x, w, b, r)
    assert t.impls(OP) == ["eager", "cpu", "cpu"]
    assert dict(t.records[0].skipped)["cpu"].startswith("not preferred: float32 conv + bias")
