"""conv_bn_gelu / conv_bn_add / conv_bn: each fused impl against the eager reference."""
import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan_kernels.testing import (assert_close, assert_error_within, grads_by_impl, native_impls,
                                   skip_if_machine_lacks)

FUSED = native_impls("conv_bn_gelu")
DTYPES = [torch.float32, torch.bfloat16]


def make(cin, cout, k, groups=1, dtype=torch.float32, n=2, hw=(9, 11)):
    x = torch.randn(n, cin, *hw).to(dtype)
    w = (torch.randn(cout, cin // groups, k, k) / (cin // groups * k * k) ** 0.5).to(dtype)
    bn = dict(bn_weight=torch.rand(cout) + 0.5, bn_bias=torch.randn(cout),
              running_mean=torch.randn(cout) * 0.1, running_var=torch.rand(cout) + 0.5)
    return x, w, bn


def call(op, x, w, bn, residual=None, **kw):
    args = (x, w, None, bn["bn_weight"], bn["bn_bias"], bn["running_mean"], bn["running_var"])
    if op == "conv_bn_add":
        return K.conv_bn_add(*args, residual, **kw)
    return getattr(K, op)(*args, **kw)


CASES = [  # (cin, cout, k, stride, padding, dilation, groups, hw)
    (4, 8, 3, 1, 1, 1, 1, (9, 11)),
    (6, 10, 3, 2, 1, 1, 1, (9, 11)),    # stride 2, odd spatial size
    (8, 8, 3, 1, 1, 1, 8, (7, 5)),      # depthwise
    (6, 9, 1, 1, 0, 1, 3, (5, 6)),      # grouped 1x1
    (3, 5, 3, 1, 2, 2, 1, (10, 10)),    # dilation
    (5, 7, 5, 3, 2, 1, 1, (13, 12)),    # 5x5 stride 3
]


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("op", ["conv_bn_gelu", "conv_bn_add", "conv_bn"])
def test_fused_matches_reference(op, case, dtype, impl):
    skip_if_machine_lacks(op, impl, dtype)
    cin, cout, k, s, p, d, g, hw = case
    x, w, bn = make(cin, cout, k, g, dtype, hw=hw)
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    ho = (hw[0] + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (hw[1] + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(2, cout, ho, wo).to(dtype) if op == "conv_bn_add" else None
    with torch.no_grad():
        with K.use(**{op: impl}), K.trace() as t:
            got = call(op, x, w, bn, res, **kw)
        assert t.impls() == [impl]
        with K.use(**{op: "eager"}):
            want = call(op, x, w, bn, res, **kw)
    assert got.shape == want.shape == (2, cout, ho, wo)
    assert got.dtype == dtype
    if dtype == torch.float32:
        assert_close(got, want)
    else:
        # The reference runs BN on a bf16-rounded conv output; the fused impl never
        # rounds the pre-activation. Judge both against an fp32 ground truth.
        with K.use(**{op: "eager"}):
            ref = call(op, x.float(), w.float(), bn, None if res is None else res.float(), **kw)
        assert_error_within(got, want, ref, factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", FUSED)
def test_tanh_gelu_and_layouts(impl):
    x, w, bn = make(4, 8, 3)
    for xin in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        with torch.no_grad():
            with K.use(conv_bn_gelu=impl):
                got = call("conv_bn_gelu", xin, w, bn, padding=1, approximate="tanh")
            want = F.gelu(F.batch_norm(F.conv2d(x, w, None, 1, 1), bn["running_mean"], bn["running_var"],
                                       bn["bn_weight"], bn["bn_bias"], False), approximate="tanh")
        assert_close(got, want)


@pytest.mark.parametrize("impl", FUSED)
def test_autocast_bf16(impl):
    skip_if_machine_lacks("conv_bn_gelu", impl, torch.bfloat16)
    x, w, bn = make(8, 16, 3, hw=(12, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with K.use(conv_bn_gelu=impl):
            got = call("conv_bn_gelu", x, w, bn, padding=1)
        with K.use(conv_bn_gelu="eager"):
            want = call("conv_bn_gelu", x, w, bn, padding=1)
    assert got.dtype == want.dtype == torch.bfloat16
    ref = call("conv_bn_gelu", x, w, bn, padding=1)
    assert_error_within(got, want, ref, factor=2.0, floor=1e-2)


@pytest.mark.parametrize("impl", FUSED)
def test_precomputed_fold_is_used(impl):
    x, w, bn = make(4, 8, 3)
    fw, fb = K.fold_bn(w, None, bn["bn_weight"], bn["bn_bias"], bn["running_mean"], bn["running_var"], 1e-5)
    with torch.no_grad(), K.use(conv_bn_gelu=impl):
        a = call("conv_bn_gelu", x, w, bn, padding=1, folded=(fw, fb))
        b = call("conv_bn_gelu", x, w, bn, padding=1, folded=(fw, fb * 0 + 100.0))
    assert_close(a, F.gelu(F.conv2d(x, fw, fb, padding=1)))
    assert (b - a).abs().min() > 1.0  # the bias given in `folded` is the one applied


def test_fold_bn_matches_batch_norm():
    x, w, bn = make(4, 8, 3, dtype=torch.float64)
    bn = {k: v.double() for k, v in bn.items()}
    b = torch.randn(8, dtype=torch.float64)
    fw, fb = K.fold_bn(w, b, bn["bn_weight"], bn["bn_bias"], bn["running_mean"], bn["running_var"], 1e-3)
    want = F.batch_norm(F.conv2d(x, w, b), bn["running_mean"], bn["running_var"], bn["bn_weight"],
                        bn["bn_bias"], False, 0.0, 1e-3)
    assert fw.dtype == fb.dtype == torch.float32
    assert_close(F.conv2d(x.float(), fw, fb), want.float())


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("op", ["conv_bn_gelu", "conv_bn_add"])
def test_gradients_in_eval_mode(op, impl):
    x, w, bn = make(4, 6, 3, hw=(7, 8))
    inputs = [x, w, bn["bn_weight"]] + ([torch.randn(2, 6, 7, 8)] if op == "conv_bn_add" else [])

    def fn(x, w, g, r=None):
        return call(op, x, w, {**bn, "bn_weight": g}, r, padding=1)

    with K.trace() as t:
        grads = grads_by_impl(op, (impl, "eager"), fn, inputs)
    assert t.impls() == [impl, "eager"]
    for a, b in zip(grads[impl], grads["eager"]):
        assert_close(a, b)


def test_training_uses_batch_stats_and_updates_running_stats():
    x, w, bn = make(4, 8, 3, n=4)
    rm, rv = bn["running_mean"].clone(), bn["running_var"].clone()
    with K.trace() as t:
        out = call("conv_bn_gelu", x, w, bn, padding=1, training=True, momentum=0.5)
    assert t.records[0].impl == "eager"
    if "cpu" in K.available("conv_bn_gelu"):
        assert any(n == "cpu" and "training-mode BatchNorm" in r for n, r in t.records[0].skipped)
    y = F.conv2d(x, w, None, 1, 1)
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    want = F.gelu((y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
                  * bn["bn_weight"][:, None, None] + bn["bn_bias"][:, None, None])
    assert_close(out, want)
    assert_close(bn["running_mean"], 0.5 * rm + 0.5 * mean)
    assert_close(bn["running_var"], 0.5 * rv + 0.5 * y.var((0, 2, 3), unbiased=True))


@pytest.mark.parametrize("impl", FUSED)
def test_forcing_fused_in_training_raises(impl):
    x, w, bn = make(4, 8, 3)
    with K.use(conv_bn_gelu=impl), pytest.raises(K.KernelUnavailableError, match="training-mode BatchNorm"):
        call("conv_bn_gelu", x, w, bn, padding=1, training=True)


def test_empty_batch_and_nan():
    x, w, bn = make(4, 8, 3)
    with torch.no_grad(), K.trace() as t:
        out = call("conv_bn_gelu", x[:0], w, bn, padding=1)
    assert out.shape == (0, 8, 9, 11)
    assert t.records[0].impl == "eager"  # fused impls decline empty inputs, with a reason
    x[0, 0, 4, 4] = float("nan")
    with torch.no_grad():
        out = call("conv_bn_gelu", x, w, bn, padding=1)
    assert out[0, :, 3:6, 3:6].isnan().all() and not out[1].isnan().any()


BAD = [
    (lambda x, w, bn: call("conv_bn_gelu", x[0], w, bn), ValueError, r"conv_bn_gelu: x must be 4-D"),
    (lambda x, w, bn: call("conv_bn_gelu", x[:, :3], w, bn), ValueError, r"x has 3 channels but weight expects 4"),
    (lambda x, w, bn: call("conv_bn_gelu", x.int(), w, bn), TypeError, r"x must be a floating-point tensor"),
    (lambda x, w, bn: call("conv_bn_gelu", x.double(), w, bn), TypeError, r"dtypes must match"),
    (lambda x, w, bn: call("conv_bn_gelu", x, w, {**bn, "bn_bias": torch.zeros(7)}), ValueError,
     r"bn_bias must have shape \(8,\)"),
    (lambda x, w, bn: call("conv_bn_gelu", x, w.to("meta"), bn), ValueError, r"one device.*weight on meta"),
    (lambda x, w, bn: call("conv_bn_add", x, w, bn, torch.zeros(2, 8, 3, 3)), ValueError,
     r"conv_bn_add: residual must have shape \(2, 8, 7, 9\)"),
    (lambda x, w, bn: call("conv_bn_add", x, w, bn, None), ValueError, r"conv_bn_add: residual is required"),
    (lambda x, w, bn: call("conv_bn_gelu", x, w, bn, approximate="fast"), ValueError, r"activation 'fast'"),
    (lambda x, w, bn: call("conv_bn_gelu", x, w, bn, stride=0), ValueError, r"invalid stride"),
    (lambda x, w, bn: call("conv_bn_gelu", x[:, :, :1, :1], w, bn), ValueError, r"too small for kernel"),
    (lambda x, w, bn: call("conv_bn_gelu", x, w, {**bn, "running_mean": None}), ValueError, r"needs running_mean"),
]


@pytest.mark.parametrize("fn,exc,msg", BAD)
def test_bad_input(fn, exc, msg):
    x, w, bn = make(4, 8, 3)
    with pytest.raises(exc, match=msg):
        fn(x, w, bn)


@pytest.mark.skipif(K.available("conv_bn_gelu").get("cpu") != "ok", reason="oneDNN path unavailable")
def test_opcheck_conv2d_bias_act():
    x = torch.randn(2, 4, 7, 6)
    w = torch.randn(8, 4, 3, 3)
    b = torch.randn(8)
    r = torch.randn(2, 8, 4, 3)
    for args in [(x, w, b, None, [1, 1], [1, 1], [1, 1], 1, "gelu"),
                 (x, w, b, r, [2, 2], [1, 1], [1, 1], 1, "none"),
                 (x.requires_grad_(), w.requires_grad_(), b, None, [1, 1], [0, 0], [1, 1], 1, "gelu_tanh")]:
        torch.library.opcheck(torch.ops.ascan.conv2d_bias_act.default, args)


@pytest.mark.skipif(K.available("conv_bn_add").get("cpu") != "ok", reason="oneDNN path unavailable")
def test_bf16_conv_bn_add_prefers_eager_but_can_be_forced():
    skip_if_machine_lacks("conv_bn_add", "cpu", torch.bfloat16)
    x, w, bn = make(8, 8, 1, dtype=torch.bfloat16)
    r = torch.randn(2, 8, 9, 11).bfloat16()
    with torch.no_grad(), K.trace() as t:
        call("conv_bn_add", x, w, bn, r)
        with K.use(conv_bn_add="cpu"):
            call("conv_bn_add", x, w, bn, r)
        call("conv_bn_add", x.float(), w.float(), bn, r.float())
    assert t.impls() == ["eager", "cpu", "cpu"]
    assert dict(t.records[0].skipped)["cpu"].startswith("not preferred: bfloat16 conv + residual add")
