"""The AsCAN UNets (c2i, t2i) and the DDIM sampler: shapes, conditioning, parity, errors."""
import dataclasses

import pytest
import torch

import ascan_kernels as K
from ascan import build_model, generate, list_models
from ascan.complexity import count_params
from ascan.models.unet import UNET_CONFIGS, AsCANUNet, UNetConfig, timestep_embedding
from ascan_kernels.testing import assert_close

# Small enough for CI, with every block kind at every level kind (C, mixed, T).
TINY = UNetConfig("tiny_unet", channels=(32, 64, 64), layouts=("C", "CT", "T"), mid_layout="T",
                  head_dim=32, groups=8)
TINY_T2I = dataclasses.replace(TINY, name="tiny_unet_t2i", context_dim=24)


def _randomise(model):
    """Zero-initialised output layers make a fresh UNet trivial; give every param a value."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def pair(cfg, **kw):
    torch.manual_seed(0)
    fused = _randomise(AsCANUNet(cfg, fused=True, **kw))
    eager = AsCANUNet(cfg, fused=False, **kw)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def c2i_inputs(B=2, hw=16):
    return torch.randn(B, 4, hw, hw), torch.tensor([3, 999])[:B], torch.tensor([1, 10])[:B]


def t2i_inputs(B=2, hw=16, L=7):
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False
    return torch.randn(B, 4, hw, hw), torch.tensor([3, 999])[:B], torch.randn(B, L, 24), mask


def test_registered_variants_and_params():
    names = list_models("ascan_unet_*")
    assert {"ascan_unet_c2i_s", "ascan_unet_c2i_b", "ascan_unet_c2i_xl",
            "ascan_unet_t2i_s", "ascan_unet_t2i_xl"} <= set(names)
    with torch.device("meta"):
        xl = build_model("ascan_unet_t2i_xl")
        s = build_model("ascan_unet_c2i_s", num_classes=1000)
    # SDXL-class text-to-image (SDXL's UNet: ~2.6B) and a CI-sized class-conditional model
    assert 2.0e9 < count_params(xl) < 3.0e9
    assert 1e7 < count_params(s) < 5e7
    assert xl.cfg.context_dim == 2048


def test_asymmetric_and_mirrored_layouts():
    for cfg in UNET_CONFIGS.values():
        c_share = [lay.count("C") / len(lay) for lay in cfg.layouts]
        assert c_share == sorted(c_share, reverse=True), cfg.name  # more C high-res, more T low-res
        assert c_share[0] == 1.0 and c_share[-1] < 0.5, cfg.name
    m = AsCANUNet(TINY, num_classes=5)
    assert [lvl.layout for lvl in m.up] == [lay[::-1] for lay in TINY.layouts]


def test_c2i_shapes_and_null_class():
    m = _randomise(build_model("ascan_unet_c2i_s", num_classes=10)).eval()
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([0, 999]), torch.tensor([2, m.null_class])
    with torch.no_grad():
        out = m(x, t, y)
        out_other = m(x, t, torch.tensor([5, m.null_class]))
    assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()
    assert m.null_class == 10
    assert not torch.allclose(out[0], out_other[0])     # the class changes the prediction
    assert_close(out[1], out_other[1])                  # the null-class sample is untouched by it


def test_t2i_masked_context_tokens_are_ignored():
    m = _randomise(AsCANUNet(TINY_T2I)).eval()
    x, t, ctx, mask = t2i_inputs()
    ctx2 = ctx.clone()
    ctx2[1, 4:] += 5.0                                   # change only masked-out tokens
    with torch.no_grad():
        a = m(x, t, ctx, mask)
        b = m(x, t, ctx2, mask)
        c = m(x, t, ctx2)                                # without the mask they count
    assert a.shape == (2, 4, 16, 16)
    assert_close(a, b)
    assert not torch.allclose(a[1], c[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_fused_matches_eager_in_eval(kind):
    if kind == "c2i":
        fused, eager = pair(TINY, num_classes=10)
        args = c2i_inputs()
    else:
        fused, eager = pair(TINY_T2I)
        args = t2i_inputs()
    fused.eval(), eager.eval()
    with torch.no_grad(), K.trace() as tr:
        got = fused(*args)
    with torch.no_grad():
        want = eager(*args)
    assert {"group_norm_silu", "attention", "linear_gelu", "linear_add", "layer_norm"} <= {r.op for r in tr.records}
    assert_close(got, want, scale=10)


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_training_step_gradients_match(kind):
    if kind == "c2i":
        fused, eager = pair(TINY, num_classes=10)
        args = c2i_inputs()
    else:
        fused, eager = pair(TINY_T2I)
        args = t2i_inputs()
    grads = []
    for m in (fused, eager):
        m.train()
        m.zero_grad()
        out = m(*args)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(fused.parameters()))
    for n in grads[0]:
        assert_close(grads[0][n], grads[1][n], scale=20, msg=n)


def test_sampler_deterministic_and_guided():
    m = _randomise(AsCANUNet(TINY, num_classes=10)).eval()
    y = torch.tensor([1, 2])
    a = generate(m, y=y, latent_size=16, steps=4, guidance_scale=3.0, seed=7)
    b = generate(m, y=y, latent_size=16, steps=4, guidance_scale=3.0, seed=7)
    c = generate(m, y=y, latent_size=16, steps=4, guidance_scale=3.0, seed=8)
    d = generate(m, y=y, latent_size=16, steps=4, guidance_scale=1.0, seed=7)
    e1 = generate(m, y=y, latent_size=(16, 8), steps=3, guidance_scale=2.0, eta=1.0, seed=3)
    e2 = generate(m, y=y, latent_size=(16, 8), steps=3, guidance_scale=2.0, eta=1.0, seed=3)
    assert a.shape == (2, 4, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b) and torch.equal(e1, e2)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
    assert e1.shape == (2, 4, 16, 8)


def test_sampler_t2i_with_mask_and_null_context():
    m = _randomise(AsCANUNet(TINY_T2I)).eval()
    _, _, ctx, mask = t2i_inputs()
    a = generate(m, context=ctx, context_mask=mask, latent_size=8, steps=3, guidance_scale=5.0, seed=1)
    b = generate(m, context=ctx, context_mask=mask, null_context=torch.zeros(1, 2, 24), latent_size=8, steps=3,
                 guidance_scale=5.0, seed=1)
    assert a.shape == b.shape == (2, 4, 8, 8) and torch.isfinite(a).all() and torch.isfinite(b).all()
    with pytest.raises(ValueError, match="needs context"):
        generate(m, latent_size=8, steps=2)
    with pytest.raises(ValueError, match="steps must be in"):
        generate(m, context=ctx, steps=0)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 10]), 8)
    assert e.shape == (2, 8)
    assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_bad_inputs():
    m = AsCANUNet(TINY, num_classes=10).eval()
    x, t, y = c2i_inputs()
    with pytest.raises(ValueError, match=r"tiny_unet: expected latents \(B, 4, H, W\), got \(2, 3, 16, 16\)"):
        m(torch.randn(2, 3, 16, 16), t, y)
    with pytest.raises(ValueError, match=r"multiples of 4, got \(18, 16\)"):
        m(torch.randn(2, 4, 18, 16), t, y)
    with pytest.raises(ValueError, match=r"expected timesteps t of shape \(2,\), got \(3,\)"):
        m(x, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\]"):
        m(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="integer dtype"):
        m(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="floating point"):
        m(x.long(), t, y)
    mt = AsCANUNet(TINY_T2I).eval()
    _, _, ctx, mask = t2i_inputs()
    with pytest.raises(ValueError, match=r"expected context \(B=2, L, context_dim=24\), got \(2, 7, 32\)"):
        mt(x, t, torch.randn(2, 7, 32))
    with pytest.raises(ValueError, match="context_mask must be bool"):
        mt(x, t, ctx, mask.float())
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        AsCANUNet(TINY)
    with pytest.raises(ValueError, match="multiple of groups"):
        UNetConfig("bad", channels=(30, 64, 64), layouts=("C", "C", "T"), mid_layout="T")
