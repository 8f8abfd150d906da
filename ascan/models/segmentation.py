"""AsCAN for semantic segmentation: the classifier's backbone + a UperNet-style head.

The paper reports ADE20K results with an AsCAN backbone (abstract, arXiv 2411.04967)
but the head is not available to us; UperNet (Xiao et al. 2018) is the standard head
for hybrid backbones on ADE20K (Swin, ConvNeXt, MaxViT all report UperNet numbers), so
that is what we build:

* Backbone: :class:`ascan.AsCAN` with ``num_classes=0`` (the same modules, parameter
  names and fused/eager split as the classifier), returning its four stage outputs at
  strides 4, 8, 16, 32 (the stem has stride 4). Its classification-only parts (final
  LayerNorm, dropout, linear head) are replaced by identities so every parameter gets a
  gradient; :meth:`AsCANSegmenter.load_backbone` loads a classifier checkpoint.
* PPM on the stride-32 map: adaptive average pooling to 1x1, 2x2, 3x3, 6x6 bins, a 1x1
  conv per bin, bilinear upsampling back, concat with the map, 3x3 conv ("bottleneck").
* FPN: 1x1 lateral convs on stages 1-3, a top-down path adding the bilinearly
  upsampled coarser level, a 3x3 conv per level; all four levels upsampled to stride 4,
  concatenated and fused by a 3x3 conv; dropout; a 1x1 classifier conv; the logits are
  upsampled bilinearly to the input resolution.

Our choices:

* Every head conv is :class:`ascan.layers.ConvBN` (conv + BatchNorm), so the fused
  model runs ``conv_bn_gelu`` / ``conv_bn_add`` with BN folded in eval, exactly as the
  backbone does. **Activation: GELU** (UperNet uses ReLU) because the backbone uses it
  and ``conv_bn_gelu`` is the fused op that exists.
* **Laterals have no activation** (the original FPN's plain 1x1 laterals; mmseg adds a
  ReLU): then "lateral(x) + upsample(coarser)" is exactly ``conv_bn_add``, one fused op.
* **Head width 256** for ascan_t/ascan_s (mmseg's UperNet uses 512 for Swin-T). The
  head runs at stride 4, where its cost grows with the square of the width: at 512^2
  ascan_t's backbone is 20 GMACs, a width-512 head adds 211 (the stride-4 fusing 3x3
  conv over 4 x 512 channels alone is 155), a width-256 head 53 (73 in all, measured
  by :func:`ascan.complexity.segmentation_summary`). We take the 3x cheaper model over the wider head's
  capacity for a tiny variant; ``head_channels=512`` gives mmseg's setting.
* Dropout 0.1 before the classifier, as in mmseg's decode heads (``drop_rate``).

Inputs: (B, in_chans, H, W) floating point, H and W multiples of 32 (the PPM pools
adaptively, so any such size works). Training needs B >= 2: the PPM's 1x1 branch
normalises one value per channel per sample.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_image
from ..layers import ConvBN
from .classifier import CONFIGS, AsCAN, AsCANConfig, _init_weights
from .registry import register_model

PPM_BINS = (1, 2, 3, 6)
STRIDES = (4, 8, 16, 32)


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size); align_corners=False as in mmseg."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PPM(nn.Module):
    """Pyramid pooling on the last stage: (B, in_chs, h, w) -> (B, channels, h, w).

    Each bin size b pools to (b, b), projects with a 1x1 conv+BN+GELU and is upsampled
    back to (h, w); the map and the branches are concatenated and fused by a 3x3
    conv+BN+GELU.
    """

    def __init__(self, in_chs: int, channels: int, bins: tuple[int, ...] = PPM_BINS, fused: bool = False):
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(ConvBN(in_chs, channels, 1, act="gelu", fused=fused) for _ in bins)
        self.bottleneck = ConvBN(in_chs + len(bins) * channels, channels, 3, act="gelu", fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [_resize(branch(F.adaptive_avg_pool2d(x, b)), size)
                      for b, branch in zip(self.bins, self.branches)]
        return self.bottleneck(torch.cat(outs, dim=1))


class UperHead(nn.Module):
    """UperNet decode head: four stage maps -> (B, num_classes, H/4, W/4) logits.

    features: [(B, in_chs[i], H/s, W/s) for s in (4, 8, 16, 32)].
    """

    def __init__(self, in_chs: tuple[int, ...], channels: int, num_classes: int,
                 drop_rate: float = 0.1, fused: bool = False):
        super().__init__()
        self.ppm = PPM(in_chs[-1], channels, fused=fused)
        # act="none" so lateral + upsampled coarser level is one conv_bn_add.
        self.laterals = nn.ModuleList(ConvBN(c, channels, 1, act="none", fused=fused) for c in in_chs[:-1])
        self.fpn_convs = nn.ModuleList(ConvBN(channels, channels, 3, act="gelu", fused=fused)
                                       for _ in in_chs[:-1])
        self.fuse = ConvBN(len(in_chs) * channels, channels, 3, act="gelu", fused=fused)
        self.drop = nn.Dropout2d(drop_rate)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = self.ppm(feats[-1])
        levels = [top]
        for i in range(len(feats) - 2, -1, -1):  # top-down: stride 16, 8, 4
            top = self.laterals[i](feats[i], residual=_resize(top, feats[i].shape[-2:]))
            levels.insert(0, top)
        outs = [conv(lvl) for conv, lvl in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        x = self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.drop(x))


class AsCANSegmenter(nn.Module):
    """AsCAN backbone + UperNet head for semantic segmentation.

    forward(x: (B, in_chans, H, W) float, H and W multiples of 32)
        -> logits (B, num_classes, H, W), contiguous NCHW, in x's (or autocast's) dtype.
    forward_features(x) -> the four stage maps [(B, dims[i], H/s, W/s) for s in 4, 8, 16, 32]
    (timm's ``features_only``; ``feature_info`` lists their channels and strides).
    """

    def __init__(self, cfg: AsCANConfig, num_classes: int = 150, head_channels: int = 256, in_chans: int = 3,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.1, fused: bool = True):
        super().__init__()
        if num_classes < 1 or head_channels < 1:
            raise ValueError(f"{cfg.name}_seg: num_classes and head_channels must be >= 1, "
                             f"got {num_classes}, {head_channels}")
        self.name = f"{cfg.name}_seg"
        self.cfg = cfg
        self.fused = fused
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = AsCAN(cfg, num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate, fused=fused)
        # Classification-only modules: dropped so no parameter stays without a gradient.
        self.backbone.norm = nn.Identity()
        self.backbone.head_drop = nn.Identity()
        self.feature_info = [dict(num_chs=c, reduction=s, module=f"backbone.stages.{i}")
                             for i, (c, s) in enumerate(zip(cfg.dims, STRIDES))]
        self.decode_head = UperHead(cfg.dims, head_channels, num_classes, drop_rate, fused)
        self.decode_head.apply(_init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        check_image(self.name, x, self.in_chans, self, multiple=32, min_size=32)
        if self.training and x.shape[0] < 2:
            raise ValueError(f"{self.name}: training needs batch >= 2 (BatchNorm on the PPM's 1x1 pooled "
                             f"branch sees one value per channel), got batch {x.shape[0]}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> [(B, dims[i], H/s, W/s) for s in (4, 8, 16, 32)]."""
        self._check_input(x)
        return self.backbone.forward_features(x, return_stages=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.forward_features(x))
        # NCHW before the big upsample: a cheap copy at stride 4 instead of one at full size,
        # and both models return the same (contiguous) layout.
        return _resize(logits.contiguous(), x.shape[-2:])

    def load_backbone(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load a classifier (``build_model(cfg.name)``) state_dict into the backbone,
        ignoring its classification head (``norm.*``, ``head.*``).

        Returns ``load_state_dict``'s ``(missing_keys, unexpected_keys)``. With
        ``strict=True`` any other mismatch raises a ``RuntimeError`` naming the model
        and the keys (a checkpoint of another variant, say)."""
        skip = ("norm.", "head.")
        kept = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
        try:
            return self.backbone.load_state_dict(kept, strict=strict)
        except RuntimeError as e:
            raise RuntimeError(f"{self.name}.load_backbone: the state_dict does not fit the {self.cfg.name} "
                               f"backbone: {e}") from None


def _create(cfg: AsCANConfig, fused: bool, num_classes: int, head_channels: int, in_chans: int,
            drop_path_rate: float, drop_rate: float) -> AsCANSegmenter:
    return AsCANSegmenter(cfg, num_classes=num_classes, head_channels=head_channels, in_chans=in_chans,
                          drop_path_rate=drop_path_rate, drop_rate=drop_rate, fused=fused)


# ascan_t and ascan_s share stage widths (64-512), for which head width 256 is sized.
@register_model
def ascan_t_seg(fused: bool = True, num_classes: int = 150, head_channels: int = 256, in_chans: int = 3,
                drop_path_rate: float = 0.0, drop_rate: float = 0.1) -> AsCANSegmenter:
    """ascan_t backbone + UperNet head (head width 256, ADE20K's 150 classes by default)."""
    return _create(CONFIGS["ascan_t"], fused, num_classes, head_channels, in_chans, drop_path_rate, drop_rate)


@register_model
def ascan_s_seg(fused: bool = True, num_classes: int = 150, head_channels: int = 256, in_chans: int = 3,
                drop_path_rate: float = 0.0, drop_rate: float = 0.1) -> AsCANSegmenter:
    """ascan_s backbone + UperNet head (head width 256, ADE20K's 150 classes by default)."""
    return _create(CONFIGS["ascan_s"], fused, num_classes, head_channels, in_chans, drop_path_rate, drop_rate)
