"""The AsCAN image classifier: variant configs, stages, the model, one registration per variant.

The configs are frozen dataclasses, one per variant, as data.

What the paper fixes (abstract and Fig. 2 caption, arXiv 2411.04967): a convolutional
stem, four stages, pooling and a classifier; C and T blocks in every variant, with
**more C blocks in the early stages and more T blocks in the late stages**; plain
global attention. What it does not give us (the body is not available to us): depths,
widths, expansion ratios. Those choices are ours and are explained here.

Shared choices (all variants)
* Stem: two 3x3 stride-2 conv+BN+GELU layers (stride 4), as in CoAtNet/MaxViT, so
  stage 1 sees 56x56 at 224^2.
* Stage s >= 2 halves the resolution: by a stride-2 first C block when the stage
  starts with C, else by a 3x3 stride-2 conv+BN ("downsample") before its T blocks.
* C block: FusedMBConv (3x3 expand, ratio 4 of the input width, BN, GELU, 1x1 project,
  BN, residual) - cheap on CPUs/GPUs at high resolution where attention is costly.
* T block: pre-norm global MHSA with head dim 32, MLP ratio 4, GELU.
* Within a stage C blocks precede T blocks, so a stage converts to tokens once.
* Layout strings read block by block: "CCTTT" = two C blocks, then three T blocks.

Per-variant choices: the layouts grow the late, low-resolution stages (where T blocks
are cheap in MACs: at 14x14 a T block costs about a third of a C block of the same
width) and widen the channels, as hybrid families (CoAtNet-0..3, MaxViT-T..L) do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..checks import check_batch_norm_batch, check_image
from ..layers import CBlock, ConvBN, LayerNorm, TBlock
from .registry import register_model


@dataclasses.dataclass(frozen=True)
class AsCANConfig:
    """One AsCAN classifier variant.

    dims: channels of the four stages; layouts: block types per stage ("C"/"T");
    stem_chs: channels of the two stem convs; head_dim: attention head width;
    expand_ratio: C block hidden width / input width; mlp_ratio: T block MLP width / dim.
    """

    name: str
    dims: tuple[int, int, int, int]
    layouts: tuple[str, str, str, str]
    stem_chs: tuple[int, int]
    head_dim: int = 32
    expand_ratio: float = 4.0
    mlp_ratio: float = 4.0
    notes: str = ""

    def __post_init__(self) -> None:
        if len(self.dims) != 4 or len(self.layouts) != 4:
            raise ValueError(f"{self.name}: AsCAN has four stages")
        for i, layout in enumerate(self.layouts):
            if not layout or set(layout) - {"C", "T"}:
                raise ValueError(f"{self.name}: stage {i + 1} layout {layout!r} must be a non-empty C/T string")
            if "TC" in layout:
                raise ValueError(f"{self.name}: stage {i + 1} layout {layout!r}: C blocks must precede T blocks")
        for d in self.dims:
            if d % self.head_dim:
                raise ValueError(f"{self.name}: width {d} is not a multiple of head_dim {self.head_dim}")

    @property
    def num_c(self) -> tuple[int, ...]:
        return tuple(s.count("C") for s in self.layouts)

    @property
    def num_t(self) -> tuple[int, ...]:
        return tuple(s.count("T") for s in self.layouts)


ASCAN_T = AsCANConfig(
    name="ascan_t",
    dims=(64, 128, 256, 512),
    layouts=("CC", "CCC", "CTTTT", "TT"),
    stem_chs=(32, 64),
    notes="Tiny: 5+1 C in stages 1-3, 4+2 T in stages 3-4; sized near CoAtNet-0/MaxViT-T MACs.",
)

ASCAN_S = AsCANConfig(
    name="ascan_s",
    dims=(64, 128, 256, 512),
    layouts=("CC", "CCCC", "CCTTTTTTTT", "TTTT"),
    stem_chs=(32, 64),
    notes="Small: tiny's widths, deeper stages 2-4 (stage 3 is 2 C + 8 T).",
)

ASCAN_B = AsCANConfig(
    name="ascan_b",
    dims=(96, 192, 384, 768),
    layouts=("CC", "CCCC", "CCTTTTTTTT", "TTTT"),
    stem_chs=(48, 96),
    notes="Base: small's layout at 1.5x width (head count grows with width; head dim stays 32).",
)

ASCAN_L = AsCANConfig(
    name="ascan_l",
    dims=(128, 256, 512, 1024),
    layouts=("CC", "CCCCC", "CCTTTTTTTTTTTT", "TTTTT"),
    stem_chs=(64, 128),
    notes="Large: 2x tiny's widths, stage 3 is 2 C + 12 T, stage 4 is 5 T.",
)

CONFIGS: dict[str, AsCANConfig] = {c.name: c for c in (ASCAN_T, ASCAN_S, ASCAN_B, ASCAN_L)}


class Stage(nn.Module):
    """One stage: optional downsample, C blocks on (B, C, H, W), then T blocks on tokens.

    (B, in_chs, H, W) -> (B, dim, H/stride, W/stride). With ``grad_checkpointing`` each
    block's activations are recomputed in backward instead of kept (less memory, one
    more forward per block).
    """

    def __init__(self, in_chs: int, dim: int, layout: str, stride: int, cfg: AsCANConfig,
                 drop_paths: list[float], fused: bool):
        super().__init__()
        n_c = layout.count("C")
        # A stage that starts with T blocks downsamples with a strided 3x3 conv+BN.
        self.downsample = (ConvBN(in_chs, dim, 3, stride, act="none", fused=fused)
                           if n_c == 0 and (stride != 1 or in_chs != dim) else None)
        c_in = dim if self.downsample is not None else in_chs
        self.conv_blocks = nn.ModuleList()
        for i in range(n_c):
            self.conv_blocks.append(CBlock(c_in if i == 0 else dim, dim, stride if i == 0 else 1,
                                           cfg.expand_ratio, drop_paths[i], fused))
        self.transformer_blocks = nn.ModuleList(
            TBlock(dim, cfg.head_dim, cfg.mlp_ratio, drop_paths[i], fused) for i in range(n_c, len(layout))
        )
        self.grad_checkpointing = False

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Without autograd there is nothing to save, so checkpointing would only cost time.
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return blk(x)
        if torch.compiler.is_compiling():
            # torch.compile recomputes inside its own graph, where buffer updates happen once
            # (and it takes no context managers here).
            return checkpoint(blk, x, use_reentrant=False)
        return checkpoint(blk, x, use_reentrant=False, context_fn=functools.partial(_recompute_contexts, blk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.conv_blocks:
            x = self._block(blk, x)
        if len(self.transformer_blocks):
            B, C, H, W = x.shape
            # On a channels_last map this view is already contiguous (B, HW, C) tokens.
            t = x.flatten(2).transpose(1, 2)
            for blk in self.transformer_blocks:
                t = self._block(blk, t)
            x = t.transpose(1, 2).reshape(B, C, H, W)
        return x


@contextlib.contextmanager
def _bn_stats_frozen(module: nn.Module):
    """BatchNorm in training mode normalises with the batch's statistics either way, but the
    recompute of a checkpointed block must not fold the same batch into the running
    statistics a second time: momentum 0 leaves them as they are, and the batch count is
    put back (both the eager and the fused ConvBN read ``momentum`` and bump that count)."""
    bns = [m for m in module.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            with torch.no_grad():
                m.num_batches_tracked.copy_(count)


def _recompute_contexts(blk: nn.Module):
    """``context_fn`` for ``torch.utils.checkpoint``: (first forward, recompute) contexts."""
    return contextlib.nullcontext(), _bn_stats_frozen(blk)


# The data pipeline ascan.train evaluates with: ImageNet mean/std, resize to size / 0.875
# then centre crop, bilinear (torchvision's default), 224^2.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDES = (4, 8, 16, 32)  # of the four stage outputs
GLOBAL_POOLS = ("avg", "")


def default_pretrained_cfg(cfg: AsCANConfig) -> dict:
    """timm's ``pretrained_cfg`` for a variant, as a plain dict of timm's keys.

    No weights exist for any AsCAN variant (no ``url``, ``file`` or ``hf_hub_id``), so this
    describes the model's defaults: the 1000-class head, the 224^2 input, and the
    preprocessing ``ascan.train`` evaluates with. ``pool_size`` is the (h, w) of
    ``forward_features`` at ``input_size``; ``first_conv``/``classifier`` name the modules whose
    ``.weight`` timm adapts for ``in_chans``/``num_classes``.
    """
    size = 224
    return dict(
        architecture=cfg.name, num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
        min_input_size=(3, 32, 32), fixed_input_size=False, crop_pct=0.875, crop_mode="center",
        interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="stem.0.conv",
        classifier="head", license="apache-2.0", paper_name="AsCAN: Asymmetric Convolution-Attention Networks "
        "for Efficient Recognition and Generation", paper_ids="arXiv:2411.04967",
        notes=("No pretrained weights exist for AsCAN: every model starts from random initialisation.",),
    )


def _take_indices(name: str, n: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's ``indices`` convention over ``n`` stages: None = all, an int k = the last k, a
    sequence = those (negative from the end). Returns (sorted stage indices, the largest)."""
    if indices is None:
        take = list(range(n))
    elif isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"{name}: indices={indices} asks for the last {indices} stages; there are {n}")
        take = list(range(n - indices, n))
    else:
        take = []
        for i in indices:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise ValueError(f"{name}: stage index {i} is out of range for {n} stages (0..{n - 1})")
            take.append(j)
        if not take:
            raise ValueError(f"{name}: indices is empty; pass None for every stage")
        take = sorted(set(take))
    return take, max(take)


