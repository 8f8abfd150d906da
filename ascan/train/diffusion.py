"""Diffusion training for the AsCAN UNets: ``fit_diffusion`` (``python -m ascan train-diffusion``).

The objective is the standard epsilon prediction on the package's noise schedule
(:func:`ascan.sampling.scaled_linear_alphas_cumprod`, the one :func:`ascan.generate`
samples with): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, loss ``|eps - model(x_t, t, c)|^2``.
The condition is dropped (class -> the null class; context -> zeros, the sampler's
default unconditional context) with probability ``cond_drop``, which is what
classifier-free guidance needs. Noise, timestep and dropout are drawn per sample from
``(seed, epoch, index)``, like the augmentation, so runs resume and scale out exactly.

c2i trains on an image classification set (the embedded digits by default, in pixel
space at their native 1 x 8 x 8, in [-1, 1]: the judge classifier sees them upsampled exactly
like its own training images); t2i trains on any data set of ``(image, context)`` or
``(image, context, context_mask)`` samples (:func:`fit_diffusion` with ``dataset=``).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

import ascan_kernels as K

from ..models.registry import build_model
from ..sampling import generate, scaled_linear_alphas_cumprod
from . import checkpoint as ck
from .classify import fit, load_classifier
from .data import DataError, digits, sample_seed
from .loop import LoopConfig, Task, run


@dataclasses.dataclass
class DiffusionConfig(LoopConfig):
    """``python -m ascan train-diffusion``'s options.

    ``judge``: a classifier checkpoint that labels the final samples (default: the one
    ``python -m ascan train`` writes, ``runs/ascan-digits``; trained first when absent and
    ``train_judge`` is set). ``samples_per_class``: the PNG grid's columns."""

    model: str = "ascan_unet_c2i_t"
    data: str = "digits"
    image_size: int = 8
    num_train_steps: int = 1000
    cond_drop: float = 0.1
    samples_per_class: int = 10
    sample_steps: int = 50
    guidance: float = 3.0
    judge: str | None = None
    train_judge: bool = True
    grid: str = "samples.png"


DEFAULTS_DIGITS = dict(epochs=60, batch_size=64, lr=2e-3, ema=0.999, out="runs/ascan-diffusion-digits",
                       clip_grad=1.0, weight_decay=0.0)
DEFAULT_JUDGE = "runs/ascan-digits"


class NoisedSamples(Dataset):
    """(x0, cond, noise, t, dropped) per sample, all random draws seeded per sample.

    ``base`` yields (image in [0, 1], label) for c2i, or (image in [-1, 1], context[, mask])
    for t2i. c2i images are mapped to [-1, 1]."""

    def __init__(self, base, c2i: bool, null_class: int | None, num_train_steps: int, cond_drop: float, seed: int):
        self.base, self.c2i, self.null = base, c2i, null_class
        self.T, self.cond_drop, self.seed, self.epoch = num_train_steps, cond_drop, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        item = self.base[index]
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        t = int(torch.randint(self.T, (), generator=g))
        drop = bool(torch.rand((), generator=g) < self.cond_drop)
        if self.c2i:
            image, label = item
            x0 = image * 2 - 1
            cond = torch.tensor(self.null if drop else int(label))
            mask = torch.ones(0, dtype=torch.bool)
        else:
            image, cond = item[0], item[1]
            mask = item[2] if len(item) > 2 else torch.ones(cond.shape[0], dtype=torch.bool)
            x0 = image
            if drop:
                cond, mask = torch.zeros_like(cond), torch.ones_like(mask)
        noise = torch.randn(x0.shape, generator=g)
        return x0, cond, noise, torch.tensor(t), mask


class DiffusionTask(Task):
    kind = "diffusion"

    def __init__(self, cfg: DiffusionConfig, dataset=None, num_classes: int | None = None,
                 context_dim: int | None = None, in_channels: int | None = None):
        self.cfg = cfg
        self.model_name = cfg.model
        self.classes = None
        if dataset is None:
            if cfg.data != "digits":
                raise DataError(f"train-diffusion: --data {cfg.data!r}: only the embedded 'digits' set is built in; "
                                "pass any Dataset of (image, label) or (image, context) to fit_diffusion(dataset=...)")
            if cfg.image_size % 4:
                raise ValueError(f"image_size must be a multiple of 4 (the UNet's stride), got {cfg.image_size}")
            train, _ = digits(size=cfg.image_size, seed=cfg.seed)
            dataset, num_classes, in_channels, self.classes = train, 10, 1, train.classes
        probe = dataset[0]
        in_channels = in_channels or int(probe[0].shape[0])
        self.c2i = not (isinstance(probe[1], torch.Tensor) and probe[1].dim() == 2)
        if self.c2i:
            if num_classes is None:
                raise ValueError("fit_diffusion: a class-conditional data set needs num_classes")
            self.model_kwargs = {"num_classes": num_classes, "in_channels": in_channels}
        else:
            self.model_kwargs = {"in_channels": in_channels, "context_dim": context_dim or int(probe[1].shape[-1])}
        self.image_shape = tuple(probe[0].shape)
        self.train_set = NoisedSamples(dataset, self.c2i, num_classes, cfg.num_train_steps, cfg.cond_drop, cfg.seed)
        abar = scaled_linear_alphas_cumprod(cfg.num_train_steps)
        self.sqrt_abar, self.sqrt_1m_abar = abar.sqrt().float(), (1 - abar).sqrt().float()

    def build_model(self, fused: bool) -> nn.Module:
        return build_model(self.model_name, fused=fused, **self.model_kwargs)

    def meta(self) -> dict:
        return dict(super().meta(), data=self.cfg.data, image_shape=list(self.image_shape), classes=self.classes)

    def loss(self, model, batch, device, channels_last):
        x0, cond, noise, t, mask = (b.to(device, non_blocking=True) for b in batch)
        a, s = self.sqrt_abar.to(device)[t], self.sqrt_1m_abar.to(device)[t]
        xt = a[:, None, None, None] * x0 + s[:, None, None, None] * noise
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        pred = model(xt, t, cond) if self.c2i else model(xt, t, cond, mask)
        return F.mse_loss(pred.float(), noise)

    def evaluate(self, model, ctx, cfg) -> dict:
        return {}  # no cheap held-out score for a generator; finish() judges the samples

    def finish(self, model, cfg, log) -> dict:
        if not self.c2i or self.classes is None:
            return {}
        return sample_and_judge(model, self.cfg, self.model_kwargs["num_classes"], log)


