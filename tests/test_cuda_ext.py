"""The CUDA C++ kernels of ascan_kernels._C (csrc/cuda) and their ``cuda`` registry impls.

On a machine without a GPU this checks what can be checked there:

* the extension was built with its CUDA kernels when a toolkit was there (CI sets
  CUDA_HOME), registers them for the CUDA key, and they have no spills (cuobjdump);
* the registry lists a ``cuda`` impl for each op, unavailable with "no CUDA device";
* the per-element math the kernels use (csrc/include/ascan/elementwise_math.h) is right:
  the same ops' CPU kernels are plain loops over that header, compared here with eager
  PyTorch for float32/bfloat16/float16, both memory formats and ragged sizes; the ``cuda``
  impls' Python glue (BN folding, casts, autograd) runs on CPU tensors through them too;
* the input checks the CPU and CUDA bindings share, opcheck, fake kernels.

GPU parity tests (every dtype, ragged shapes, forced ``cuda`` impl against eager) run only
where a CUDA device is present and skip with the reason otherwise.
"""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan_kernels import cuda as KC
from ascan_kernels._ext import _build_info, cuda_ops, has_cuda_kernels, load_extension
from ascan_kernels.cuda import wrappers as cuda_impls
from ascan_kernels.testing import assert_close, assert_error_within

EXT, WHY = load_extension()
HAS_NORM_ACT = EXT is not None and hasattr(torch.ops.ascan_C, "layer_norm_fwd")
needs_ops = pytest.mark.skipif(not HAS_NORM_ACT, reason=f"ascan_kernels._C lacks the norm/act ops: {WHY or 'old build'}")
needs_cuda_build = pytest.mark.skipif(not has_cuda_kernels(),
                                      reason=f"ascan_kernels._C was built without CUDA kernels: {WHY or _build_info()}")
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA device: GPU parity tests run only on a GPU machine")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["fp32", "bf16", "fp16"]
LOWP = {torch.bfloat16: 1e-2, torch.float16: 1e-3}  # floors for assert_error_within
ACTS = {"none": (0, lambda v: v), "gelu": (1, F.gelu), "gelu_tanh": (2, lambda v: F.gelu(v, approximate="tanh")),
        "silu": (3, F.silu)}
OPS = ("conv_bn_gelu", "conv_bn_add", "conv_bn", "group_norm_silu", "layer_norm")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, scale=1.0, offset=0.0):
    return torch.randn(*shape, generator=gen(seed)) * scale + offset


def fmt(t, channels_last):
    if not channels_last:
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


def check_lowp(actual, lowp_eager, ref32, dtype):
    """fp32: close to the reference; bf16/fp16: within 2x eager's own error (plus a floor)."""
    if dtype == torch.float32:
        assert_close(actual, ref32)
    else:
        assert actual.dtype == dtype
        assert_error_within(actual, lowp_eager, ref32, floor=LOWP[dtype])


# ------------------------------------------------------------------------- build and registration
def test_cuda_kernels_built_when_a_toolkit_was_there():
    info = _build_info() or {}
    if info.get("skipped"):
        pytest.skip(f"pure-Python install: {info['skipped']}")
    toolkit = os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    if not info.get("with_cuda"):
        if toolkit and torch.version.cuda:
            pytest.fail(f"CUDA_HOME has nvcc and torch is a CUDA build, but the extension was built without CUDA "
                        f"kernels ({info.get('why_no_cuda')}): rebuild with pip install -e .")
        pytest.skip(f"extension built without CUDA kernels: {info.get('why_no_cuda')}")
    assert EXT is not None, WHY
    built = EXT.build_info()
    assert built["with_cuda"] is True and built["cuda_version"] >= 11000
    assert info["cuda_arch_list"]


