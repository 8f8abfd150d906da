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

import dataclasses

import torch
import torch.nn as nn

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

    (B, in_chs, H, W) -> (B, dim, H/stride, W/stride).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.conv_blocks:
            x = blk(x)
        if len(self.transformer_blocks):
            B, C, H, W = x.shape
            # On a channels_last map this view is already contiguous (B, HW, C) tokens.
            t = x.flatten(2).transpose(1, 2)
            for blk in self.transformer_blocks:
                t = blk(t)
            x = t.transpose(1, 2).reshape(B, C, H, W)
        return x


class AsCAN(nn.Module):
    """AsCAN classifier (timm-style: ``forward_features`` + ``forward_head``).

    forward(x: (B, in_chans, H, W) float) -> logits (B, num_classes). H and W must be
    at least 32 (the network's total stride). ``num_classes=0`` gives pooled features.
    """

    def __init__(self, cfg: AsCANConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, fused: bool = True):
        super().__init__()
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"{cfg.name}: num_classes must be >= 0 and in_chans >= 1, "
                             f"got {num_classes}, {in_chans}")
        self.cfg = cfg
        self.fused = fused
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = cfg.dims[-1]
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
        """(B, in_chans, H, W) -> (B, dims[-1], H/32, W/32); with ``return_stages`` the list
        of the four stage outputs (strides 4, 8, 16, 32)."""
        self._check_input(x)
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs if return_stages else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes) logits (or (B, C) with ``pre_logits``)."""
        x = self.norm(x.mean(dim=(2, 3)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# --------------------------------------------------------------------------- variants
def _create(cfg: AsCANConfig, fused: bool, num_classes: int, in_chans: int, drop_path_rate: float,
            drop_rate: float) -> AsCAN:
    return AsCAN(cfg, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                 drop_rate=drop_rate, fused=fused)


@register_model
def ascan_t(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0) -> AsCAN:
    """AsCAN-T: 5+1 C blocks in stages 1-3, 4+2 T blocks in stages 3-4 (``ASCAN_T``; sizes in the README)."""
    return _create(ASCAN_T, fused, num_classes, in_chans, drop_path_rate, drop_rate)


@register_model
def ascan_s(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0) -> AsCAN:
    """AsCAN-S: tiny's widths, deeper stages 2-4 (stage 3 is 2 C + 8 T; ``ASCAN_S``)."""
    return _create(ASCAN_S, fused, num_classes, in_chans, drop_path_rate, drop_rate)


@register_model
def ascan_b(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0) -> AsCAN:
    """AsCAN-B: small's layout at 1.5x width (``ASCAN_B``)."""
    return _create(ASCAN_B, fused, num_classes, in_chans, drop_path_rate, drop_rate)


@register_model
def ascan_l(fused: bool = True, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
            drop_rate: float = 0.0) -> AsCAN:
    """AsCAN-L: 2x tiny's widths, stage 3 is 2 C + 12 T, stage 4 is 5 T (``ASCAN_L``)."""
    return _create(ASCAN_L, fused, num_classes, in_chans, drop_path_rate, drop_rate)
