"""The AsCAN classifiers in timm: registration, and timm's model contract checked the way
timm's own generic model tests check it (pytorch-image-models tests/test_models.py:
default cfgs, reset_classifier, features_only, forward_intermediates, grad checkpointing),
with timm's machinery (create_model, FeatureInfo, resolve_data_config, create_transform,
timm.optim's parameter groups) as the reference rather than our code.

Small inputs (32-72 px) and ascan_t only (the other variants are built on the meta device);
the gradient-checkpointing equality runs on a tiny config of the same class, since the
backward pass dominates the time.
"""
import copy
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import ascan
from ascan import CONFIGS, AsCAN, AsCANConfig, build_model
from ascan.layers import CBlock, TBlock
from ascan_kernels.testing import assert_close, fused_eager_pair

timm = pytest.importorskip("timm")
timm_data = pytest.importorskip("timm.data")
timm_optim = pytest.importorskip("timm.optim")
FeatureInfo, group_parameters = timm.models.FeatureInfo, timm.models.group_parameters

VARIANTS = sorted(CONFIGS)
# C and T blocks, a stage that downsamples with a conv (the last), and one that switches C -> T.
TINY = AsCANConfig(name="tiny_test", dims=(32, 32, 64, 64), layouts=("C", "CC", "CT", "T"), stem_chs=(16, 32))
NUM_CLASSES = 10
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    """ascan_t from timm, 10 classes, eval. Tests that change it work on a deepcopy."""
    return timm.create_model("ascan_t", num_classes=NUM_CLASSES).eval()


def _image(h=32, w=64, b=1):
    return torch.randn(b, 3, h, w)


# --------------------------------------------------------------------------- registry
def test_every_classifier_is_registered_and_none_claims_weights():
    assert ascan.integrations.timm.status() == "registered with timm"
    assert timm.list_models("ascan*") == VARIANTS
    assert timm.list_models("ascan*", pretrained=True) == []
    for name in VARIANTS:
        assert timm.is_model(name)
        cfg = timm.models.get_pretrained_cfg(name)
        assert not cfg.has_weights
        assert cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224) and cfg.pool_size == (7, 7)
        assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
        assert (cfg.interpolation, cfg.crop_pct, cfg.classifier, cfg.first_conv) == (
            "bilinear", 0.875, "head", "stem.0.conv")


@pytest.mark.parametrize("name", VARIANTS)
def test_cfg_names_real_modules_every_variant(name):
    """timm's test_model_default_cfgs, structurally: the classifier and first conv the cfg
    names exist; widths and feature_info agree with the variant's config."""
    m = timm.create_model(name, device="meta")
    sd = m.state_dict()
    cfg = m.pretrained_cfg
    assert cfg["classifier"] + ".weight" in sd and cfg["first_conv"] + ".weight" in sd
    assert m.default_cfg is m.pretrained_cfg
    dims = CONFIGS[name].dims
    assert m.num_classes == 1000 and m.num_features == m.head_hidden_size == dims[-1]
    info = FeatureInfo(m.feature_info, len(m.feature_info))
    assert info.channels() == list(dims) and info.reduction() == [4, 8, 16, 32]
    for mod in info.module_name():
        m.get_submodule(mod)
    # the cfg the model carries without timm is the one timm registered
    with torch.device("meta"):
        native = build_model(name).pretrained_cfg
    assert native.items() <= cfg.items()


def test_pretrained_true_is_a_clear_error():
    for name in VARIANTS:
        with pytest.raises(RuntimeError, match=rf"{name}: no pretrained weights exist for AsCAN"):
            timm.create_model(name, pretrained=True)
    with pytest.raises(RuntimeError, match="no pretrained weights exist"):
        timm.create_model("ascan_t", pretrained=True, features_only=True)


def test_bad_arguments_name_the_model():
    with pytest.raises(TypeError, match=r"'ascan_t'.*unknown argument 'num_class' \(did you mean 'num_classes'\?\)"):
        timm.create_model("ascan_t", num_class=10)
    with pytest.raises(TypeError, match=r"'ascan_t'.*unknown argument 'drop_block_rate'"):
        timm.create_model("ascan_t", drop_block_rate=0.1)
    with pytest.raises(ValueError, match=r"ascan_t: global_pool must be 'avg' or ''"):
        timm.create_model("ascan_t", global_pool="max", device="meta")
    with pytest.raises(ValueError, match=r"ascan_t: global_pool='' \(no pooling\) needs num_classes=0"):
        timm.create_model("ascan_t", global_pool="", num_classes=5, device="meta")


def test_device_and_dtype_arguments():
    m = timm.create_model("ascan_t", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in m.parameters()} == {("meta", torch.bfloat16)}


