"""The AsCAN UNets as diffusers models, and a class-conditional diffusers pipeline.

    from diffusers import DPMSolverMultistepScheduler
    from ascan.integrations.diffusers import AsCANPipeline, AsCANUNet2DModel, ascan_ddim_scheduler
    unet = AsCANUNet2DModel("ascan_unet_c2i_t", num_classes=10, in_channels=1, sample_size=8)
    pipe = AsCANPipeline(unet=unet, scheduler=ascan_ddim_scheduler())
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    images = pipe([3, 7], num_inference_steps=20, output_type="np").images   # (2, 8, 8, 1) in [0, 1]

* :class:`AsCANUNet2DModel` (``ModelMixin`` + ``ConfigMixin``) wraps a registered
  :class:`~ascan.models.unet.AsCANUNet` variant under ``.unet``; its config is the variant
  name plus the arguments ``build_model`` takes, so ``save_pretrained`` writes a
  ``config.json`` + safetensors pair that ``from_pretrained`` rebuilds, fused or not (the
  fused and eager models share their parameters).
* :class:`AsCANPipeline` samples a c2i UNet with any diffusers scheduler and
  classifier-free guidance on the UNet's null class; it has no VAE of its own (``vae``
  is an optional component: without one the samples are the images, in [-1, 1]).
* :func:`ascan_ddim_scheduler`: a ``DDIMScheduler`` on the schedule the UNets train
  with; on it the pipeline reproduces :func:`ascan.generate` (steps dividing 1000).

``import ascan`` never imports this module (diffusers is an optional extra).
"""
from __future__ import annotations

import dataclasses
import inspect

import torch

try:
    from diffusers import ConfigMixin, DDIMScheduler, DiffusionPipeline, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.models.unets.unet_2d import UNet2DOutput
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as e:  # the message says which extra to install, not just "no module"
    raise ImportError("ascan.integrations.diffusers needs diffusers: pip install 'ascan[diffusers]'") from e

from ..models.registry import build_model
from ..models.unet import UNET_CONFIGS, AsCANUNet, UNetConfig

__all__ = ["AsCANUNet2DModel", "AsCANPipeline", "ascan_ddim_scheduler"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _variant(name) -> UNetConfig:
    """The registered UNet config for ``name``; ValueError listing the UNets otherwise."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"AsCANUNet2DModel: unknown UNet variant {name!r}; available: "
                         f"{', '.join(sorted(UNET_CONFIGS))}")
    return UNET_CONFIGS[name]


def _as_batch(name: str, what: str, value, batch: int, device: torch.device) -> torch.Tensor:
    """A number, 0-d, (1,) or (batch,) tensor/array -> (batch,) tensor on ``device``.

    Schedulers hand the UNet one timestep for the whole batch (a 0-d tensor), so scalars
    broadcast; the dtype is kept (AsCANUNet checks it).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: {what} must be a number or a tensor, got {value!r}")
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: {what} must be a number or a tensor, got {type(value).__name__}") from None
    if t.dim() == 0 or tuple(t.shape) == (1,):
        return t.reshape(1).expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name}: {what} must be a number, a 0-d tensor or of shape ({batch},), "
                         f"got {tuple(t.shape)}")
    return t


