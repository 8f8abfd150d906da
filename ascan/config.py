"""Variant configs for the AsCAN classifiers: one frozen dataclass per variant, as data.

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