# --------------------------------------------------------------------------- model contract
def test_default_cfg_contract(model):
    """timm's test_model_default_cfgs at 32x64 (pool size (1, 2) instead of the cfg's 7x7 at 224)."""
    m = copy.deepcopy(model)
    x = _image()
    with torch.no_grad():
        feats = m.forward_features(x)
        pre = m.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, m.num_features, 1, 2)
        assert pre.shape == (1, m.head_hidden_size)
        assert m(x).shape == (1, NUM_CLASSES)
        assert isinstance(m.get_classifier(), torch.nn.Linear) and m.get_classifier().out_features == NUM_CLASSES

        m.reset_classifier(5)
        assert m.num_classes == 5 and m.get_classifier().out_features == 5 and m(x).shape == (1, 5)
        m.reset_classifier(0)
        assert m.num_classes == 0
        torch.testing.assert_close(m(x), pre)  # no head: the pooled, normed features

        m.reset_classifier(0, "")
        assert m(x).shape == (1, m.num_features, 1, 2)
        with pytest.raises(ValueError, match="ascan_t: global_pool='' .* needs num_classes=0"):
            m.reset_classifier(3)
        m.reset_classifier(3, "avg")
        assert m(x).shape == (1, 3)


def test_unpooled_model_from_create_model():
    m = timm.create_model("ascan_t", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert m(_image(32, 64)).shape == (1, 512, 1, 2)


@pytest.mark.parametrize("size", [(32, 64), (40, 72)])
def test_forward_intermediates_follow_feature_info(model, size):
    """timm's test_model_forward_intermediates: one map per feature_info entry, its channels,
    and spatial size at most ceil(size / reduction) + 1; the final output is forward_features."""
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = _image(*size)
    with torch.no_grad():
        out, inter = model.forward_intermediates(x)
        assert len(inter) == len(info.channels()) == 4
        for c, r, o in zip(info.channels(), info.reduction(), inter):
            assert o.shape[:2] == (1, c)
            assert o.shape[2] <= math.ceil(size[0] / r) + 1 and o.shape[3] <= math.ceil(size[1] / r) + 1
        torch.testing.assert_close(out, model.forward_features(x))


def test_forward_intermediates_options(model):
    x = _image()
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        early, upto1 = model.forward_intermediates(x, indices=[1], stop_early=True)
        nhwc = model.forward_intermediates(x, indices=[3], output_fmt="NHWC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    for a, b in zip(last2, every[2:]):
        torch.testing.assert_close(a, b)
    assert [p.shape[1] for p in picked] == [64, 512]  # stage order
    torch.testing.assert_close(early, every[1])
    torch.testing.assert_close(upto1[0], every[1])
    torch.testing.assert_close(nhwc[0], every[3].permute(0, 2, 3, 1))
    torch.testing.assert_close(normed[0], every[3])  # AsCAN has no pre-pool norm: norm changes nothing
    with pytest.raises(ValueError, match="ascan_t: stage index 4 is out of range"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="ascan_t: indices=5"):
        model.forward_intermediates(x, indices=5)
    with pytest.raises(ValueError, match="ascan_t: output_fmt must be"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_features_only_default_levels():
    """timm's test_model_forward_features: outputs match feature_info's channels/reductions."""
    fm = timm.create_model("ascan_t", features_only=True).eval()
    assert fm.feature_info.channels() == [64, 128, 256, 512]
    assert fm.feature_info.reduction() == [4, 8, 16, 32]
    size = (40, 64)
    with torch.no_grad():
        outs = fm(_image(*size))
    assert len(outs) == 4
    for c, r, o in zip(fm.feature_info.channels(), fm.feature_info.reduction(), outs):
        assert o.shape == (1, c, math.ceil(size[0] / r), math.ceil(size[1] / r))
    assert "classifier" not in fm.pretrained_cfg  # timm strips the head entries for backbones


def test_features_only_prunes_and_matches_full_model(model):
    fm = timm.create_model("ascan_t", features_only=True, out_indices=(0, 1)).eval()
    assert fm.feature_info.channels() == [64, 128]
    names = [n for n, _ in fm.named_parameters()]
    assert not any(n.startswith(("model.stages.2", "model.stages.3", "model.norm", "model.head")) for n in names)
    missing, unexpected = fm.model.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected
    x = _image()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        for a, b in zip(fm(x), want):
            torch.testing.assert_close(a, b)
    # timm's hook-based extractor finds the modules feature_info names
    hm = timm.create_model("ascan_t", features_only=True, feature_cls="hook", out_indices=(3,), device="meta")
    assert hm.feature_info.channels() == [512]


def test_prune_intermediate_layers(model):
    m = copy.deepcopy(model)
    assert m.prune_intermediate_layers([-2]) == [2]
    assert len(m.stages) == 3 and m.num_features == m.head_hidden_size == 256
    assert isinstance(m.get_classifier(), torch.nn.Identity) and m.num_classes == 0
    with torch.no_grad():
        assert m(_image()).shape == (1, 256)
        assert m.forward_intermediates(_image(), indices=[2], intermediates_only=True)[0].shape == (1, 256, 2, 4)


def test_fused_and_eager_from_timm_match():
    fused, eager = fused_eager_pair(lambda fused, **k: timm.create_model("ascan_t", fused=fused, **k),
                                    num_classes=NUM_CLASSES)
    assert fused.fused and not eager.fused
    x = _image(b=2)
    with torch.no_grad():
        assert_close(fused.eval()(x), eager.eval()(x), scale=10)
        for a, b in zip(fused.forward_intermediates(x, intermediates_only=True),
                        eager.forward_intermediates(x, intermediates_only=True)):
            assert_close(a, b, scale=10)


def test_grad_checkpointing_keeps_outputs(model):
    """timm's test_model_forward check: set_grad_checkpointing() (with autograd on, so it is
    used) leaves the output as it was."""
    m = copy.deepcopy(model)
    x = _image()
    want = m(x)
    m.set_grad_checkpointing()
    torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_grad_checkpointing_recomputes_blocks_and_changes_nothing(fused):
    """Training step: same loss, gradients and BatchNorm statistics; every block runs twice
    (forward and recompute) with checkpointing, once without."""
    ref = AsCAN(TINY, num_classes=NUM_CLASSES, fused=fused, drop_path_rate=0.1).train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing()
    x = _image(32, 32, b=2)
    runs, losses = {}, {}
    for name, m in (("ref", ref), ("ckpt", ckpt)):
        calls = []
        # a pre-hook: the recompute may stop once it has what backward needs, before the block returns
        hooks = [blk.register_forward_pre_hook(lambda *_: calls.append(1))
                 for blk in m.modules() if isinstance(blk, (CBlock, TBlock))]
        torch.manual_seed(1)  # the same drop-path draws for both
        losses[name] = m(x).logsumexp(-1).sum()
        losses[name].backward()
        for h in hooks:
            h.remove()
        runs[name] = len(calls)
    n_blocks = sum(len(layout) for layout in TINY.layouts)
    assert runs == {"ref": n_blocks, "ckpt": 2 * n_blocks}
    assert all(p.grad is not None for p in ckpt.parameters())  # timm's test_model_backward
    torch.testing.assert_close(losses["ckpt"], losses["ref"])
    for (n, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, a), b in zip(ref.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, a, msg=n)  # running stats: the batch is counted once

    ckpt.set_grad_checkpointing(False)
    calls = []
    hook = ckpt.stages[0].conv_blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    ckpt(x).sum().backward()
    hook.remove()
    assert len(calls) == 1


@pytest.mark.slow
def test_grad_checkpointing_under_torch_compile():
    """Under torch.compile the blocks are checkpointed without the recompute context (compile
    takes none; its graph updates BN buffers once): gradients and statistics as compiled
    without checkpointing."""
    ref = AsCAN(TINY, num_classes=NUM_CLASSES, fused=False).train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing()
    x = _image(32, 32, b=2)
    for m in (ref, ckpt):
        torch.compile(m)(x).logsumexp(-1).sum().backward()
    for (n, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, a), b in zip(ref.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, a, msg=n)


def test_group_matcher_with_timm_layer_decay(model):
    n_blocks = sum(len(layout) for layout in CONFIGS["ascan_t"].layouts)
    fine = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    names = [n for n, _ in model.named_parameters()]
    assert set(fine) == set(coarse) == set(names)
    assert len(set(fine.values())) == 1 + n_blocks + 1  # stem, each block, head
    assert len(set(coarse.values())) == 1 + 4 + 1  # stem, each stage, head
    assert fine["stem.0.conv.weight"] == 0 and fine["head.weight"] == fine["norm.weight"] == n_blocks + 1
    # forward order: stage 2's T blocks come after its C block; stage 3's downsample joins its first block
    assert fine["stages.2.conv_blocks.0.expand.conv.weight"] < fine["stages.2.transformer_blocks.0.attn.qkv.weight"]
    assert fine["stages.3.downsample.conv.weight"] == fine["stages.3.transformer_blocks.0.norm1.weight"]
    opt = timm_optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert len({g["lr_scale"] for g in opt.param_groups}) == 1 + n_blocks + 1


def test_weight_decay_groups_with_timm_optim(model):
    assert model.no_weight_decay() == set()
    opt = timm_optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    by_wd = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_wd) == {0.0, 0.05}
    assert all(p.ndim > 1 for p in by_wd[0.05]) and all(p.ndim <= 1 for p in by_wd[0.0])
    assert len(by_wd[0.0]) + len(by_wd[0.05]) == len(list(model.parameters()))


# --------------------------------------------------------------------------- data config, weights
@pytest.mark.parametrize("source", ["timm", "ascan"])
def test_data_config_and_transform(model, source):
    pytest.importorskip("torchvision")
    Image = pytest.importorskip("PIL.Image")
    if source == "timm":
        m = model
    else:
        with torch.device("meta"):  # the data config reads no weights
            m = build_model("ascan_t")
    cfg = timm_data.resolve_data_config(model=m)
    assert cfg == timm_data.resolve_model_data_config(m)
    assert cfg == dict(input_size=(3, 224, 224), interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), crop_pct=0.875, crop_mode="center")
    x = timm_data.create_transform(**cfg)(Image.new("RGB", (300, 260), (120, 60, 30)))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32


def test_own_weights_load_through_timms_pretrained_path(model, tmp_path):
    """Our weights through timm's loader (train.py's --pretrained-path): timm adapts the cfg's
    first_conv to in_chans=1 (summing over RGB) and drops its classifier for 3 classes."""
    path = tmp_path / "ascan_t.pth"
    sd = model.state_dict()
    torch.save(sd, path)
    adapted = timm.create_model("ascan_t", pretrained=True, in_chans=1, num_classes=3,
                                pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES))
    got = adapted.state_dict()
    assert got["head.weight"].shape == (3, 512)
    torch.testing.assert_close(got["stem.0.conv.weight"], sd["stem.0.conv.weight"].sum(1, keepdim=True))
    for k in ("stages.3.transformer_blocks.1.mlp.fc2.weight", "stages.0.conv_blocks.0.expand.bn.running_var"):
        torch.testing.assert_close(got[k], sd[k], msg=k)


