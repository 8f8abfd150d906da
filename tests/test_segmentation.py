"""AsCAN segmenters: registry, shapes, stage features, fused/eager parity, training grads, bad input, size."""
import pytest
import torch
import torch.nn.functional as F

import ascan_kernels as K
from ascan import AsCAN, AsCANConfig, AsCANSegmenter, build_model, list_models
from ascan.complexity import count_params
from ascan_kernels.testing import assert_close, fused_eager_pair

TINY = AsCANConfig(name="tiny_test", dims=(32, 32, 64, 64), layouts=("C", "CC", "CT", "T"), stem_chs=(16, 32))


def pair(name_or_cfg, **kw):
    """(fused, eager) segmenters with identical weights and non-trivial BN statistics."""
    if isinstance(name_or_cfg, str):
        return fused_eager_pair(lambda fused, **k: build_model(name_or_cfg, fused=fused, **k), **kw)
    return fused_eager_pair(lambda fused, **k: AsCANSegmenter(name_or_cfg, fused=fused, **k), **kw)


def head_params(dims, ch, k):
    """UperNet head parameter count by hand: conv weights + BN (weight, bias) per ConvBN."""
    convbn = lambda cin, cout, ks: cin * cout * ks * ks + 2 * cout  # noqa: E731
    ppm = 4 * convbn(dims[-1], ch, 1) + convbn(dims[-1] + 4 * ch, ch, 3)
    fpn = sum(convbn(c, ch, 1) + convbn(ch, ch, 3) for c in dims[:-1])
    return ppm + fpn + convbn(4 * ch, ch, 3) + ch * k + k


def _t_seg_params() -> int:
    with torch.device("meta"):
        return count_params(build_model("ascan_t_seg", fused=False, num_classes=150))


T_SEG_PARAMS = _t_seg_params()


def test_registry_and_kwargs():
    assert {"ascan_t_seg", "ascan_s_seg"} <= set(list_models("*_seg"))
    m = build_model("ascan_t_seg", fused=False, num_classes=21, head_channels=64, drop_path_rate=0.1)
    assert isinstance(m, AsCANSegmenter) and m.decode_head.classifier.out_channels == 21
    assert m.decode_head.fuse.conv.out_channels == 64
    with pytest.raises(ValueError, match="num_classes and head_channels must be >= 1"):
        build_model("ascan_t_seg", num_classes=0)


@pytest.mark.parametrize("params", [T_SEG_PARAMS], ids=[f"ascan_t_seg={T_SEG_PARAMS / 1e6:.2f}M"])
def test_param_count(params):
    with torch.device("meta"):
        m = build_model("ascan_t_seg", fused=False, num_classes=150)
        cls = build_model("ascan_t", fused=False, num_classes=0)
    dims = m.cfg.dims
    # backbone = the classifier minus its final LayerNorm; head = the hand count
    assert count_params(m.backbone) == count_params(cls) - 2 * dims[-1]
    assert count_params(m.decode_head) == head_params(dims, 256, 150)
    assert params == count_params(m.backbone) + head_params(dims, 256, 150)
    assert 20e6 < params < 23e6


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_output_and_stage_shapes(fused, size):
    m = build_model("ascan_t_seg", fused=fused, num_classes=150).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = m.forward_features(x)
        out = m(x)
    assert out.shape == (2, 150, *size) and out.is_contiguous() and torch.isfinite(out).all()
    H, W = size
    want = [(2, c, H // s, W // s) for c, s in zip((64, 128, 256, 512), (4, 8, 16, 32))]
    assert [tuple(f.shape) for f in feats] == want
    assert [(i["num_chs"], i["reduction"]) for i in m.feature_info] == [(64, 4), (128, 8), (256, 16), (512, 32)]


def test_fused_matches_eager_in_eval_and_runs_fused_head_ops():
    fused, eager = pair("ascan_t_seg", num_classes=150)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), K.trace() as t:
        a = fused.eval()(x)
    with torch.no_grad():
        b = eager.eval()(x)
    assert a.shape == b.shape == (1, 150, 64, 96)
    assert_close(a, b, scale=20)  # backbone + head: ~30 layers deep, allow 20x the per-op fp32 tolerance
    # the head's laterals ride in conv_bn_add, its 3x3/1x1 convs in conv_bn_gelu
    assert {"conv_bn_add", "conv_bn_gelu", "attention"} <= {r.op for r in t.records}


def test_training_step_gradients_match():
    fused, eager = pair(TINY, num_classes=5, head_channels=32, drop_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 5, (2, 64, 64))
    y[:, :8] = 255  # an ignored band, as ADE20K labels have
    for m in (fused, eager):
        m.train()
        F.cross_entropy(m(x), y, ignore_index=255).backward()
    gf = dict(fused.named_parameters())
    for n, p in eager.named_parameters():  # every parameter, backbone and head, gets the same gradient
        assert p.grad is not None and gf[n].grad is not None, f"{n} got no gradient"
        assert_close(gf[n].grad, p.grad, scale=20, msg=n)
    sf = fused.state_dict()
    for n, v in eager.state_dict().items():
        if n.startswith("decode_head") and ("running" in n or "num_batches" in n):
            assert_close(sf[n].float(), v.float(), msg=n)


def test_bf16_autocast_close_to_fp32():
    fused, eager = pair(TINY, num_classes=5, head_channels=32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = eager.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fused.eval()(x)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3f}"


@pytest.mark.parametrize("fused", [True, False])
def test_bad_input(fused):
    m = AsCANSegmenter(TINY, head_channels=16, fused=fused).eval()
    with pytest.raises(ValueError, match=r"^tiny_test_seg: input height and width must be multiples of 32, "
                                         r"got \(100, 96\)$"):
        m(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match=r"tiny_test_seg: expected input \(B, 3, H, W\), got \(3, 64, 64\)"):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\), got \(1, 1, 64, 64\)"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating-point input"):
        m(torch.randint(0, 255, (1, 3, 64, 64)))
    with pytest.raises(ValueError, match="training needs batch >= 2"):
        m.train()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"ascan_t_seg: input height and width must be multiples of 32"):
        build_model("ascan_t_seg", fused=fused)(torch.randn(1, 3, 64, 80))


def test_load_backbone_from_classifier_and_state_dicts_interchange():
    cls = AsCAN(TINY, num_classes=7)
    seg = AsCANSegmenter(TINY, head_channels=16, fused=True).eval()
    seg.load_backbone(cls.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = cls.eval().forward_features(x, return_stages=True)
        got = seg.forward_features(x)
    for a, b in zip(got, want):
        assert_close(a, b)
    eager = AsCANSegmenter(TINY, head_channels=16, fused=False)
    assert list(eager.state_dict()) == list(seg.state_dict())
    eager.load_state_dict(seg.state_dict())  # strict
