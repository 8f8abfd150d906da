"""AsCAN classifiers: registry, shapes, fused/eager parity, training grads, BN-fold cache, bad input."""
import copy

import pytest
import torch

import ascan_kernels as K
from ascan import CONFIGS, AsCAN, AsCANConfig, build_model, list_models
from ascan.layers import ConvBN
from ascan_kernels.testing import assert_close, fused_eager_pair, machine_lacks, native_impls

TINY = AsCANConfig(name="tiny_test", dims=(32, 32, 64, 64), layouts=("C", "CC", "CT", "T"), stem_chs=(16, 32))


def pair(name_or_cfg, **kw):
    """(fused, eager) models with identical weights and non-trivial BN statistics."""
    if isinstance(name_or_cfg, str):
        return fused_eager_pair(lambda fused, **k: build_model(name_or_cfg, fused=fused, **k), **kw)
    return fused_eager_pair(lambda fused, **k: AsCAN(name_or_cfg, fused=fused, **k), **kw)


def test_list_and_unknown_model():
    assert {"ascan_t", "ascan_s", "ascan_b", "ascan_l"} <= set(list_models())
    assert list_models("ascan_t") == ["ascan_t"]
    assert "ascan_t_seg" in list_models("ascan_t*")
    with pytest.raises(ValueError, match=r"unknown model 'ascan_xl'; available: .*ascan_t"):
        build_model("ascan_xl")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_variant_is_asymmetric(name):
    cfg = CONFIGS[name]
    assert cfg.num_c[0] > 0 and cfg.num_t[0] == 0, "early stage: convolution only"
    assert cfg.num_t[-1] > 0 and cfg.num_c[-1] == 0, "last stage: transformer only"
    assert cfg.num_c[0] + cfg.num_c[1] > cfg.num_t[0] + cfg.num_t[1]
    assert cfg.num_t[2] + cfg.num_t[3] > cfg.num_c[2] + cfg.num_c[3]


def test_config_validation():
    with pytest.raises(ValueError, match="C blocks must precede T blocks"):
        AsCANConfig(name="bad", dims=(32, 32, 64, 64), layouts=("C", "TC", "T", "T"), stem_chs=(16, 32))
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        AsCANConfig(name="bad", dims=(32, 48, 64, 64), layouts=("C", "C", "T", "T"), stem_chs=(16, 32))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_matches_eager_every_variant(name):
    fused, eager = pair(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fused.eval()(x), eager.eval()(x)
    assert a.shape == (2, 1000)
    assert_close(a, b, scale=10)  # a deep stack: allow 10x the per-op fp32 tolerance


def test_ascan_t_at_224_runs_fused_impls():
    fused, eager = pair("ascan_t", num_classes=10)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), K.trace() as t:
        a = fused.eval()(x)
    b = eager.eval()(x)
    assert_close(a, b, scale=10)
    ran = {(r.op, r.impl) for r in t.records}
    for op in K.list_ops():
        best = (native_impls(op) + ["eager"])[0]
        if op in {r.op for r in t.records}:
            assert (op, best) in ran, f"{op} did not run its best available impl {best}"
    assert {"conv_bn_gelu", "conv_bn_add", "conv_bn", "attention", "linear_gelu", "linear_add",
            "add_layer_norm"} <= {r.op for r in t.records}


def test_features_head_and_options():
    m = AsCAN(TINY, num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        feats = m.forward_features(x)
        stages = m.forward_features(x, return_stages=True)
        pre = m.forward_head(feats, pre_logits=True)
        logits = m(x)
    assert feats.shape == (2, 64, 2, 3)
    assert [s.shape[1:] for s in stages] == [(32, 16, 24), (32, 8, 12), (64, 4, 6), (64, 2, 3)]
    assert pre.shape == (2, 64) and logits.shape == (2, 7)
    assert AsCAN(TINY, num_classes=0).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 64)