class AsCAN(nn.Module):
    """AsCAN classifier, with timm's model contract (plain PyTorch: timm is not needed).

    forward(x: (B, in_chans, H, W) float) -> logits (B, num_classes). H and W must be
    at least 32 (the network's total stride). ``num_classes=0`` gives pooled features
    (B, num_features); ``global_pool=""`` (with ``num_classes=0``) the unpooled map.

    timm's contract: ``pretrained_cfg``/``default_cfg``, ``feature_info`` (the four stage
    outputs), ``forward_features``/``forward_head``, ``forward_intermediates``,
    ``prune_intermediate_layers``, ``reset_classifier``/``get_classifier``,
    ``set_grad_checkpointing``, ``group_matcher``, ``no_weight_decay``.
    """

    def __init__(self, cfg: AsCANConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, fused: bool = True,
                 global_pool: str = "avg"):
        super().__init__()
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"{cfg.name}: num_classes must be >= 0 and in_chans >= 1, "
                             f"got {num_classes}, {in_chans}")
        _check_head(cfg.name, num_classes, global_pool)
        self.cfg = cfg
        self.fused = fused
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = cfg.dims[-1]
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"stages.{i}")
                             for i, (c, r) in enumerate(zip(cfg.dims, STRIDES))]
        self.pretrained_cfg = default_pretrained_cfg(cfg)
        self.default_cfg = self.pretrained_cfg  # timm's older name for it
        s0, s1 = cfg.stem_chs
        self.stem = nn.Sequential(ConvBN(in_chans, s0, 3, 2, fused=fused), ConvBN(s0, s1, 3, 2, fused=fused))
        n_blocks = sum(len(s) for s in cfg.layouts)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear decay rule
        stages, prev, k = [], s1, 0
        for i, (dim, layout) in enumerate(zip(cfg.dims, cfg.layouts)):
            stages.append(Stage(prev, dim, layout, 1 if i == 0 else 2, cfg, rates[k:k + len(layout)], fused))
            prev, k = dim, k + len(layout)
        self.stages = nn.ModuleList(stages)
        self.norm = LayerNorm(self.num_features, fused=fused)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        check_image(self.cfg.name, x, self.in_chans, self, min_size=32)
        check_batch_norm_batch(self.cfg.name, x, 32, self)

    def forward_features(self, x: torch.Tensor, return_stages: bool = False):
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32); with ``return_stages`` the list
        of the stage outputs (strides 4, 8, 16, 32)."""
        self._check_input(x)
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs if return_stages else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes) logits (or (B, C) with ``pre_logits``).

        With ``global_pool=""`` nothing is pooled: the LayerNorm acts at every position and
        the result is (B, C, h, w)."""
        if self.global_pool == "avg":
            x = self.norm(x.mean(dim=(2, 3)))
        else:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ----------------------------------------------------------------- timm's contract
    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The stage outputs a detector or segmenter taps, and optionally the final features.

        x: (B, in_chans, H, W). ``indices``: None = every stage, an int k = the last k, a
        sequence = those stages (negative counts from the end); the result lists them in
        stage order, stage i being (B, feature_info[i]["num_chs"], H/r, W/r) with
        r = feature_info[i]["reduction"] (ceil for sizes not divisible by r), or
        (B, H/r, W/r, C) with ``output_fmt="NHWC"``. Returns that list when
        ``intermediates_only`` (stopping after the last stage asked for), else
        ``(forward_features(x), list)``; ``stop_early`` also stops there, and the first item
        is then that last stage's output. ``norm`` changes nothing: AsCAN has no norm
        between the last stage and the pooling (its LayerNorm acts on pooled features, in
        the head), so the intermediates are the stage outputs as they are.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"{self.cfg.name}: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = _take_indices(self.cfg.name, len(self.stages), indices)
        self._check_input(x)
        x = self.stem(x)
        stages = self.stages[:last + 1] if stop_early or intermediates_only else self.stages
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what ``forward_intermediates(indices=...)`` does not need; returns the kept
        stage indices (absolute, so negative ``indices`` stay valid after the cut).

        The stages after the last one asked for go. The head (norm, classifier) goes with
        ``prune_head``, and whenever stages were cut (it is sized for the last stage's
        width); ``prune_norm`` drops the norm alone. ``num_features`` becomes the width of
        the new last stage.
        """
        take, last = _take_indices(self.cfg.name, len(self.stages), indices)
        cut = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_norm or prune_head or cut:
            self.norm = nn.Identity()
        if prune_head or cut:
            self.reset_classifier(0)
        return take

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier: ``nn.Linear(num_features, num_classes)`` on the
        model's device and dtype, or none for ``num_classes=0`` (then ``forward`` returns the
        pooled (B, num_features) features). ``global_pool`` ("avg" or "", which needs
        ``num_classes=0``) replaces the pooling; None keeps it."""
        pool = self.global_pool if global_pool is None else global_pool
        if num_classes < 0:
            raise ValueError(f"{self.cfg.name}: num_classes must be >= 0, got {num_classes}")
        _check_head(self.cfg.name, num_classes, pool)
        self.global_pool = pool
        self.num_classes = num_classes
        like = next(self.stages[-1].parameters())
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
            _init_weights(self.head)
        else:
            self.head = nn.Identity()

    def get_classifier(self) -> nn.Module:
        """The classifier module (``nn.Linear``, or ``nn.Identity`` when ``num_classes=0``)."""
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each C and T block's activations in backward instead of storing them
        (``torch.utils.checkpoint``, non-reentrant; the stem is not checkpointed). Outputs
        and gradients are unchanged, BatchNorm's running statistics too."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (``timm.optim``), in timm's
        format: group name -> a regex, or a list of (regex, ordinal tuple); groups are ordered
        stem, blocks, head. ``coarse``: one group per stage; else one per block (a stage's
        downsample conv joins its first block), in forward order."""
        if coarse:
            blocks = r"^stages\.(\d+)\."
        else:
            # C and T blocks are numbered separately within a stage; the ordinals number
            # every block of the network in forward order.
            blocks, k = [], 0
            for i, stage in enumerate(self.stages):
                if stage.downsample is not None:
                    blocks.append((rf"^stages\.{i}\.downsample\.", (k,)))
                for kind, seq in (("conv_blocks", stage.conv_blocks), ("transformer_blocks", stage.transformer_blocks)):
                    for j in range(len(seq)):
                        blocks.append((rf"^stages\.{i}\.{kind}\.{j}\.", (k,)))
                        k += 1
        return dict(stem=r"^stem\.", blocks=blocks, head=r"^(?:norm|head)\.")

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exempt from weight decay beyond timm's rule (it already exempts
        every bias and 1-D parameter: norms, BN). AsCAN has no position embeddings or
        tokens, so none."""
        return set()


