"""ascan: AsCAN (Asymmetric Convolution-Attention Networks) models on fused kernels.

    from ascan import build_model, list_models
    model = build_model("ascan_t", fused=True, num_classes=1000).eval()
    unet = build_model("ascan_unet_c2i_s", num_classes=1000).eval()
    latents = generate(unet, y=torch.tensor([207, 360]), steps=50, guidance_scale=4.0, seed=0)

The layout: ``models/`` (one file per family, one registration per variant), ``layers``
(the blocks and the leaf layers that own the fused switch), ``checks`` (input checks the
models share), ``sampling`` (DDIM + classifier-free guidance), ``complexity`` (params and
MACs), ``train/`` (``fit``, ``fit_diffusion``, ``validate``: imported on demand, it needs
the ``train`` extra), ``cli/`` (``python -m ascan ...``), ``integrations/`` (timm's registry,
diffusers).

With timm installed the classifiers join timm's model registry (``timm.create_model("ascan_t")``)
as soon as timm is imported, before or after ascan; ``import ascan`` does not import timm
(``ascan.integrations.timm.status()`` says whether they are registered, and if not why).
"""
import importlib.util

from ascan_kernels._version import __version__

from .models import (UNET_CONFIGS, AsCAN, AsCANConfig, AsCANSegmenter, AsCANUNet, CONFIGS, UNetConfig, build_model,
                     list_models, register_model)
from .sampling import generate


def _timm_spec():
    try:
        return importlib.util.find_spec("timm")
    except (ImportError, ValueError):  # a module without a spec in sys.modules (a mock, a failed import)
        return None


# Without timm nothing of the integration is imported; with it, registration waits for
# timm's own import (importing timm here would cost seconds: torchvision, torch._dynamo).
if _timm_spec() is not None:
    from .integrations import timm as _timm_integration

    _timm_integration.register_when_timm_is_imported()

__all__ = ["__version__", "AsCAN", "AsCANConfig", "CONFIGS", "build_model", "list_models", "register_model",
           "AsCANUNet", "UNetConfig", "UNET_CONFIGS", "generate", "AsCANSegmenter"]
