"""Training data: the embedded digits set, image folders, and per-sample seeded augmentation.

Every random draw of the input pipeline (crop, flip, noise, timestep, label dropout) is
made from a generator seeded by ``(seed, epoch, sample index)``. A sample therefore
looks the same whichever rank, worker or process loads it, which is what makes a
resumed run repeat the straight one bit for bit and a 2-process run see the same
global batch as a 1-process run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data set that cannot be trained on: missing folder, empty class, corrupt image."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run seed, epoch, sample), mixed so that neighbours differ."""
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2 ** 64 - 1)
    h ^= h >> 31
    return h & (2 ** 63 - 1)


class Seeded(Dataset):
    """Wrap a data set so that ``transform(sample)`` draws from a per-sample seeded RNG.

    torchvision's transforms draw from torch's global generator; the draw happens inside
    ``torch.random.fork_rng`` so the caller's global RNG state is left untouched.
    ``set_epoch(e)`` changes the draws from one epoch to the next.
    """

    def __init__(self, base: Dataset, transform: Callable | None, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0
        self.classes = getattr(base, "classes", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if self.transform is None:
            return image, label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.transform(image), label


class TensorImages(Dataset):
    """Images already in memory: (N, C, H, W) float in [0, 1] and (N,) long labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            raise DataError(f"TensorImages: expected images (N, C, H, W) and labels (N,), "
                            f"got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


# --------------------------------------------------------------------------- digits
def load_digits_tensors(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes),
    upsampled bilinearly to ``size`` x ``size``: (1797, 1, size, size) float in [0, 1], (1797,) long."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the train extra installs it
        raise DataError("the embedded data set is scikit-learn's digits: pip install 'ascan[train]' "
                        f"(or scikit-learn) ({e})") from None
    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return images, torch.as_tensor(d.target, dtype=torch.long)


def stratified_split(labels: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held-out): ``holdout`` of every class held out, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(holdout * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def digits(size: int = 32, holdout: float = 0.2, seed: int = 0) -> tuple[TensorImages, TensorImages]:
    """The embedded default data set: (train, held-out) of the digits at ``size``^2, one channel.

    With the defaults: 1,437 training and 360 held-out images, the same split every time."""
    images, labels = load_digits_tensors(size)
    tr, ho = stratified_split(labels, holdout, seed)
    classes = [str(i) for i in range(10)]
    return TensorImages(images[tr], labels[tr], classes), TensorImages(images[ho], labels[ho], classes)


# --------------------------------------------------------------------------- image folders
def check_image_folder(root: str | os.PathLike) -> list[str]:
    """The class names of an ImageFolder tree, or a DataError saying what is wrong with it."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data folder {str(root)!r} has no class folders: expected {root}/<class>/<image> "
                        "(torchvision ImageFolder layout)")
    empty = [c for c in classes if not any(f.suffix.lower() in IMAGE_EXTENSIONS
                                           for f in (root / c).rglob("*") if f.is_file())]
    if empty:
        raise DataError(f"data folder {str(root)!r}: class folder(s) {', '.join(map(repr, empty))} hold no images "
                        f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return classes


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt or unreadable image {path!r}: {e}") from None


def image_folder(root: str | os.PathLike):
    """torchvision ``ImageFolder`` over ``root`` after :func:`check_image_folder`; a corrupt
    image raises a DataError naming the file when it is loaded."""
    from torchvision.datasets import ImageFolder
    check_image_folder(root)
    return ImageFolder(str(root), loader=_load_image)


def split_image_folder(root: str | os.PathLike, holdout: float, seed: int):
    """(train, held-out) from ``root/train`` + ``root/val`` when both exist, else a stratified
    ``holdout`` split of ``root`` itself."""
    from torch.utils.data import Subset
    root = Path(root)
    val_dir = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train, held = image_folder(root / "train"), image_folder(val_dir)
        if train.classes != held.classes:
            raise DataError(f"{root}: train/ and {val_dir.name}/ have different classes")
        return train, held
    full = image_folder(root)
    tr, ho = stratified_split(torch.as_tensor(full.targets), holdout, seed)
    train, held = Subset(full, tr.tolist()), Subset(full, ho.tolist())
    train.classes = held.classes = full.classes
    return train, held


# --------------------------------------------------------------------------- transforms
def image_transforms(size: int, train: bool, digits_like: bool, mean, std):
    """torchvision transforms v2: train = random resized crop (+ flip for natural images;
    digits get a small random affine instead, since a mirrored digit is another glyph);
    eval = resize + center crop. Output float32 (C, size, size), normalised."""
    from torchvision.transforms import v2
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if digits_like:
        aug = [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))] if train else []
        return v2.Compose(aug + tail)
    if train:
        return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] + tail)
    return v2.Compose([v2.ToImage(), v2.Resize(int(round(size / 0.875)), antialias=True), v2.CenterCrop(size)] + tail)


# --------------------------------------------------------------------------- sampling
class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (``skip`` samples of this
    rank's share), so a resumed run continues the interrupted epoch's order."""

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        it = list(super().__iter__())
        return iter(it[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Evaluation split: every sample exactly once over the ranks (no padding duplicates)."""
    return list(range(rank, n, world))
