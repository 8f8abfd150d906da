"""ascan.integrations.diffusers: the UNets as diffusers models, and the class-conditional pipeline.

Two independent references for the pipeline: ``ascan.generate`` (our DDIM sampler; the
pipeline on ``ascan_ddim_scheduler`` must reproduce it), and, for every scheduler, an
oracle UNet that predicts the exact noise of a one-point-per-class data set, which any
correct sampler (noise scale, ``scale_model_input``, guidance) turns into that point.
"""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ascan import build_model, generate
from ascan.sampling import scaled_linear_alphas_cumprod
from ascan_kernels.testing import assert_close

diffusers = pytest.importorskip("diffusers")
integration = pytest.importorskip("ascan.integrations.diffusers")
AsCANPipeline, AsCANUNet2DModel = integration.AsCANPipeline, integration.AsCANUNet2DModel
ascan_ddim_scheduler = integration.ascan_ddim_scheduler
DDIMScheduler, DPMSolverMultistepScheduler = diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler
EulerDiscreteScheduler = diffusers.EulerDiscreteScheduler

NUM_CLASSES = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: a second intra-op thread only adds a barrier per op, and on a
    busy machine that barrier waits for a descheduled thread (10-30x slower, measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise(model):
    """The UNets zero-initialise their output layers; give every parameter a value."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@functools.lru_cache(maxsize=None)
def tiny(fused=False, in_channels=1, sample_size=8):
    """The tiny c2i UNet on pixels (1 or 3 channels, 8 x 8), random weights; one shared
    instance per argument set: don't modify it. Eager by default: the fused ops time their
    impls on each new shape's first call, seconds per test on a busy CPU."""
    return _randomise(AsCANUNet2DModel("ascan_unet_c2i_t", num_classes=NUM_CLASSES, in_channels=in_channels,
                                       sample_size=sample_size, fused=fused)).eval()


def pipeline(unet=None, scheduler=None):
    pipe = AsCANPipeline(unet=unet if unet is not None else tiny(), scheduler=scheduler or ascan_ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_forward_is_the_ascan_unet(fused):
    m = tiny(fused=fused)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([3, NUM_CLASSES])
    with torch.no_grad():
        ref = m.unet(x, torch.tensor([10, 10]), y)
        out = m(x, torch.tensor([10, 10]), class_labels=y)
        tup = m(x, 10, class_labels=y, return_dict=False)
    assert torch.equal(out.sample, ref)
    assert isinstance(tup, tuple) and len(tup) == 1 and torch.equal(tup[0], ref)
    assert m.null_class == NUM_CLASSES and m.is_class_conditional


@pytest.mark.parametrize("timestep", [500, 500.0, torch.tensor(500), torch.tensor([500]), torch.tensor([500, 500]),
                                      np.int64(500)], ids=["int", "float", "0d", "(1,)", "(B,)", "numpy"])
def test_timestep_broadcasts(timestep):
    m = tiny()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        ref = m.unet(x, torch.tensor([500, 500]), y)
        assert torch.equal(m(x, timestep, class_labels=y).sample, ref)


def test_float_timesteps_interpolate():
    """Euler-style schedulers pass fractional timesteps: the sinusoidal features take them."""
    m = tiny()
    x, y = torch.randn(1, 1, 8, 8), torch.tensor([1])
    with torch.no_grad():
        a, b, mid = (m(x, t, class_labels=y).sample for t in (500, 501, 500.5))
    assert torch.isfinite(mid).all() and not torch.equal(mid, a) and not torch.equal(mid, b)


def test_config_records_what_was_built():
    m = AsCANUNet2DModel("ascan_unet_c2i_t", in_channels=3, sample_size=8)
    assert m.config.num_classes == 1000 and m.config.context_dim is None and m.unet.num_classes == 1000
    assert m.config.variant == "ascan_unet_c2i_t" and m.unet.cfg.in_channels == 3 and m.config.fused is True


@pytest.mark.parametrize("save_fused,load_fused", [(True, True), (False, False), (True, False), (False, True)])
def test_save_load_round_trip(tmp_path, save_fused, load_fused):
    m = tiny(fused=save_fused)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AsCANUNet2DModel.from_pretrained(tmp_path, fused=load_fused).eval()
    assert loaded.config.fused is load_fused and loaded.unet.fused is load_fused
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([4, NUM_CLASSES])
    with torch.no_grad():
        a, b = m(x, 250, class_labels=y).sample, loaded(x, 250, class_labels=y).sample
    if save_fused == load_fused:
        assert torch.equal(a, b)
    else:
        assert_close(a, b)  # fused kernels and eager PyTorch round differently


def test_from_unet_wraps_a_trained_unet():
    unet = _randomise(build_model("ascan_unet_c2i_t", num_classes=NUM_CLASSES, in_channels=1)).eval()
    m = AsCANUNet2DModel.from_unet(unet, sample_size=8)
    assert m.config.num_classes == NUM_CLASSES and m.config.in_channels == 1 and m.config.sample_size == 8
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x, 7, class_labels=3).sample, unet(x, torch.tensor([7]), torch.tensor([3])))