# --------------------------------------------------------------------------- import guard
def test_registration_waits_for_timm_and_survives_a_broken_or_missing_timm(tmp_path):
    """In a fresh interpreter: (1) timm absent (find_spec finds nothing): nothing of the
    integration is imported; (2) a timm whose import raises: ``import ascan`` works, the
    importer of timm sees timm's error, status() keeps it; (3) the real timm: ``import ascan``
    imports neither timm nor torch._dynamo, and importing timm afterwards registers."""
    fake = tmp_path / "fake"  # not the working directory, which `python -c` puts on sys.path
    (fake / "timm").mkdir(parents=True)
    (fake / "timm" / "__init__.py").write_text("raise RuntimeError('simulated broken timm')\n")
    script = textwrap.dedent(f"""
        import importlib.util, sys, warnings
        warnings.simplefilter("error")  # none of this may warn

        def forget_ascan():
            for k in [k for k in sys.modules if k == "ascan" or k.startswith("ascan.")]:
                del sys.modules[k]

        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: None if name == "timm" else real_find_spec(name, package)
        import ascan
        assert "timm" not in sys.modules and "ascan.integrations.timm" not in sys.modules
        assert "ascan_t" in ascan.list_models()
        importlib.util.find_spec = real_find_spec
        forget_ascan()

        sys.path.insert(0, {str(fake)!r})
        import ascan
        try:
            import timm
        except RuntimeError as e:
            assert "simulated broken timm" in str(e)
        else:
            raise AssertionError("the fake timm imported")
        status = ascan.integrations.timm.status()
        assert "importing timm failed (RuntimeError: simulated broken timm)" in status, status
        assert ascan.build_model("ascan_t", num_classes=2) is not None
        sys.path.pop(0)
        forget_ascan()

        import ascan
        assert "timm" not in sys.modules and "torch._dynamo" not in sys.modules
        assert "not registered with timm yet" in ascan.integrations.timm.status()
        assert importlib.util.find_spec("timm") is not None  # how other libraries probe for timm
        import timm
        assert ascan.integrations.timm.status() == "registered with timm"
        assert timm.list_models("ascan*") == ["ascan_b", "ascan_l", "ascan_s", "ascan_t"]
        assert not type(timm.__loader__).__module__.startswith("ascan")  # the hook left timm as it was
        assert not any(type(f).__module__.startswith("ascan") for f in sys.meta_path)  # and is gone
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)  # ascan_kernels would import triton to set it up
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_readme_timm_snippet_runs(capsys):
    """The README's first timm snippet, as written (its printed line is checked too)."""
    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```python\n", text.index("## Using AsCAN with timm")) + len("```python\n")
    code = text[start:text.index("```", start)]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "['ascan_b', 'ascan_l', 'ascan_s', 'ascan_t']" in out
    assert "torch.Size([2, 10]) [64, 128, 256, 512] [(56, 56), (28, 28), (14, 14), (7, 7)]" in out