@torch.no_grad()
def sample_and_judge(model: nn.Module, cfg: DiffusionConfig, num_classes: int, log) -> dict:
    """Sample ``samples_per_class`` images of every class, write the PNG grid (one row
    per class), and report how often the judge classifier labels a sample as its class."""
    from torchvision.utils import make_grid, save_image
    n = cfg.samples_per_class
    y = torch.arange(num_classes).repeat_interleave(n)
    t0 = time.perf_counter()
    x = generate(model, y=y, latent_size=cfg.image_size, steps=cfg.sample_steps, guidance_scale=cfg.guidance,
                 seed=cfg.seed)
    images = ((x.clamp(-1, 1) + 1) / 2).cpu()
    result: dict = {"samples": len(y), "sample_s": time.perf_counter() - t0}
    grid = make_grid(F.interpolate(images, scale_factor=4, mode="nearest"), nrow=n, padding=2, pad_value=0.5)
    path = Path(cfg.out) / cfg.grid
    K.atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
    result["grid"] = str(path)
    log(f"wrote {path}: {num_classes} rows (classes) x {n} samples ({cfg.sample_steps} DDIM steps, "
        f"guidance {cfg.guidance})")
    judge = _judge(cfg, log)
    if judge is not None:
        clf, meta = judge
        size, mean, std = meta["image_size"], torch.tensor(meta["mean"]), torch.tensor(meta["std"])
        inp = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        inp = (inp - mean[:, None, None]) / std[:, None, None]
        pred = clf(inp).argmax(-1)
        acc = 100.0 * float((pred == y).float().mean())
        per_class = [100.0 * float((pred[y == c] == c).float().mean()) for c in range(num_classes)]
        result.update(judged_accuracy=acc, judged_per_class=per_class, judge=meta.get("source"))
        log(f"classifier-judged accuracy: {acc:.1f}% of {len(y)} samples labelled as the requested class "
            f"(per class: {' '.join(f'{a:.0f}' for a in per_class)})")
    return result


def _judge(cfg: DiffusionConfig, log):
    path = cfg.judge or DEFAULT_JUDGE
    try:
        wpath = ck.resolve_weights(path)
    except ck.CheckpointError:
        if cfg.judge is not None or not cfg.train_judge:
            log(f"no judge classifier at {path!r}: skipping the classifier-judged accuracy")
            return None
        log(f"no judge classifier at {path!r}: training one (python -m ascan train --out {path})")
        fit(out=path, quiet=cfg.quiet, device=cfg.device)
        wpath = ck.resolve_weights(path)
    clf, meta = load_classifier(wpath, device="cpu")
    if meta.get("data") != "digits":
        log(f"judge {wpath} was not trained on the digits: skipping the classifier-judged accuracy")
        return None
    return clf, meta


def fit_diffusion(dataset: Dataset | None = None, num_classes: int | None = None, context_dim: int | None = None,
                  **kwargs) -> dict:
    """Train a diffusion UNet; keyword arguments are :class:`DiffusionConfig` fields.

    ``fit_diffusion()`` alone trains ``ascan_unet_c2i_t`` on the embedded digits, writes
    ``samples.png`` and prints the classifier-judged accuracy. ``dataset``: any Dataset of
    (image (C, H, W) in [0, 1], label) with ``num_classes``, or of (image in [-1, 1],
    context (L, D)[, mask (L,) bool]) for a t2i model (``model="ascan_unet_t2i_s"``)."""
    defaults = DEFAULTS_DIGITS if dataset is None and kwargs.get("data", "digits") == "digits" else {}
    cfg = DiffusionConfig(**{**defaults, **kwargs})
    return run(DiffusionTask(cfg, dataset, num_classes, context_dim), cfg)