@needs_cuda_build
@pytest.mark.parametrize("name", ["bias_act_epilogue_", "group_norm_silu", "layer_norm_fwd", "layer_norm_bwd"])
def test_cuda_and_cpu_kernels_registered(name):
    assert name in cuda_ops()
    for key in ("CUDA", "CPU"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ascan_C::{name}", key), (name, key)


@pytest.mark.parametrize("op", OPS)
def test_registry_lists_cuda_impl_with_reason(op):
    impl = K.get_op(op).impl("cuda")
    assert impl.priority == KC.PRIORITY == 300
    status = K.available(op)["cuda"]
    if GPU and has_cuda_kernels():
        assert status == "ok"
    elif has_cuda_kernels():
        assert status == "no CUDA device"
    else:
        assert status != "ok" and status  # the build/load reason
    assert impl.autograd == (op == "layer_norm")


def test_forcing_cuda_without_device_raises_with_reason():
    if GPU:
        pytest.skip("a CUDA device is present")
    x = rand(2, 8, 16)
    with pytest.raises(K.KernelUnavailableError, match="impl 'cuda' was forced"):
        with K.use(layer_norm="cuda"):
            K.layer_norm(x)


def test_supports_reasons():
    x = rand(2, 8, 16)
    assert "CUDA tensors" in cuda_impls._ln_supports(x, None, None)
    meta = torch.empty(2, 2000, device="meta")
    assert "device meta" in cuda_impls._ln_supports(meta, None, None)
    args = (x[:, :, :, None], rand(4, 8, 1, 1), None, None, None, torch.zeros(4), torch.ones(4), None,
            (1, 1), (0, 0), (1, 1), 1, 1e-5, 0.1)
    assert "training-mode BatchNorm" in cuda_impls._conv_supports(*args, True, "gelu", None)
    assert "CUDA tensors" in cuda_impls._conv_supports(*args, False, "gelu", None)


@needs_cuda_build
def test_resource_usage_no_spills():
    try:
        usage = KC.resource_usage()
    except RuntimeError as e:
        pytest.skip(str(e))
    archs = {u.arch for u in usage}
    wanted = {f"sm_{a.replace('.', '').replace('+PTX', '')}" for a in _build_info()["cuda_arch_list"].split(";")}
    assert wanted <= archs, (wanted, archs)
    names = " ".join(u.kernel for u in usage)
    for k in ("affine_act_kernel", "group_norm_stats_kernel", "group_norm_coeffs_kernel", "layer_norm_fwd_kernel",
              "layer_norm_bwd_kernel"):
        assert k in names
    spills = [(u.arch, u.kernel, u.local) for u in usage if u.local or u.stack]
    assert not spills, spills
    assert all(u.shared <= 48 * 1024 and 0 < u.registers <= 255 for u in usage)
    assert "layer_norm_fwd_kernel" in KC.resources.table(usage)


def test_resource_usage_parser():
    text = """
Fatbin elf code:
================
arch = sm_90
Resource usage:
 Common:
  GLOBAL:0
 Function _Z3fooPf:
  REG:40 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:380 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    (u,) = KC.resources.parse_resource_usage(text)
    assert (u.arch, u.mangled, u.registers, u.shared, u.local, u.stack) == ("sm_90", "_Z3fooPf", 40, 1024, 4, 8)
    assert KC.resources.short_name("void ascan::cuda::(anonymous namespace)::k<float, 4>(ascan::P)") == "k<float, 4>"


# ------------------------------------------------------------------------- shared math: epilogue
EPI_SHAPES = [(2, 5, 7, 3), (1, 16, 4, 4), (3, 8, 1, 9), (2, 24, 5, 5)]


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "res"])
def test_bias_act_epilogue_matches_eager(dtype, act, channels_last, residual):
    code, fn = ACTS[act]
    for i, shape in enumerate(EPI_SHAPES):
        y = fmt(rand(*shape, seed=i, scale=2).to(dtype), channels_last)
        b = rand(shape[1], seed=i + 10)
        r = fmt(rand(*shape, seed=i + 20).to(dtype), channels_last) if residual else None
        out = y.clone()
        torch.ops.ascan_C.bias_act_epilogue_(out, b, r, code)
        assert out.stride() == y.stride()
        bb = b.reshape(1, -1, 1, 1)
        ref32 = fn(y.float() + bb + (r.float() if residual else 0))
        eager = fn(y + bb.to(dtype) + (r if residual else 0))
        check_lowp(out, eager, ref32, dtype)


@needs_ops
def test_activations_at_extremes():
    y = torch.tensor([-1e4, -100.0, -88.5, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4]).reshape(1, 1, 1, -1)
    for act, (code, fn) in ACTS.items():
        out = y.clone()
        torch.ops.ascan_C.bias_act_epilogue_(out, torch.zeros(1), None, code)
        assert torch.isfinite(out).all(), act
        torch.testing.assert_close(out, fn(y), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- shared math: group norm
GN_CASES = [  # (shape, groups)
    ((2, 8, 5, 3), 4), ((1, 32, 4, 4), 32), ((2, 12, 7, 1), 3), ((3, 6, 3), 2), ((1, 8, 2, 3, 3), 4), ((2, 16, 6, 6), 1)]


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("film", [False, True], ids=["", "film"])
def test_group_norm_silu_matches_eager(dtype, channels_last, film):
    for i, (shape, G) in enumerate(GN_CASES):
        if channels_last and len(shape) == 3:
            continue
        N, C = shape[:2]
        x = fmt(rand(*shape, seed=i, scale=3, offset=1).to(dtype), channels_last)
        w = rand(C, seed=i + 1, scale=0.5, offset=1) if i % 2 == 0 else None
        b = rand(C, seed=i + 2) if i % 3 != 1 else None
        sc = rand(N, C, seed=i + 3, scale=0.3) if film else None
        sh = rand(N, C, seed=i + 4, scale=0.3) if film else None
        out = torch.ops.ascan_C.group_norm_silu(x, G, w, b, 1e-5, sc, sh)
        assert out.shape == x.shape and out.dtype == dtype and out.stride() == x.stride()
        ref32 = K.group_norm_silu_reference(x.float(), G, w, b, 1e-5, sc, sh)
        lowp = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        eager = K.group_norm_silu_reference(x, G, lowp(w), lowp(b), 1e-5, lowp(sc), lowp(sh))
        check_lowp(out, eager, ref32, dtype)


@needs_ops
def test_group_norm_large_offset_is_stable():
    x = rand(2, 4, 16, 16, scale=1.0, offset=1e4)
    out = torch.ops.ascan_C.group_norm_silu(x, 2, None, None, 1e-5, None, None)
    ref = K.group_norm_silu_reference(x.double(), 2)
    # At 1e4 float32 itself quantises x to ~1e-3: compare with eager float32's own error.
    assert_error_within(out.double(), K.group_norm_silu_reference(x, 2).double(), ref, floor=1e-4)


# ------------------------------------------------------------------------- shared math: layer norm
LN_SHAPES = [(3, 64), (2, 5, 77), (7, 320), (1, 1280), (4, 1000), (2, 3, 1), (0, 16), (5, 1500)]


@needs_ops
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_fwd_matches_eager(dtype, affine):
    for i, shape in enumerate(LN_SHAPES):
        C = shape[-1]
        x = rand(*shape, seed=i, scale=2, offset=0.5).to(dtype)
        w = rand(C, seed=i + 1, scale=0.5, offset=1) if affine else None
        b = rand(C, seed=i + 2) if affine else None
        y, mean, rstd = torch.ops.ascan_C.layer_norm_fwd(x, w, b, 1e-5)
        rows = x.numel() // C
        assert y.shape == x.shape and y.dtype == dtype and mean.shape == rstd.shape == (rows,)
        ref32 = F.layer_norm(x.float(), (C,), w, b, 1e-5)
        eager = F.layer_norm(x, (C,), None if w is None else w.to(dtype), None if b is None else b.to(dtype), 1e-5)
        if rows:
            check_lowp(y, eager, ref32, dtype)
            assert_close(mean, x.float().reshape(rows, C).mean(-1))


@needs_ops
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_backward_matches_autograd(affine):
    for i, shape in enumerate([(3, 64), (2, 5, 77), (4, 1000), (2, 1)]):
        C = shape[-1]
        x = rand(*shape, seed=i, scale=2).requires_grad_()
        w = rand(C, seed=i + 1, offset=1).requires_grad_() if affine else None
        b = rand(C, seed=i + 2).requires_grad_() if affine else None
        g = rand(*shape, seed=i + 3)
        y = torch.ops.ascan_C.layer_norm_fwd(x, w, b, 1e-5)[0]
        params = [t for t in (x, w, b) if t is not None]
        got = torch.autograd.grad(y, params, g)
        want = torch.autograd.grad(F.layer_norm(x, (C,), w, b, 1e-5), params, g)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, atol=2e-4, rtol=2e-4)


@needs_ops
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_layer_norm_backward_low_precision(dtype):
    x32, g32 = rand(6, 200, scale=2), rand(6, 200, seed=1)
    w = rand(200, seed=2, offset=1)
    x, g = x32.to(dtype), g32.to(dtype)
    _, mean, rstd = torch.ops.ascan_C.layer_norm_fwd(x, w, None, 1e-5)
    dx, dw, db = torch.ops.ascan_C.layer_norm_bwd(g, x, mean, rstd, w)
    xr = x.float().requires_grad_()
    wr = w.clone().requires_grad_()
    br = torch.zeros(200, requires_grad=True)
    ref = torch.autograd.grad(F.layer_norm(xr, (200,), wr, br, 1e-5), (xr, wr, br), g.float())
    xe = x.clone().requires_grad_()
    eager_dx = torch.autograd.grad(F.layer_norm(xe, (200,), w.to(dtype), None, 1e-5), xe, g)[0]
    assert dx.dtype == dtype and dw.dtype == db.dtype == torch.float32
    assert_error_within(dx, eager_dx, ref[0], floor=LOWP[dtype])
    torch.testing.assert_close(dw, ref[1], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(db, ref[2], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------- the cuda impls' Python glue
@needs_ops
@pytest.mark.parametrize("op,act", [("conv_bn_gelu", "gelu"), ("conv_bn_gelu", "gelu_tanh"), ("conv_bn_add", "none"),
                                    ("conv_bn", "none")])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("prefold", [False, True], ids=["fold", "folded"])
def test_conv_impl_glue_on_cpu(op, act, channels_last, prefold):
    """The cuda impl's function (fold_bn, bias-less conv, epilogue) on CPU tensors, where the
    epilogue runs the CPU reference of the same math: equals the op's eager reference."""
    x = fmt(rand(2, 6, 9, 7), channels_last)
    w = rand(10, 3, 3, 3, seed=1, scale=0.3)
    bias = rand(10, seed=2)
    bnw, bnb = rand(10, seed=3, offset=1), rand(10, seed=4)
    rm, rv = rand(10, seed=5), rand(10, seed=6).abs() + 0.5
    residual = fmt(rand(2, 10, 5, 7, seed=7), not channels_last) if op == "conv_bn_add" else None
    stride, padding, dilation, groups = (2, 1), (1, 1), (1, 1), 2
    folded = K.fold_bn(w, bias, bnw, bnb, rm, rv, 1e-5) if prefold else None
    args = (x, w, bias, bnw, bnb, rm, rv, residual, stride, padding, dilation, groups, 1e-5, 0.1, False, act)
    out = cuda_impls._conv(*args, folded)
    ref = K.get_op(op).reference(*args, None)
    assert_close(out, ref, scale=3)


@needs_ops
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_group_norm_impl_glue_on_cpu(channels_last):
    x = fmt(rand(2, 8, 5, 5, scale=2), channels_last)
    w = rand(8, seed=1).to(torch.bfloat16)  # params of any float dtype: cast to float32 by the impl
    b, sc, sh = rand(8, seed=2), rand(2, 8, seed=3, scale=0.2), rand(2, 8, seed=4, scale=0.2)
    out = cuda_impls._group_norm_silu(x, 4, w, b, 1e-5, sc, sh)
    assert_close(out, K.group_norm_silu_reference(x, 4, w.float(), b, 1e-5, sc, sh))


@needs_ops
def test_layer_norm_impl_glue_on_cpu_with_grads():
    x = rand(2, 7, 96, scale=2)[:, :, :80].requires_grad_()  # non-contiguous: the impl makes it so
    w = rand(80, seed=1, offset=1).to(torch.bfloat16).requires_grad_()
    b = rand(80, seed=2).requires_grad_()
    out = cuda_impls._layer_norm(x, w, b, 1e-5)
    ref = F.layer_norm(x, (80,), w.float(), b, 1e-5)
    assert_close(out, ref)
    g = rand(2, 7, 80, seed=3)
    got = torch.autograd.grad(out, (x, w, b), g)
    want = torch.autograd.grad(ref, (x, w, b), g)
    assert got[1].dtype == torch.bfloat16
    for a, e in zip(got, want):
        torch.testing.assert_close(a.float(), e.float(), atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------------- torch integration and bad input
@needs_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype):
    x4 = rand(2, 6, 3, 5).to(dtype)
    torch.library.opcheck(torch.ops.ascan_C.bias_act_epilogue_.default, (x4.clone(), rand(6), x4.clone(), 1))
    torch.library.opcheck(torch.ops.ascan_C.group_norm_silu.default,
                          (fmt(x4, True), 3, rand(6), None, 1e-5, rand(2, 6), None))
    x = rand(4, 5, 24).to(dtype)
    torch.library.opcheck(torch.ops.ascan_C.layer_norm_fwd.default, (x, rand(24), rand(24), 1e-5))
    _, m, r = torch.ops.ascan_C.layer_norm_fwd(x, None, None, 1e-5)
    torch.library.opcheck(torch.ops.ascan_C.layer_norm_bwd.default, (x.clone(), x, m, r, rand(24)))


@needs_ops
def test_opcheck_layer_norm_autograd():
    args = (rand(3, 5, 24).requires_grad_(), rand(24).requires_grad_(), rand(24).requires_grad_(), 1e-5)
    torch.library.opcheck(torch.ops.ascan_C.layer_norm_fwd.default, args)


def bad_cases():
    y = rand(2, 4, 3, 3)
    x2 = rand(4, 8)
    ep, gn, ln, lb = (torch.ops.ascan_C.bias_act_epilogue_, torch.ops.ascan_C.group_norm_silu,
                      torch.ops.ascan_C.layer_norm_fwd, torch.ops.ascan_C.layer_norm_bwd) if HAS_NORM_ACT else [None] * 4
    m, r = torch.zeros(4), torch.ones(4)
    return [
        ("epi_int", lambda: ep(y.int(), torch.zeros(4), None, 1), "bias_act_epilogue_: y must be float32, bfloat16 or float16"),
        ("epi_2d", lambda: ep(x2, torch.zeros(8), None, 1), r"bias_act_epilogue_: y must be \(N, C, \*spatial\)"),
        ("epi_bias_shape", lambda: ep(y, torch.zeros(5), None, 1), r"bias_act_epilogue_: bias must have shape \(4\)"),
        ("epi_bias_dtype", lambda: ep(y, torch.zeros(4).half(), None, 1), "bias_act_epilogue_: bias must be float32"),
        ("epi_act", lambda: ep(y, torch.zeros(4), None, 7), "bias_act_epilogue_: act must be 0"),
        ("epi_layout", lambda: ep(y.transpose(2, 3), torch.zeros(4), None, 0),
         "bias_act_epilogue_: y must be contiguous \\(NCHW\\) or channels_last"),
        ("epi_res_strides", lambda: ep(y, torch.zeros(4), fmt(y, True), 0), "bias_act_epilogue_: residual strides"),
        ("epi_res_dtype", lambda: ep(y, torch.zeros(4), y.half(), 0), "bias_act_epilogue_: residual dtype Half differs"),
        ("gn_groups", lambda: gn(y, 3, None, None, 1e-5, None, None), "group_norm_silu: num_groups must be positive and divide C=4, got 3"),
        ("gn_scale", lambda: gn(y, 2, None, None, 1e-5, torch.zeros(4), None), r"group_norm_silu: scale must have shape \(2, 4\)"),
        ("gn_weight", lambda: gn(y, 2, torch.ones(4).double(), None, 1e-5, None, None), "group_norm_silu: weight must be float32"),
        ("gn_eps", lambda: gn(y, 2, None, None, float("nan"), None, None), "group_norm_silu: eps must be finite"),
        ("ln_noncontig", lambda: ln(x2.t(), None, None, 1e-5), "layer_norm_fwd: x must be contiguous"),
        ("ln_weight", lambda: ln(x2, torch.ones(7), None, 1e-5), r"layer_norm_fwd: weight must have shape \(8\)"),
        ("ln_empty", lambda: ln(x2[:, :0], None, None, 1e-5), r"layer_norm_fwd: the normalised \(last\) dim of x is empty"),
        ("lb_dy", lambda: lb(x2[:2], x2, m, r, None), "layer_norm_bwd: dy shape"),
        ("lb_mean", lambda: lb(x2, x2, torch.zeros(3), r, None), r"layer_norm_bwd: mean must have shape \(4\)"),
        ("lb_dtype", lambda: lb(x2.half(), x2, m, r, None), "layer_norm_bwd: dy dtype Half differs from x dtype Float"),
    ]


@needs_ops
@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input_names_the_op_and_problem(case):
    _, call, msg = case
    with pytest.raises(RuntimeError, match=f"ascan {msg}"):
        call()


@needs_ops
def test_fake_kernels_keep_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 4, 4, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        out = torch.ops.ascan_C.group_norm_silu(x, 4, None, None, 1e-5, None, None)
        y, m, r = torch.ops.ascan_C.layer_norm_fwd(torch.empty(3, 5, 64), None, None, 1e-5)
    assert out.stride() == x.stride() and out.dtype == torch.bfloat16
    assert y.shape == (3, 5, 64) and m.shape == r.shape == (15,) and m.dtype == torch.float32


# ------------------------------------------------------------------------- GPU parity (skip on CPU)
def cuda_forced(op):
    return K.use(**{op: "cuda"})


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op", ["conv_bn_gelu", "conv_bn_add", "conv_bn"])
def test_gpu_conv_parity(dtype, channels_last, op):
    dev = "cuda"
    for i, (N, Cin, H, W, Cout, k, s, g) in enumerate([(2, 16, 15, 13, 24, 3, 1, 1), (1, 8, 9, 9, 12, 1, 2, 1),
                                                      (3, 12, 7, 11, 12, 3, 2, 3), (2, 32, 16, 16, 64, 3, 1, 1)]):
        x = fmt(rand(N, Cin, H, W, seed=i), channels_last).to(dev, dtype)
        w = rand(Cout, Cin // g, k, k, seed=i + 1, scale=0.2).to(dev, dtype)
        bn = [rand(Cout, seed=i + 2, offset=1), rand(Cout, seed=i + 3), rand(Cout, seed=i + 4),
              rand(Cout, seed=i + 5).abs() + 0.5]
        bnw, bnb, rm, rv = (t.to(dev) for t in bn)
        kw = dict(stride=s, padding=k // 2, groups=g)
        fn = getattr(K, op)
        extra = ()
        if op == "conv_bn_add":
            Ho, Wo = (H + 2 * (k // 2) - k) // s + 1, (W + 2 * (k // 2) - k) // s + 1
            extra = (fmt(rand(N, Cout, Ho, Wo, seed=i + 6), channels_last).to(dev, dtype),)
        with cuda_forced(op), K.trace() as t:
            out = fn(x, w, None, bnw, bnb, rm, rv, *extra, **kw)
        assert t.impls() == ["cuda"]
        with K.use(**{op: "eager"}):
            eager = fn(x, w, None, bnw, bnb, rm, rv, *extra, **kw)
            ref32 = fn(x.float(), w.float(), None, bnw, bnb, rm, rv, *(e.float() for e in extra), **kw)
        assert out.dtype == dtype
        check_lowp(out, eager, ref32, dtype) if dtype != torch.float32 else assert_close(out, ref32, scale=10)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gpu_group_norm_silu_parity(dtype, channels_last):
    for i, (shape, G) in enumerate(GN_CASES + [((2, 320, 32, 32), 32), ((1, 64, 63, 65), 32)]):
        if channels_last and len(shape) == 3:
            continue
        N, C = shape[:2]
        x = fmt(rand(*shape, seed=i, scale=2, offset=0.5), channels_last).to("cuda", dtype)
        w, b = rand(C, seed=i + 1, offset=1).cuda(), rand(C, seed=i + 2).cuda()
        sc, sh = rand(N, C, seed=i + 3, scale=0.3).cuda(), rand(N, C, seed=i + 4, scale=0.3).cuda()
        with cuda_forced("group_norm_silu"):
            out = K.group_norm_silu(x, G, w, b, 1e-5, sc, sh)
        ref32 = K.group_norm_silu_reference(x.float(), G, w, b, 1e-5, sc, sh)
        eager = K.group_norm_silu_reference(x, G, w.to(dtype), b.to(dtype), 1e-5, sc.to(dtype), sh.to(dtype))
        assert out.stride() == x.stride()
        check_lowp(out, eager, ref32, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gpu_layer_norm_parity_and_grads(dtype):
    for i, shape in enumerate([(3, 64), (2, 50, 77), (7, 320), (4, 1280), (9, 1000), (2, 3, 1), (1, 768), (3, 129)]):
        C = shape[-1]
        x = rand(*shape, seed=i, scale=2, offset=0.5).to("cuda", dtype).requires_grad_()
        w = rand(C, seed=i + 1, offset=1).cuda().requires_grad_()
        b = rand(C, seed=i + 2).cuda().requires_grad_()
        g = rand(*shape, seed=i + 3).to("cuda", dtype)
        with cuda_forced("layer_norm"):
            out = K.layer_norm(x, w, b)
        got = torch.autograd.grad(out, (x, w, b), g)
        xr, wr, br = (t.detach().float().requires_grad_() for t in (x, w, b))
        ref = F.layer_norm(xr, (C,), wr, br)
        want = torch.autograd.grad(ref, (xr, wr, br), g.float())
        eager = F.layer_norm(x, (C,), w.to(dtype), b.to(dtype))
        eager_grads = torch.autograd.grad(eager, (x,), g)
        check_lowp(out, eager, ref, dtype)
        check_lowp(got[0], eager_grads[0], want[0], dtype)
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        for a, e in zip(got[1:], want[1:]):
            torch.testing.assert_close(a, e, atol=tol * max(1.0, e.abs().max().item()), rtol=tol)


@needs_gpu
def test_gpu_layer_norm_wide_rows_fall_back():
    x = torch.randn(4, 2048, device="cuda")
    assert "C=2048 > 1280" in cuda_impls._ln_supports(x, None, None)
    with K.trace() as t:
        K.layer_norm(x)
    assert t.impls() != ["cuda"]
