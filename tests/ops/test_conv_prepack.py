"""The oneDNN conv weight packed once (ops/conv_bias_act/cpu.py ``packed_weight``): the same
values as float64 math, a fresh pack after an in-place weight update or a new input size, and
the plain weight where autograd or torch.compile sees the call."""
import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan_kernels.ops.conv_bias_act import cpu as C

pytestmark = pytest.mark.skipif(K.available()["conv_bias_act"]["cpu"] != "ok",
                                reason="the oneDNN cpu impl cannot run here")


def _f64(x, w, b, r, stride, padding, groups, act):
    y = F.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, groups)
    y = y + r.double() if r is not None else y
    return {"gelu": F.gelu, "silu": F.silu, "none": lambda t: t}[act](y)


@pytest.mark.parametrize("cin,cout,k,stride,groups,act,res", [
    (8, 16, 3, 1, 1, "gelu", True), (8, 16, 1, 1, 1, "none", True), (6, 12, 3, 2, 1, "silu", False),
    (16, 16, 3, 1, 16, "gelu", False), (3, 32, 3, 2, 1, "gelu", False)])
def test_packed_conv_matches_float64(cin, cout, k, stride, groups, act, res):
    torch.manual_seed(0)
    x = torch.randn(2, cin, 13, 11)
    w, b = torch.randn(cout, cin // groups, k, k) * 0.3, torch.randn(cout)
    ho, wo = (13 + 2 * (k // 2) - k) // stride + 1, (11 + 2 * (k // 2) - k) // stride + 1
    r = torch.randn(2, cout, ho, wo) if res else None
    C._PACKED.clear()
    with torch.no_grad(), K.use(conv_bias_act="cpu"):
        for _ in range(2):  # packed on the first call, reused on the second
            y = K.conv_bias_act(x, w, b, r, stride=stride, padding=k // 2, groups=groups, act=act)
            torch.testing.assert_close(y.double(), _f64(x, w, b, r, stride, k // 2, groups, act), rtol=1e-4, atol=1e-4)
    assert len(C._PACKED) == 1


def test_in_place_update_and_new_input_size_repack():
    torch.manual_seed(0)
    w, b = torch.randn(16, 8, 3, 3), torch.randn(16)
    C._PACKED.clear()
    with torch.no_grad(), K.use(conv_bias_act="cpu"):
        for size in (9, 9, 17):
            x = torch.randn(1, 8, size, size)
            torch.testing.assert_close(K.conv_bias_act(x, w, b, padding=1).double(),
                                       _f64(x, w, b, None, 1, 1, 1, "none"), rtol=1e-4, atol=1e-4)
        assert len(C._PACKED) == 2  # one per input size
        w.mul_(-2.0)  # an optimizer step, a new state dict: the pack must not be reused
        x = torch.randn(1, 8, 9, 9)
        torch.testing.assert_close(K.conv_bias_act(x, w, b, padding=1).double(),
                                   _f64(x, w, b, None, 1, 1, 1, "none"), rtol=1e-4, atol=1e-4)


def test_grad_calls_use_the_plain_weight():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    x = torch.randn(1, 4, 7, 7, requires_grad=True)
    C._PACKED.clear()
    with K.use(conv_bias_act="cpu"):
        y = K.conv_bias_act(x, w, None, padding=1, act="gelu")
    y.sum().backward()
    assert len(C._PACKED) == 0
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    F.gelu(F.conv2d(xd, wd, None, 1, 1)).sum().backward()
    torch.testing.assert_close(w.grad.double(), wd.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-4)