def test_text_to_image_variant():
    m = _randomise(AsCANUNet2DModel("ascan_unet_t2i_s", context_dim=16, in_channels=1, sample_size=8)).eval()
    assert m.config.num_classes is None and m.config.context_dim == 16 and not m.is_class_conditional
    x, ctx = torch.randn(2, 1, 8, 8), torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = m(x, 100, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        ref = m.unet(x, torch.tensor([100, 100]), ctx, mask.bool())
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="ascan_unet_t2i_s: a text-to-image UNet takes encoder_hidden_states"):
        m(x, 100, class_labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="AsCANPipeline: ascan_unet_t2i_s is text-to-image"):
        AsCANPipeline(unet=m, scheduler=ascan_ddim_scheduler())


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown UNet variant 'ascan_unet_c2i_q'; available: .*ascan_unet_c2i_t"):
        AsCANUNet2DModel("ascan_unet_c2i_q")
    with pytest.raises(ValueError, match="unknown UNet variant 'ascan_t'"):  # a classifier, not a UNet
        AsCANUNet2DModel("ascan_t")
    with pytest.raises(ValueError, match="ascan_unet_c2i_t is class-conditional; it takes num_classes"):
        AsCANUNet2DModel("ascan_unet_c2i_t", context_dim=16)
    with pytest.raises(ValueError, match="ascan_unet_t2i_s is text-to-image; it takes context_dim"):
        AsCANUNet2DModel("ascan_unet_t2i_s", num_classes=10)
    with pytest.raises(ValueError, match="sample_size must be a positive multiple of 4"):
        AsCANUNet2DModel("ascan_unet_c2i_t", sample_size=10)