def _check_head(name: str, num_classes: int, global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{name}: global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError(f"{name}: global_pool='' (no pooling) needs num_classes=0; a linear classifier "
                         f"needs pooled features (got num_classes={num_classes})")


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# --------------------------------------------------------------------------- variants
def _create(cfg: AsCANConfig, fused: bool, num_classes: int, in_chans: int, drop_path_rate: float,
            drop_rate: float, global_pool: str) -> AsCAN:
    return AsCAN(cfg, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                 drop_rate=drop_rate, fused=fused, global_pool=global_pool)


@register_model
def ascan_t(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0, global_pool: str = "avg") -> AsCAN:
    """AsCAN-T: 5+1 C blocks in stages 1-3, 4+2 T blocks in stages 3-4 (``ASCAN_T``; sizes in the README)."""
    return _create(ASCAN_T, fused, num_classes, in_chans, drop_path_rate, drop_rate, global_pool)


@register_model
def ascan_s(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0, global_pool: str = "avg") -> AsCAN:
    """AsCAN-S: tiny's widths, deeper stages 2-4 (stage 3 is 2 C + 8 T; ``ASCAN_S``)."""
    return _create(ASCAN_S, fused, num_classes, in_chans, drop_path_rate, drop_rate, global_pool)


@register_model
def ascan_b(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0, global_pool: str = "avg") -> AsCAN:
    """AsCAN-B: small's layout at 1.5x width (``ASCAN_B``)."""
    return _create(ASCAN_B, fused, num_classes, in_chans, drop_path_rate, drop_rate, global_pool)


@register_model
def ascan_l(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0, global_pool: str = "avg") -> AsCAN:
    """AsCAN-L: 2x tiny's widths, stage 3 is 2 C + 12 T, stage 4 is 5 T (``ASCAN_L``)."""
    return _create(ASCAN_L, fused, num_classes, in_chans, drop_path_rate, drop_rate, global_pool)
