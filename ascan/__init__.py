"""ascan: AsCAN (Asymmetric Convolution-Attention Networks) models on fused kernels.

    from ascan import build_model, list_models
    model = build_model("ascan_t", fused=True, num_classes=1000).eval()
"""
from . import models as _models  # noqa: F401  (registers every model)
from .classifier import AsCAN
from .config import CONFIGS, AsCANConfig
from .registry import build_model, list_models, register_model

__all__ = ["AsCAN", "AsCANConfig", "CONFIGS", "build_model", "list_models", "register_model"]
