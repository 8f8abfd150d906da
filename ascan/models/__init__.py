"""The AsCAN models, one family per file (timm's habit: config dataclasses, the model, and
one ``@register_model`` function per variant): ``classifier`` (ascan_t/s/b/l),
``segmentation`` (ascan_t_seg, ascan_s_seg), ``unet`` (ascan_unet_c2i_*, ascan_unet_t2i_*).
Importing this package registers every variant with :func:`build_model`.
"""
from .classifier import CONFIGS, AsCAN, AsCANConfig
from .registry import build_model, list_models, register_model
from .segmentation import AsCANSegmenter
from .unet import UNET_CONFIGS, AsCANUNet, UNetConfig

__all__ = ["AsCAN", "AsCANConfig", "AsCANSegmenter", "AsCANUNet", "CONFIGS", "UNET_CONFIGS", "UNetConfig",
           "build_model", "list_models", "register_model"]