def test_bad_forward_inputs_name_the_model():
    m = tiny()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"ascan_unet_c2i_t: class ids must be in \[0, 10\]"):
        m(x, 5, class_labels=torch.tensor([1, 11]))
    with pytest.raises(ValueError, match=r"ascan_unet_c2i_t: expected latents \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        m(torch.randn(2, 3, 8, 8), 5, class_labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"ascan_unet_c2i_t: timestep must be .* of shape \(2,\), got \(3,\)"):
        m(x, torch.tensor([1, 2, 3]), class_labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="ascan_unet_c2i_t: a class-conditional UNet needs class_labels"):
        m(x, 5)
    with pytest.raises(ValueError, match="ascan_unet_c2i_t: a class-conditional UNet takes class_labels, not enc"):
        m(x, 5, encoder_hidden_states=torch.randn(2, 3, 8), class_labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"ascan_unet_c2i_t: expected sample \(B, 1, H, W\)"):
        m(torch.randn(1, 8, 8), 5, class_labels=1)


# --------------------------------------------------------------------------- the pipeline
def test_ddim_pipeline_reproduces_ascan_generate():
    """The independent reference: our own DDIM sampler, on the same noise, schedule and guidance."""
    unet = tiny()
    y = torch.tensor([3, 7])
    # eta > 0: both draw the step noise from the generator after the initial noise, in the same order
    for steps, scale, eta in ((4, 3.0, 0.0), (5, 1.0, 0.0), (4, 2.0, 1.0)):
        lat = pipeline(unet)(y, guidance_scale=scale, num_inference_steps=steps, generator=seeded(5), eta=eta,
                             output_type="latent").images
        ref = generate(unet.unet, y=y, latent_size=8, steps=steps, guidance_scale=scale, eta=eta, seed=5)
        # diffusers keeps the schedule in float32, ascan.sampling in float64
        torch.testing.assert_close(lat, ref, atol=1e-4, rtol=1e-4)


class OracleUNet(AsCANUNet2DModel):
    """Predicts the exact noise of a data set with one point per class (``targets[y]``).

    eps(x_t, t, y) = (x_t - sqrt(abar_t) targets[y]) / sqrt(1 - abar_t), abar from our own
    schedule. Guided, eps is the exact noise for the point x_null + s (x_class - x_null),
    so a correct sampler ends there, whatever the scheduler and the number of steps. It
    keeps its inputs: the first must look like the noise the schedule starts from (std 1
    in the variance-preserving form every UNet sees), which checks ``init_noise_sigma``
    and ``scale_model_input``, to which the end point alone is blind.
    """

    def set_targets(self, targets):
        self.targets = targets  # (num_classes + 1, C, H, W), float64
        self.inputs = []

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None,
                encoder_attention_mask=None, return_dict=True):
        self.inputs.append(sample)
        abar = scaled_linear_alphas_cumprod()
        t = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
        assert torch.allclose(t.double(), t.double().round()), t  # trailing spacing: integer timesteps
        a = abar[t.double().round().long()][:, None, None, None]
        eps = (sample.double() - a.sqrt() * self.targets[class_labels]) / (1 - a).sqrt()
        out = eps.to(sample.dtype)
        return integration.UNet2DOutput(sample=out) if return_dict else (out,)


