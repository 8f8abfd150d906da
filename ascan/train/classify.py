"""Classifier training: ``fit`` (the Python API behind ``python -m ascan train``) and ``validate``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.registry import build_model
from . import checkpoint as ck
from .data import Seeded, digits, image_transforms, shard_indices, split_image_folder
from .loop import LoopConfig, Task, run

DIGITS_MEAN, DIGITS_STD = (0.5,), (0.5,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass
class ClassifierConfig(LoopConfig):
    """``python -m ascan train``'s options. ``data="digits"`` is the embedded set
    (scikit-learn's digits, 1,437 train / 360 held out); otherwise an ImageFolder root
    (with ``train/`` and ``val/`` inside, or split ``holdout`` of it)."""

    model: str = "ascan_t"
    data: str = "digits"
    image_size: int | None = None
    holdout: float = 0.2
    label_smoothing: float = 0.1
    drop_path: float = 0.05
    mixup: float = 0.0
    cutmix: float = 0.0
    eval_batch_size: int = 256


DEFAULTS_DIGITS = dict(epochs=15, batch_size=64, lr=2e-3, ema=0.998, out="runs/ascan-digits")


def _mix(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, smoothing: float):
    """Mixup / CutMix on a batch (soft targets), drawing from the global RNG (per rank)."""
    target = F.one_hot(y, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    use_cut = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
    alpha = cutmix if use_cut else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cut:
        H, W = x.shape[-2:]
        rh, rw = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
        y0, y1, x0, x1 = max(cy - rh // 2, 0), min(cy + rh // 2, H), max(cx - rw // 2, 0), min(cx + rw // 2, W)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * target + (1 - lam) * target[perm]


class ClassifyTask(Task):
    kind = "classify"

    def __init__(self, cfg: ClassifierConfig):
        self.cfg = cfg
        if cfg.data == "digits":
            size = cfg.image_size or 32
            train, held = digits(size=size, holdout=cfg.holdout, seed=cfg.seed)
            self.mean, self.std, in_chans = DIGITS_MEAN, DIGITS_STD, 1
            tf_train = image_transforms(size, True, True, self.mean, self.std)
            tf_eval = image_transforms(size, False, True, self.mean, self.std)
        else:
            size = cfg.image_size or 224
            train, held = split_image_folder(cfg.data, cfg.holdout, cfg.seed)
            self.mean, self.std, in_chans = IMAGENET_MEAN, IMAGENET_STD, 3
            tf_train = image_transforms(size, True, False, self.mean, self.std)
            tf_eval = image_transforms(size, False, False, self.mean, self.std)
        if size % 32 or size < 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the classifier's stride), got {size}")
        self.size = size
        self.classes = list(train.classes)
        self.train_set = Seeded(train, tf_train, cfg.seed)
        self.eval_set = Seeded(held, tf_eval, cfg.seed)
        self.model_name = cfg.model
        self.model_kwargs = {"num_classes": len(self.classes), "in_chans": in_chans, "drop_path_rate": cfg.drop_path}

    def build_model(self, fused: bool) -> nn.Module:
        return build_model(self.model_name, fused=fused, **self.model_kwargs)

    def meta(self) -> dict:
        return dict(super().meta(), data=self.cfg.data, image_size=self.size, mean=list(self.mean),
                    std=list(self.std), classes=self.classes, holdout=self.cfg.holdout, split_seed=self.cfg.seed)

    def loss(self, model, batch, device, channels_last):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        c = self.cfg
        if c.mixup > 0 or c.cutmix > 0:
            x, target = _mix(x, y, len(self.classes), c.mixup, c.cutmix, c.label_smoothing)
            return torch.sum(-target * F.log_softmax(model(x).float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(model(x).float(), y, label_smoothing=c.label_smoothing)

    def evaluate(self, model, ctx, cfg) -> dict:
        correct, total, loss = evaluate_classifier(model, self.eval_set, ctx.device, self.cfg.eval_batch_size,
                                                   ctx.rank, ctx.world, cfg.channels_last)
        correct, total, loss = ctx.all_sum([correct, total, loss])
        top1 = 100.0 * correct / max(total, 1)
        return {"top1": top1, "held_out": int(total), "val_loss": loss / max(total, 1), "score": top1}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, device: torch.device, batch_size: int = 256, rank: int = 0,
                        world: int = 1, channels_last: bool = False) -> tuple[float, float, float]:
    """(correct, count, summed cross-entropy) over this rank's share of ``dataset``."""
    from torch.utils.data import DataLoader, Subset
    part = Subset(dataset, shard_indices(len(dataset), rank, world))
    correct = total = loss = 0.0
    for x, y in DataLoader(part, batch_size=batch_size, generator=torch.Generator()):
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        correct += float((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        total += len(y)
    return correct, total, loss


def fit(**kwargs) -> dict:
    """Train a classifier; keyword arguments are :class:`ClassifierConfig` fields.

    ``fit()`` alone trains ``ascan_t`` on the embedded digits (the same as ``python -m
    ascan train``). Returns the summary: ``metrics["top1"]`` (held-out top-1, %), ``best``,
    ``checkpoint`` (the last checkpoint directory), ``out``, ``wall_s``. Under torchrun,
    call it in every process."""
    defaults = DEFAULTS_DIGITS if kwargs.get("data", "digits") == "digits" else {}
    cfg = ClassifierConfig(**{**defaults, **kwargs})
    return run(ClassifyTask(cfg), cfg)


def load_classifier(path: str | Path, fused: bool = True, device: str | torch.device = "cpu"):
    """(model in eval mode, meta) from a classifier checkpoint: a weights file, a checkpoint
    directory or a run directory (its best.safetensors). ``meta["source"]``: the file read."""
    wpath = ck.resolve_weights(path)
    tensors, meta = ck.load_weights(wpath)
    if meta.get("task") != "classify":
        raise ck.CheckpointError(f"checkpoint {str(wpath)!r} is a {meta.get('task')!r} checkpoint "
                                 f"({meta.get('model')}), not a classifier")
    model = build_model(meta["model"], fused=fused, **meta["model_kwargs"])
    ck.load_into(model, tensors, meta, str(wpath))
    return model.to(device).eval(), dict(meta, source=str(wpath))


def validate(checkpoint: str | Path, data: str | None = None, batch_size: int = 256, fused: bool = True,
             device: str | None = None, holdout: float | None = None) -> dict:
    """Held-out top-1 of a classifier checkpoint on ``data`` (default: the data set it was
    trained on). An ImageFolder root uses its ``val/``, else the held-out split the run used
    (its ``holdout`` and seed, from the checkpoint) unless ``holdout`` is given."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_classifier(checkpoint, fused=fused, device=dev)
    data = data or meta["data"]
    size, mean, std = meta["image_size"], tuple(meta["mean"]), tuple(meta["std"])
    # by default the held-out split the run itself evaluated on
    holdout, seed = holdout or meta.get("holdout", 0.2), meta.get("split_seed", 0)
    if data == "digits":
        _, held = digits(size=size, holdout=holdout, seed=seed)
        ds = Seeded(held, image_transforms(size, False, True, mean, std))
    else:
        _, held = split_image_folder(data, holdout, seed)
        if list(held.classes) != list(meta["classes"]):
            raise ValueError(f"validate: {data!r} has classes {held.classes[:5]}..., the checkpoint was trained on "
                             f"{meta['classes'][:5]}...")
        ds = Seeded(held, image_transforms(size, False, False, mean, std))
    correct, total, loss = evaluate_classifier(model, ds, dev, batch_size)
    return {"top1": 100.0 * correct / max(total, 1), "held_out": int(total), "val_loss": loss / max(total, 1),
            "model": meta["model"], "checkpoint": meta["source"]}
