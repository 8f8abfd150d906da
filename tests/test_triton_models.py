"""A whole AsCAN forward with every op forced onto its Triton kernel matches eager.

Without a GPU this runs the kernels under Triton's CPU interpreter (tests/conftest.py
switches it on), so the input is tiny; with a GPU it runs the real kernels.
"""
import pytest
import torch

import ascan_kernels as K
from ascan_kernels.testing import assert_close

from test_models import TINY, pair

TRITON_OPS = ("conv_bn_gelu", "conv_bn_add", "conv_bn", "attention", "layer_norm", "add_layer_norm",
              "linear_gelu", "linear_add")
pytestmark = pytest.mark.skipif(
    any(K.available(op).get("triton") != "ok" for op in TRITON_OPS),
    reason="triton impls unavailable: " + "; ".join(
        f"{op}: {K.available(op).get('triton')}" for op in TRITON_OPS if K.available(op).get("triton") != "ok"))


def _device():
    return "cpu" if K.available("attention")["triton"] == "ok" and not torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_model_on_triton_matches_eager(dtype):
    fused, eager = pair(TINY, num_classes=10)
    dev = _device()
    fused, eager = fused.to(dev, dtype).eval(), eager.to(dev, dtype).eval()
    x = torch.randn(2, 3, 64, 64, device=dev, dtype=dtype)
    with torch.no_grad():
        want = eager(x)
        with K.use(**{op: "triton" for op in TRITON_OPS}), K.trace() as t:
            got = fused(x)
    ran = {r.op for r in t.records}
    assert set(t.impls()) == {"triton"}, t.table()
    assert {"conv_bn_gelu", "conv_bn_add", "attention", "linear_gelu", "linear_add"} <= ran
    # a dozen fused layers deep: the per-op tolerance, widened for accumulated rounding
    assert_close(got, want, dtype=dtype, scale=10 if dtype == torch.float32 else 3)


def test_use_conv_and_attention_only():
    """The issue's example: force the conv and attention kernels, let the registry pick the rest."""
    fused, eager = pair(TINY, num_classes=10)
    dev = _device()
    fused, eager = fused.to(dev).eval(), eager.to(dev).eval()
    x = torch.randn(1, 3, 64, 64, device=dev)
    with torch.no_grad():
        want = eager(x)
        with K.use(conv_bn_gelu="triton", attention="triton"), K.trace() as t:
            got = fused(x)
    assert set(t.impls("conv_bn_gelu")) == {"triton"} and set(t.impls("attention")) == {"triton"}
    assert_close(got, want, scale=10)