class AsCANUNet2DModel(ModelMixin, ConfigMixin):
    """A registered AsCAN UNet as a diffusers model (the network is ``self.unet``).

    Config: ``variant`` (an ``ascan_unet_*`` name), ``num_classes`` (c2i; default 1000),
    ``context_dim`` (t2i; default the variant's), ``in_channels`` (4 for SD-style latents,
    1 or 3 for pixels), ``sample_size`` (H = W of the samples, a multiple of 4; what the
    pipeline draws), ``fused`` (ascan_kernels ops or plain PyTorch, same parameters;
    override it at load time: ``from_pretrained(path, fused=False)``).
    """

    @register_to_config
    def __init__(self, variant: str = "ascan_unet_c2i_t", num_classes: int | None = None,
                 context_dim: int | None = None, in_channels: int = 4, sample_size: int = 32, fused: bool = True):
        super().__init__()
        cfg = _variant(variant)
        c2i = cfg.context_dim is None
        if c2i and context_dim is not None:
            raise ValueError(f"AsCANUNet2DModel: {variant} is class-conditional; it takes num_classes, not context_dim")
        if not c2i and num_classes is not None:
            raise ValueError(f"AsCANUNet2DModel: {variant} is text-to-image; it takes context_dim, not num_classes")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size <= 0 or sample_size % 4:
            raise ValueError(f"AsCANUNet2DModel: {variant}: sample_size must be a positive multiple of 4, "
                             f"got {sample_size!r}")
        if c2i:
            num_classes = 1000 if num_classes is None else num_classes
            self.unet = build_model(variant, fused=fused, num_classes=num_classes, in_channels=in_channels)
        else:
            context_dim = cfg.context_dim if context_dim is None else context_dim
            self.unet = build_model(variant, fused=fused, context_dim=context_dim, in_channels=in_channels)
        # record the resolved defaults, so the saved config.json says what was built
        self.register_to_config(num_classes=num_classes, context_dim=context_dim)

    @classmethod
    def from_unet(cls, unet: AsCANUNet, sample_size: int = 32) -> "AsCANUNet2DModel":
        """Wrap a built (e.g. trained) :class:`AsCANUNet` of a registered variant.

        The weights are copied; the result is on the UNet's device and dtype. A UNet
        built from a custom ``UNetConfig`` has no variant name to save and is refused.
        """
        if not isinstance(unet, AsCANUNet):
            raise TypeError(f"AsCANUNet2DModel.from_unet: expected an AsCANUNet, got {type(unet).__name__}")
        cfg = unet.cfg
        base = UNET_CONFIGS.get(cfg.name)
        if base is None or dataclasses.replace(base, in_channels=cfg.in_channels, context_dim=cfg.context_dim) != cfg:
            raise ValueError(f"AsCANUNet2DModel.from_unet: {cfg.name} is not a registered UNet variant "
                             f"(only in_channels / context_dim may differ from one)")
        model = cls(variant=cfg.name, num_classes=unet.num_classes,
                    context_dim=cfg.context_dim if unet.num_classes is None else None,
                    in_channels=cfg.in_channels, sample_size=sample_size, fused=unet.fused)
        p = next(unet.parameters())
        model.unet.load_state_dict(unet.state_dict())
        return model.to(device=p.device, dtype=p.dtype)

    @property
    def is_class_conditional(self) -> bool:
        return self.unet.num_classes is not None

    @property
    def null_class(self) -> int | None:
        """The class id classifier-free guidance uses as "no class" (``num_classes``); None for t2i."""
        return self.unet.null_class

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                class_labels=None, encoder_attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predicted noise for ``sample`` (B, in_channels, H, W) float at ``timestep``.

        ``timestep``: a number, a 0-d tensor or (B,) (training steps 0..999; floats are
        fine, the time features are sinusoidal). c2i: ``class_labels`` (B,) int (or one
        id for the batch) in [0, num_classes], ``num_classes`` = :attr:`null_class`. t2i:
        ``encoder_hidden_states`` (B, L, context_dim) and optionally
        ``encoder_attention_mask`` (B, L), bool or 1/0 (1 = real token). Returns
        ``UNet2DOutput(sample=(B, in_channels, H, W))``, or a 1-tuple with ``return_dict=False``.
        """
        name = self.config.variant
        if not isinstance(sample, torch.Tensor) or sample.dim() != 4:
            got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"{name}: expected sample (B, {self.config.in_channels}, H, W), got {got}")
        B, device = sample.shape[0], sample.device
        t = _as_batch(name, "timestep", timestep, B, device)
        if self.is_class_conditional:
            if encoder_hidden_states is not None or encoder_attention_mask is not None:
                raise ValueError(f"{name}: a class-conditional UNet takes class_labels, "
                                 "not encoder_hidden_states / encoder_attention_mask")
            if class_labels is None:
                raise ValueError(f"{name}: a class-conditional UNet needs class_labels (B,) in "
                                 f"[0, {self.null_class}] ({self.null_class} = null class)")
            cond, mask = _as_batch(name, "class_labels", class_labels, B, device), None
        else:
            if class_labels is not None:
                raise ValueError(f"{name}: a text-to-image UNet takes encoder_hidden_states, not class_labels")
            cond, mask = encoder_hidden_states, encoder_attention_mask
            if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
                mask = mask != 0  # diffusers' 1/0 "keep" masks; AsCANUNet wants True = real token
        out = self.unet(sample, t, cond, mask)  # AsCANUNet checks shapes, dtypes, devices and ranges
        return UNet2DOutput(sample=out) if return_dict else (out,)


def ascan_ddim_scheduler(**overrides) -> DDIMScheduler:
    """A ``DDIMScheduler`` on the AsCAN noise schedule (:mod:`ascan.sampling`): scaled-linear
    betas 0.00085..0.012 over 1000 steps, epsilon prediction, no clipping, the last step
    to alpha = 1, "trailing" timesteps (999, 999 - 1000/n, ...). With ``n`` dividing 1000
    those are :func:`ascan.generate`'s timesteps, so the pipeline reproduces it; other
    ``n`` round differently by up to one step. ``overrides`` go to the scheduler."""
    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
               timestep_spacing="trailing")
    return DDIMScheduler(**{**cfg, **overrides})


class AsCANPipeline(DiffusionPipeline):
    """Class-conditional sampling of an :class:`AsCANUNet2DModel` with any diffusers scheduler.

    Components: ``unet`` (a c2i AsCANUNet2DModel), ``scheduler`` (any epsilon-prediction
    diffusers scheduler; :func:`ascan_ddim_scheduler` is the one the UNets train on) and
    an optional ``vae`` (None: the UNet samples pixels in [-1, 1]; otherwise a diffusers
    autoencoder whose ``decode`` turns the latents into images).
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet: AsCANUNet2DModel, scheduler, vae=None):
        super().__init__()
        if not isinstance(unet, AsCANUNet2DModel):
            raise TypeError(f"AsCANPipeline: unet must be an AsCANUNet2DModel, got {type(unet).__name__}")
        if not unet.is_class_conditional:
            raise ValueError(f"AsCANPipeline: {unet.config.variant} is text-to-image; this pipeline is "
                             "class-conditional (use an ascan_unet_c2i_* variant)")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        # do_normalize: the model's [-1, 1] samples (or the VAE's decodes) -> [0, 1] images
        self.image_processor = VaeImageProcessor(do_normalize=True)

    def _class_ids(self, class_labels) -> torch.Tensor:
        """int, list of ints or (B,) int tensor -> (B,) int64 on the CPU, in [0, num_classes]."""
        name = f"AsCANPipeline ({self.unet.config.variant})"
        y = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels).cpu()
        if y.dim() != 1 or y.numel() == 0 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name}: class_labels must be an int, a list of ints or a (B,) integer tensor, "
                             f"got shape {tuple(y.shape)} and dtype {y.dtype}")
        # checked here, on the CPU: on an accelerator an out-of-range id is a device-side assert
        n = self.unet.null_class
        if int(y.min()) < 0 or int(y.max()) > n:
            raise ValueError(f"{name}: class ids must be in [0, {n}] ({n} = null class), "
                             f"got range [{int(y.min())}, {int(y.max())}]")
        return y.long()

    def _step_kwargs(self, generator, eta: float) -> dict:
        """The optional arguments this scheduler's ``step`` takes (DDIM: eta; ancestral ones: generator)."""
        params = inspect.signature(self.scheduler.step).parameters
        kw = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale: float = 4.0, num_inference_steps: int = 50,
                 generator: torch.Generator | list[torch.Generator] | None = None, eta: float = 0.0,
                 output_type: str = "pil", return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Sample one image per class id.

        ``class_labels``: int, list of ints or (B,) tensor in [0, num_classes] (the null
        class gives an unconditional sample). ``guidance_scale`` s: eps = eps_null +
        s (eps_class - eps_null), both halves in one UNet batch; s = 1 runs the class alone
        (as :func:`ascan.generate`). ``generator`` seeds the initial noise (and any
        stochastic scheduler). ``eta``: DDIM's noise level (schedulers without it ignore it).
        ``output_type``: "pil" (list of PIL images), "np" (B, H, W, C) float32 in [0, 1],
        "pt" (B, C, H, W) float32 in [0, 1], "latent" (B, C, h, w) float32, the raw samples
        (undecoded; unclamped). Returns ``ImagePipelineOutput(images=...)`` or ``(images,)``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"AsCANPipeline: output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        prediction = getattr(self.scheduler.config, "prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"AsCANPipeline: the AsCAN UNets predict the noise; the scheduler is set to "
                             f"prediction_type={prediction!r}: use prediction_type='epsilon'")
        unet, device = self.unet, self._execution_device
        y = self._class_ids(class_labels).to(device)
        B, C, size = y.shape[0], unet.config.in_channels, unet.config.sample_size
        guided = guidance_scale != 1.0
        y_in = torch.cat([y, torch.full_like(y, unet.null_class)]) if guided else y

        # float32 noise and scheduler state whatever the UNet's dtype (what ascan.generate does)
        x = randn_tensor((B, C, size, size), generator=generator, device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = self.scheduler.scale_model_input(x, t)
            x_in = torch.cat([x_in, x_in]) if guided else x_in
            eps = unet(x_in.to(unet.dtype), t, class_labels=y_in).sample.float()
            if guided:
                e_c, e_u = eps.chunk(2)
                eps = e_u + guidance_scale * (e_c - e_u)
            x = self.scheduler.step(eps, t, x, **step_kwargs).prev_sample

        if output_type == "latent":
            images = x
        else:
            if self.vae is not None:
                vcfg = self.vae.config
                z = x / vcfg.scaling_factor + (getattr(vcfg, "shift_factor", None) or 0.0)
                x = self.vae.decode(z.to(self.vae.dtype)).sample.float()
            images = self.image_processor.postprocess(x, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