@pytest.mark.parametrize("fused", [True, False])
def test_bad_model_input(fused):
    m = AsCAN(TINY, fused=fused).eval()
    with pytest.raises(ValueError, match=r"tiny_test: expected input \(B, 3, H, W\), got \(2, 1, 64, 64\)"):
        m(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expected input"):
        m(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"smaller than the total stride 32"):
        m(torch.randn(1, 3, 16, 64))
    with pytest.raises(TypeError, match=r"floating-point input"):
        m(torch.randint(0, 255, (1, 3, 64, 64)))


def test_state_dicts_interchange():
    f = build_model("ascan_t", fused=True)
    e = build_model("ascan_t", fused=False)
    assert list(f.state_dict()) == list(e.state_dict())
    e.load_state_dict(f.state_dict())  # strict


def test_training_step_gradients_match():
    fused, eager = pair(TINY, num_classes=5)
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([0, 1, 2, 3])
    for m in (fused, eager):
        m.train()
        torch.nn.functional.cross_entropy(m(x), y).backward()
    gf = dict(fused.named_parameters())
    for n, p in eager.named_parameters():
        assert_close(gf[n].grad, p.grad, scale=10, msg=n)
    # BN running stats and counters were updated identically.
    sf = fused.state_dict()
    for n, v in eager.state_dict().items():
        if "running" in n or "num_batches" in n:
            assert_close(sf[n].float(), v.float(), msg=n)


def test_eval_gradients_use_fused_impls_and_match():
    fused, eager = pair(TINY, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with K.trace() as t:
        fused.eval()(x).sum().backward()
    eager.eval()(x).sum().backward()
    assert ("cpu" in t.impls("conv_bn_gelu") or K.available("conv_bn_gelu")["cpu"] != "ok"
            or machine_lacks("conv_bn_gelu", "cpu", torch.bfloat16))
    gf = dict(fused.named_parameters())
    for n, p in eager.named_parameters():
        assert_close(gf[n].grad, p.grad, scale=10, msg=n)


def test_drop_path_training_runs():
    m = AsCAN(TINY, drop_path_rate=0.3, fused=True).train()
    out = m(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_bn_fold_cache_invalidation():
    f = ConvBN(4, 8, 3, fused=True).eval()
    e = ConvBN(4, 8, 3, fused=False).eval()
    e.load_state_dict(f.state_dict())
    x = torch.randn(2, 4, 9, 9)

    def check():
        with torch.no_grad():
            assert_close(f(x), e(x))

    check()
    w_folded = f.folded()[0]
    check()
    assert f.folded()[0] is w_folded, "unchanged params must reuse the cached fold"
    for mutate in (
        lambda m: m.bn.running_mean.add_(0.5),           # running stats change
        lambda m: m.bn.running_var.mul_(2.0),
        lambda m: m.bn.weight.mul_(-1.0),                 # optimizer-style in-place updates
        lambda m: m.conv.weight.add_(0.1),
    ):
        with torch.no_grad():
            mutate(f)
            mutate(e)
        check()
    # load_state_dict copies in place into the same storage
    other = ConvBN(4, 8, 3, fused=False)
    with torch.no_grad():
        other.bn.running_mean.normal_()
    f.load_state_dict(other.state_dict())
    e.load_state_dict(other.state_dict())
    check()
    # a training step changes running stats; eval afterwards must see them
    f.train()(x)
    e.train()(x)
    f.eval(), e.eval()
    check()
    # writes through .data bypass version counters: invalidate_folds is the documented fix
    from ascan.layers import invalidate_folds
    with torch.no_grad():
        f.bn.bias.data.add_(1.0)
        e.bn.bias.data.add_(1.0)
    invalidate_folds(f)
    check()
    # moving the module (new tensors) also refolds
    f.to(torch.float64), e.to(torch.float64)
    x = x.double()
    check()


def test_bf16_autocast_close_to_fp32():
    fused, eager = pair(TINY)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = eager.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), K.trace() as t:
            got = fused.eval()(x)
    assert got.dtype == torch.bfloat16
    assert ("cpu" in t.impls("conv_bn_gelu") or K.available("conv_bn_gelu")["cpu"] != "ok"
            or machine_lacks("conv_bn_gelu", "cpu", torch.bfloat16))
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 0.05, f"bf16 relative error {rel:.3f}"


def test_torch_compile_fused_fullgraph():
    fused, eager = pair(TINY)
    fused.eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(fused, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.no_grad():
        assert_close(compiled(x), eager.eval()(x), scale=10)


def test_deepcopy_and_pickle_of_fused_model():
    m = AsCAN(TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        b = copy.deepcopy(m)(x)
    assert_close(a, b)
