"""A few-step smoke of `python -m ascan train`, `validate` and `train-diffusion` (tiny shapes),
and the t2i UNet through the same loop on a small synthetic (image, context) set."""
from __future__ import annotations

import json

import torch

from _train_helpers import TINY_DIFFUSION, run_cli


def test_train_validate_and_train_diffusion_cli(tmp_path):
    out = tmp_path / "clf"
    r = run_cli("train", "--max-steps", 3, "--batch-size", 16, "--log-every", 1, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "step 3/" in r.stdout and "img/s" in r.stdout and "eta" in r.stdout and "lr" in r.stdout
    assert "held-out top-1:" in r.stdout and "%" in r.stdout
    assert (out / "best.safetensors").is_file() and (out / "ckpt-00000003" / "trainer.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    r = run_cli("validate", "--checkpoint", out / "best.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["held_out"] == 359 and abs(v["top1"] - summary["metrics"]["top1"]) < 1e-9

    dout = tmp_path / "diff"
    r = run_cli("train-diffusion", "--max-steps", 3, "--batch-size", 16, "--image-size", 8,
                "--samples-per-class", 2, "--sample-steps", 2, "--judge", out, "--out", dout)
    assert r.returncode == 0, r.stderr
    assert "classifier-judged accuracy:" in r.stdout
    from PIL import Image
    with Image.open(dout / "samples.png") as im:
        assert im.size == (2 * 32 + 3 * 2, 10 * 32 + 11 * 2)  # 2 columns, 10 rows of 4x-upscaled 8x8 samples
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--batch-size" in r.stdout and "--resume" in r.stdout


class _SyntheticTextImages(torch.utils.data.Dataset):
    """Images whose brightness pattern is given by a random context: a learnable pairing."""

    def __init__(self, n=32, L=3, D=16):
        g = torch.Generator().manual_seed(0)
        self.ctx = torch.randn(n, L, D, generator=g)
        self.img = torch.tanh(self.ctx.mean(1)[:, :4, None, None].expand(n, 4, 8, 8).contiguous())

    def __len__(self):
        return len(self.img)

    def __getitem__(self, i):
        return self.img[i], self.ctx[i]


def test_t2i_trains_through_the_same_loop(tmp_path):
    from ascan.train.diffusion import fit_diffusion
    from ascan.train.checkpoint import latest_checkpoint, load_weights
    s = fit_diffusion(_SyntheticTextImages(), model="ascan_unet_t2i_s", **dict(TINY_DIFFUSION, ema=0.0),
                      max_steps=2, lr=1e-3, out=str(tmp_path))
    assert s["step"] == 2
    tensors, meta = load_weights(latest_checkpoint(tmp_path) / "model.safetensors")
    assert meta["model"] == "ascan_unet_t2i_s" and meta["model_kwargs"] == {"in_channels": 4, "context_dim": 16}
    from ascan import build_model, generate
    m = build_model("ascan_unet_t2i_s", in_channels=4, context_dim=16)
    m.load_state_dict(tensors)
    x = generate(m.eval(), context=torch.randn(2, 3, 16), latent_size=8, steps=2)
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()


def test_accumulation_matches_one_big_batch(tmp_path):
    """2 micro-batches of 8 == one batch of 16 (the UNet normalises per sample)."""
    from ascan.train.diffusion import fit_diffusion
    from ascan.train.checkpoint import latest_checkpoint
    from _train_helpers import assert_same_training, weights
    fit_diffusion(**TINY_DIFFUSION, max_steps=3, out=str(tmp_path / "big"))
    fit_diffusion(**TINY_DIFFUSION, max_steps=3, accum_steps=2, out=str(tmp_path / "acc"))
    assert_same_training(weights(latest_checkpoint(tmp_path / "big") / "model.safetensors"),
                         weights(latest_checkpoint(tmp_path / "acc") / "model.safetensors"), lr=2e-3)


def test_bf16_channels_last_mixup_cutmix_run(tmp_path):
    from ascan.train import fit
    from ascan.train.diffusion import fit_diffusion
    s = fit_diffusion(**TINY_DIFFUSION, max_steps=2, amp="bf16", channels_last=True, out=str(tmp_path / "d"))
    assert s["step"] == 2
    s = fit(batch_size=8, epochs=1, max_steps=2, quiet=True, mixup=0.8, cutmix=1.0, channels_last=True,
            holdout=0.02, out=str(tmp_path / "c"))
    assert s["step"] == 2 and 0 <= s["metrics"]["top1"] <= 100
