"""ascan: AsCAN (Asymmetric Convolution-Attention Networks) models on fused kernels.

    from ascan import build_model, list_models
    model = build_model("ascan_t", fused=True, num_classes=1000).eval()
    unet = build_model("ascan_unet_c2i_s", num_classes=1000).eval()
    latents = generate(unet, y=torch.tensor([207, 360]), steps=50, guidance_scale=4.0, seed=0)
"""
from ascan_kernels._version import __version__

from . import models as _models  # noqa: F401  (registers every model)
from . import unet as _unet  # noqa: F401  (registers the UNets)
from . import segmentation as _segmentation  # noqa: F401  (registers the segmenters)
from .classifier import AsCAN
from .config import CONFIGS, AsCANConfig
from .registry import build_model, list_models, register_model
from .sampling import generate
from .segmentation import AsCANSegmenter
from .unet import UNET_CONFIGS, AsCANUNet, UNetConfig

__all__ = ["__version__", "AsCAN", "AsCANConfig", "CONFIGS", "build_model", "list_models", "register_model",
           "AsCANUNet", "UNetConfig", "UNET_CONFIGS", "generate",
           "AsCANSegmenter"]