SCHEDULERS = {
    "ddim": lambda: ascan_ddim_scheduler(),
    "dpm++": lambda: DPMSolverMultistepScheduler.from_config(ascan_ddim_scheduler().config,
                                                             algorithm_type="dpmsolver++"),
    "euler": lambda: EulerDiscreteScheduler.from_config(ascan_ddim_scheduler().config),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_lands_on_the_oracle_point(name):
    torch.manual_seed(0)
    unet = OracleUNet("ascan_unet_c2i_t", num_classes=NUM_CLASSES, in_channels=3, sample_size=8)
    targets = torch.rand(NUM_CLASSES + 1, 3, 8, 8, dtype=torch.float64) * 1.6 - 0.8
    unet.set_targets(targets)
    pipe = pipeline(unet, SCHEDULERS[name]())
    y, s = torch.tensor([2, 9]), 1.5
    want = targets[NUM_CLASSES] + s * (targets[y] - targets[NUM_CLASSES])
    lat = pipe(y, guidance_scale=s, num_inference_steps=4, generator=seeded(0), output_type="latent").images
    torch.testing.assert_close(lat, want.float(), atol=2e-3, rtol=0)
    first = unet.inputs[0]
    assert first.shape == (4, 3, 8, 8) and abs(first.std().item() - 1) < 0.15, first.std()
    img = pipe(y, guidance_scale=s, num_inference_steps=4, generator=seeded(0), output_type="pt").images
    torch.testing.assert_close(img, ((want.float() + 1) / 2).clamp(0, 1), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_schedulers_run_the_real_unet_deterministically(name):
    pipe = pipeline(tiny(in_channels=3), SCHEDULERS[name]())
    kw = dict(guidance_scale=4.0, num_inference_steps=3, output_type="np")
    a, b = pipe([1, 5], generator=seeded(0), **kw).images, pipe([1, 5], generator=seeded(0), **kw).images
    c = pipe([1, 5], generator=seeded(1), **kw).images
    assert a.shape == (2, 8, 8, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_output_types():
    pipe = pipeline()
    run = dict(num_inference_steps=2, guidance_scale=2.0)
    pil = pipe(4, generator=seeded(), **run).images
    assert len(pil) == 1 and pil[0].size == (8, 8) and pil[0].mode == "L"
    npy = pipe([4], generator=seeded(), output_type="np", **run).images
    pt = pipe(torch.tensor([4]), generator=seeded(), output_type="pt", **run).images
    lat = pipe([4], generator=seeded(), output_type="latent", return_dict=False, **run)[0]
    assert npy.shape == (1, 8, 8, 1) and pt.shape == lat.shape == (1, 1, 8, 8)
    assert_close(pt, ((lat + 1) / 2).clamp(0, 1))
    assert np.allclose(npy[..., 0], pt[:, 0].numpy())
    assert np.array_equal(np.asarray(pil[0]), (npy[0, ..., 0] * 255).round().astype(np.uint8))
    rgb = pipeline(tiny(in_channels=3))([1, 2], generator=seeded(), **run).images
    assert [im.mode for im in rgb] == ["RGB", "RGB"]


def test_pipeline_save_load_round_trip(tmp_path):
    pipe = pipeline(scheduler=DPMSolverMultistepScheduler.from_config(ascan_ddim_scheduler().config))
    kw = dict(num_inference_steps=3, output_type="latent", guidance_scale=3.0)
    want = pipe([0, 9], generator=seeded(3), **kw).images
    pipe.save_pretrained(tmp_path)
    loaded = AsCANPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler) and loaded.vae is None
    assert isinstance(loaded.unet, AsCANUNet2DModel) and loaded.unet.config.in_channels == 1
    assert torch.equal(loaded([0, 9], generator=seeded(3), **kw).images, want)


def test_pipeline_decodes_with_a_vae():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1, sample_size=16).eval()
    pipe = AsCANPipeline(unet=tiny(in_channels=4), scheduler=ascan_ddim_scheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    img = pipe([1], num_inference_steps=2, generator=seeded(), output_type="pt").images
    assert img.shape == (1, 3, 16, 16) and 0 <= img.min() and img.max() <= 1


def test_bad_pipeline_inputs():
    pipe = pipeline()
    with pytest.raises(ValueError, match=r"AsCANPipeline \(ascan_unet_c2i_t\): class ids must be in \[0, 10\]"):
        pipe([1, 11], num_inference_steps=2)
    with pytest.raises(ValueError, match=r"AsCANPipeline \(ascan_unet_c2i_t\): class ids must be in"):
        pipe(-1, num_inference_steps=2)
    with pytest.raises(ValueError, match="class_labels must be an int, a list of ints"):
        pipe([1.5], num_inference_steps=2)
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe([1], num_inference_steps=2, output_type="jpeg")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="predict the noise"):
        pipe([1], num_inference_steps=2)
    with pytest.raises(TypeError, match="unet must be an AsCANUNet2DModel"):
        AsCANPipeline(unet=build_model("ascan_unet_c2i_t", num_classes=10), scheduler=ascan_ddim_scheduler())


def test_ascan_works_without_diffusers():
    """``import ascan`` and ``generate`` never touch diffusers; the integration says what to install."""
    code = (
        "import sys; sys.modules['diffusers'] = None\n"  # None in sys.modules: importing it fails
        "import torch, ascan\n"
        "m = ascan.build_model('ascan_unet_c2i_t', num_classes=3, in_channels=1).eval()\n"
        "assert ascan.generate(m, y=torch.tensor([1]), latent_size=8, steps=2).shape == (1, 1, 8, 8)\n"
        "try:\n    import ascan.integrations.diffusers\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERR ascan.integrations.diffusers needs diffusers: pip install 'ascan[diffusers]'" in r.stdout


def test_readme_diffusers_snippet_runs():
    """The README's diffusers snippet, as written."""
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("```python\n", text.index("## Using the UNets with diffusers")) + len("```python\n")
    code = text[start:text.index("```", start)]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["eps"].shape == (2, 1, 8, 8) and len(scope["images"]) == 2
    assert scope["arr"].shape == (2, 8, 8, 1) and 0 <= scope["arr"].min() and scope["arr"].max() <= 1
