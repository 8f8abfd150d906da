"""The roofline half of ``python -m ascan_kernels.tools.report`` (the compile half is
tested by tests/tools/test_aot.py): byte/FLOP counts against hand-computed values, and the
meta-device trace of the real models."""
from __future__ import annotations

import pytest
import torch

from ascan_kernels.tools import report


def test_attention_costs_by_hand():
    # B1 H1 L4 D8 in bf16: q,k,v,o are 32 elements = 64 B each; scores 16 elements = 32 B
    args = (((1, 1, 4, 8), torch.bfloat16), ((1, 1, 4, 8), torch.bfloat16), ((1, 1, 4, 8), torch.bfloat16))
    fused, eager, desc = report.call_costs("attention", args)
    assert fused.bytes == 4 * 64 and fused.flops == 2 * (2 * 4 * 4 * 8)
    assert [c.bytes for c in eager] == [64 + 64 + 32, 64, 64, 32 + 64 + 64]
    assert desc == "B1 H1 Lq4 Lk4 D8"


def test_linear_gelu_costs_and_floor():
    args = (((128, 256), torch.float16), ((512, 256), torch.float16))
    fused, eager, _ = report.call_costs("linear_gelu", args)
    x, w, y = 128 * 256 * 2, 512 * 256 * 2, 128 * 512 * 2
    assert fused.bytes == x + w + y and fused.flops == 2 * 128 * 512 * 256
    assert [c.bytes for c in eager] == [x + w + y, 2 * y]
    assert fused.floor_s() == pytest.approx(max(fused.bytes / 3.0e12, fused.flops / 790e12))


def test_without_dtype_merges_rows():
    assert report._without_dtype("attn_fwd[bf16,d64,nomask]") == "attn_fwd[d64,nomask]"
    assert report._without_dtype("layer_norm_fwd[fp32]") == "layer_norm_fwd"
    assert report._without_dtype("plain") == "plain"


def test_ascan_t_trace_covers_the_fused_ops():
    calls = report.model_calls("ascan_t", batch=2, resolution=64)
    ops = {op for op, _, _ in calls}
    assert {"conv_bn_gelu", "conv_bn_add", "attention", "linear_gelu", "linear_add", "add_layer_norm"} <= ops
    # ascan_t (CC / CCC / CTTTT / TT) has 6 T blocks: one attention call each
    assert sum(c for op, _, c in calls if op == "attention") == 6


@pytest.mark.parametrize("name", ["ascan_unet_c2i_s", "ascan_unet_t2i_s"])
def test_unet_trace_and_table(name):
    calls = report.model_calls(name, batch=2, resolution=16)
    ops = {op for op, _, _ in calls}
    assert {"group_norm_silu", "attention", "linear_gelu"} <= ops
    table = report.roofline_table(calls)
    total = table.splitlines()[-1]
    assert total.startswith("| **all fused-op calls**")
    gain = float(total.rstrip(" |").split("|")[-1].strip().rstrip("x"))
    assert gain > 1.0  # fusion never moves more bytes than the unfused sequence


def test_main_roofline_only(capsys):
    assert report.main(["--no-compile", "--batch", "2", "--resolution", "64",
                        "--unet", "ascan_unet_c2i_s", "--unet-batch", "2", "--unet-latent", "8"]) == 0
    out = capsys.readouterr().out
    assert "ascan_t, batch 2" in out and "ascan_unet_c2i_s, batch 2, 8x8 latents" in out


def test_conv_bias_act_costs_by_hand():
    # 1x4x8x8 fp32, 3x3 conv, stride 1, pad 1, 6 out channels, a residual and SiLU
    args = (((1, 4, 8, 8), torch.float32), ((6, 4, 3, 3), torch.float32), ((6,), torch.float32),
            ((1, 6, 8, 8), torch.float32), (1, 1), (1, 1), (1, 1), 1, "silu")
    fused, eager, desc = report.call_costs("conv_bias_act", args)
    x, w, y = 4 * 64 * 4, 6 * 4 * 9 * 4, 6 * 64 * 4
    assert fused.flops == 2 * 64 * 6 * 4 * 9
    assert fused.bytes == x + w + y + y  # x, weight, output, residual (the bias is not counted)
    assert [c.bytes for c in eager] == [x + w + y, 3 * y, 2 * y]
    assert desc == "3x3/s1 1x4x8x8 -> 6x8x8 + res silu"
    # dilation 2, no padding, stride 2, no residual or activation: (8 - 2*2 - 1) // 2 + 1 = 2
    args = (((1, 4, 8, 8), torch.float32), ((6, 4, 3, 3), torch.float32), None, None,
            (2, 2), (0, 0), (2, 2), 1, "none")
    fused, eager, desc = report.call_costs("conv_bias_act", args)
    assert desc == "3x3/s2 1x4x8x8 -> 6x2x2" and len(eager) == 1


def test_floor_on_other_roofs():
    c = report.Cost(bytes=4e9, flops=1e12)
    assert c.floor_s(2e12, 1e15) == pytest.approx(2e-3)   # memory-bound there
    assert c.floor_s(4e12, 1e14) == pytest.approx(1e-2)   # compute-bound there
