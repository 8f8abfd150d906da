"""Model registrations: one entry per variant config."""
from __future__ import annotations

from .classifier import AsCAN
from .config import CONFIGS, AsCANConfig
from .registry import register_model


def _classifier(cfg: AsCANConfig):
    def build(fused: bool = True, num_classes: int = 1000, in_chans: int = 3,
              drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> AsCAN:
        return AsCAN(cfg, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                     drop_rate=drop_rate, fused=fused)
    build.__doc__ = f"AsCAN classifier {cfg.name}: {cfg.notes}"
    return build


for _cfg in CONFIGS.values():
    register_model(_cfg.name)(_classifier(_cfg))
