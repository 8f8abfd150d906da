"""The AsCAN image classifier: stem, four asymmetric C/T stages, pooling, classifier."""
from __future__ import annotations

import torch
import torch.nn as nn

import ascan_kernels as K

from .checks import check_batch_norm_batch, check_image
from .config import AsCANConfig
from .layers import CBlock, ConvBN, TBlock


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
        self.norm = nn.LayerNorm(self.num_features)
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
        if self.fused:
            # oneDNN runs NHWC natively; converting once here avoids a reorder per conv.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs if return_stages else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes) logits (or (B, C) with ``pre_logits``)."""
        x = x.mean(dim=(2, 3))
        if self.fused:
            x = K.layer_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        else:
            x = self.norm(x)
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
