"""AsCAN UNets for latent diffusion: class-conditional (c2i) and text-to-image (t2i).

Shape, from the paper's Fig. 2(b, c): three Down levels, a middle, three Up levels
that mirror the Down levels ("reverted reflection": Up level i runs Down level i's
layout string reversed), with a skip connection between mirrored levels. The network
is asymmetric like the classifier: the high-resolution level holds C blocks, the
low-resolution levels more T blocks.

Our choices (the paper's body is not available; see ``UNetConfig``):

* Levels: Down level i runs its blocks at width ``channels[i]``; between levels a
  3x3 stride-2 conv halves the resolution and changes the width. Each Down level's
  output is kept as the skip of its mirrored Up level, which concatenates it, merges
  it back to ``channels[i]`` with a 1x1 conv and runs the reversed layout; between Up
  levels nearest-neighbour upsampling and a 3x3 conv. Latents (B, 4, H, W) need H and
  W divisible by 4.
* C block for generation (:class:`GenCBlock`): the classifier's C block (3x3 expand,
  norm, activation, 1x1 project, residual) in pre-norm form with GroupNorm + SiLU,
  as diffusion UNets use, and the time embedding as a per-channel FiLM scale/shift on
  the first normalisation (the fused ``group_norm_silu`` op does GN, FiLM and SiLU in
  one pass).
* T block for generation (:class:`GenTBlock`): self-attention, cross-attention to the
  context (t2i only), MLP, each pre-norm with a LayerNorm whose scale/shift comes
  from the time embedding (adaLN). **Cross-attention reads the queries from the
  image tokens and keys/values from the context tokens.** The seed caption says Q
  comes from the text embedding; taken literally the output would have the text's
  length and could not be added back to the image tokens, so we implement the
  shape-consistent reading.
* Conditioning: sinusoidal time features -> MLP -> time embedding; c2i adds a class
  embedding with an extra *null class* (index ``num_classes``) for classifier-free
  guidance; t2i takes any text encoder's embeddings ``context (B, L, context_dim)``
  with an optional ``context_mask (B, L)`` (True = real token).

``fused=True`` routes the norms, attention and MLP GEMMs through ``ascan_kernels``
ops; ``fused=False`` is the same math in plain PyTorch with identical parameters.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_matches_model
from ..layers import Conv2d, GroupNormSiLU, LayerNorm, LinearGELU, ResidualLinear, SelfAttentionCore
from .registry import register_model


def _tracing() -> bool:
    """True while torch.compile or torch.export traces (data-dependent Python is off-limits)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting()


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """One UNet variant.

    channels: widths of the three levels (highest resolution first); layouts: the Down
    levels' block strings ("C"/"T"), mirrored by the Up levels; mid_layout: the middle;
    head_dim: attention head width; expand_ratio: C block hidden / width; mlp_ratio: T
    block MLP width / width; groups: GroupNorm groups; context_dim: t2i text width
    (None for c2i); time_dim: time-embedding width (default 4 x channels[0]).
    """

    name: str
    channels: tuple[int, int, int]
    layouts: tuple[str, str, str]
    mid_layout: str
    head_dim: int = 64
    expand_ratio: float = 2.0
    mlp_ratio: float = 4.0
    groups: int = 32
    in_channels: int = 4
    context_dim: int | None = None
    time_dim: int | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or len(self.layouts) != 3:
            raise ValueError(f"{self.name}: the UNet has three levels")
        for s in (*self.layouts, self.mid_layout):
            if not s or set(s) - {"C", "T"}:
                raise ValueError(f"{self.name}: layout {s!r} must be a non-empty C/T string")
        for c in self.channels:
            if c % self.groups or c % self.head_dim:
                raise ValueError(f"{self.name}: width {c} must be a multiple of groups={self.groups} "
                                 f"and head_dim={self.head_dim}")

    @property
    def temb_dim(self) -> int:
        return self.time_dim or 4 * self.channels[0]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (B,) timesteps -> (B, dim) float32 (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, L, C) * (1 + scale) + shift with (B, C) shift/scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


class GenCBlock(nn.Module):
    """C block for generation; (B, C, H, W) + temb (B, temb_dim) -> (B, C, H, W).

    ``x + proj(gn_silu(expand(gn_silu(x) * (1 + s) + b)))``: the classifier's C block
    with GroupNorm + SiLU and the time embedding's FiLM on the first norm. The last
    conv starts at zero so a fresh block is the identity (standard for diffusion).
    """

    def __init__(self, dim: int, temb_dim: int, expand_ratio: float, groups: int, fused: bool):
        super().__init__()
        hidden = int(round(dim * expand_ratio))
        self.norm1 = GroupNormSiLU(groups, dim, fused=fused)
        self.film = nn.Linear(temb_dim, 2 * dim)
        self.expand = Conv2d(dim, hidden, 3, padding=1, fused=fused)
        self.norm2 = GroupNormSiLU(groups, hidden, fused=fused)
        self.project = Conv2d(hidden, dim, 1, fused=fused)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(temb).chunk(2, dim=1)
        h = self.norm2(self.expand(self.norm1(x, scale, shift)))
        return self.project(h, residual=x)


class GenAttention(nn.Module):
    """Multi-head attention on tokens: self (context None) or cross (K/V from context).

    x (B, L, C); context (B, Lc, context_dim); mask (B, Lc) bool, True = attend.
    ``forward`` returns ``residual + attn(x)``; the fused path folds that add into the
    output projection's GEMM epilogue.
    """

    def __init__(self, dim: int, head_dim: int, context_dim: int | None, fused: bool):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.cross = context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.core = SelfAttentionCore(fused)
        self.proj = ResidualLinear(dim, dim, fused=fused)

    def _heads(self, t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        B, L, _ = t.shape
        return t.reshape(B, L, n, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, residual: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.shape
        if self.cross:
            (q,) = self._heads(self.q(x), 1)
            k, v = self._heads(self.kv(context), 2)
        else:
            q, k, v = self._heads(self.qkv(x), 3)
        o = self.core(q, k, v, mask[:, None, None, :] if mask is not None else None)
        return self.proj(o.transpose(1, 2).reshape(B, L, C), residual)


class GenTBlock(nn.Module):
    """T block for generation on tokens (B, L, C) with temb (B, temb_dim).

    Self-attention, cross-attention to ``context`` (when the UNet has one), MLP; each
    pre-norm with an affine-free LayerNorm modulated by the time embedding (adaLN).
    """

    def __init__(self, dim: int, temb_dim: int, head_dim: int, mlp_ratio: float,
                 context_dim: int | None, fused: bool):
        super().__init__()
        n_mod = 3 if context_dim is not None else 2
        self.ada = nn.Linear(temb_dim, 2 * n_mod * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.attn = GenAttention(dim, head_dim, None, fused)
        self.cross_attn = GenAttention(dim, head_dim, context_dim, fused) if context_dim is not None else None
        hidden = int(dim * mlp_ratio)
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=False, fused=fused)  # adaLN: no affine of its own
        self.fc1 = LinearGELU(dim, hidden, fused=fused)
        self.fc2 = ResidualLinear(hidden, dim, fused=fused)

    def _norm(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return _modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        mods = self.ada(temb).chunk(6 if self.cross_attn is not None else 4, dim=1)
        x = self.attn(self._norm(x, mods[0], mods[1]), x)
        if self.cross_attn is not None:
            x = self.cross_attn(self._norm(x, mods[2], mods[3]), x, context, mask)
        return self.fc2(self.fc1(self._norm(x, mods[-2], mods[-1])), x)


class Level(nn.Module):
    """A run of C/T blocks at one resolution and width: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, layout: str, cfg: UNetConfig, fused: bool):
        super().__init__()
        self.layout = layout
        self.blocks = nn.ModuleList(
            GenCBlock(dim, cfg.temb_dim, cfg.expand_ratio, cfg.groups, fused) if b == "C" else
            GenTBlock(dim, cfg.temb_dim, cfg.head_dim, cfg.mlp_ratio, cfg.context_dim, fused)
            for b in layout
        )

    def forward(self, x, temb, context=None, mask=None):
        tokens = None  # consecutive T blocks share one (B, HW, C) view of the map
        B, C, H, W = x.shape
        for kind, blk in zip(self.layout, self.blocks):
            if kind == "C":
                if tokens is not None:
                    x, tokens = tokens.transpose(1, 2).reshape(B, C, H, W), None
                x = blk(x, temb)
            else:
                if tokens is None:
                    tokens = x.flatten(2).transpose(1, 2)  # a view on a channels_last map
                tokens = blk(tokens, temb, context, mask)
        if tokens is not None:
            x = tokens.transpose(1, 2).reshape(B, C, H, W)
        return x


class AsCANUNet(nn.Module):
    """The AsCAN UNet: latents (B, in_channels, H, W), timesteps (B,), and a condition.

    c2i (``num_classes`` set): ``forward(latents, t, y)`` with class ids y (B,) long in
    [0, num_classes]; ``y == num_classes`` (``self.null_class``) is the unconditional
    class used by classifier-free guidance. t2i (``cfg.context_dim`` set):
    ``forward(latents, t, context, context_mask=None)`` with context (B, L,
    context_dim) and context_mask (B, L) bool (True = real token). Returns the
    predicted noise (B, in_channels, H, W). H and W must be divisible by 4.
    """

    def __init__(self, cfg: UNetConfig, num_classes: int | None = None, fused: bool = True):
        super().__init__()
        if (num_classes is None) == (cfg.context_dim is None):
            raise ValueError(f"{cfg.name}: give exactly one of num_classes (c2i) or cfg.context_dim (t2i)")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{cfg.name}: num_classes must be positive, got {num_classes}")
        self.cfg, self.fused = cfg, fused
        self.num_classes = num_classes
        c, td = cfg.channels, cfg.temb_dim
        self.time_mlp = nn.Sequential(nn.Linear(c[0], td), nn.SiLU(), nn.Linear(td, td))
        self.class_embed = nn.Embedding(num_classes + 1, td) if num_classes is not None else None
        self.conv_in = Conv2d(cfg.in_channels, c[0], 3, padding=1, fused=fused)
        self.down = nn.ModuleList(Level(c[i], cfg.layouts[i], cfg, fused) for i in range(3))
        self.downsample = nn.ModuleList(Conv2d(c[i], c[i + 1], 3, stride=2, padding=1, fused=fused) for i in range(2))
        self.mid = Level(c[2], cfg.mid_layout, cfg, fused)
        self.merge = nn.ModuleList(Conv2d(2 * c[i], c[i], 1, fused=fused) for i in range(3))
        self.up = nn.ModuleList(Level(c[i], cfg.layouts[i][::-1], cfg, fused) for i in range(3))
        self.upsample = nn.ModuleList(Conv2d(c[i + 1], c[i], 3, padding=1, fused=fused) for i in range(2))
        self.norm_out = GroupNormSiLU(cfg.groups, c[0], fused=fused)
        self.conv_out = Conv2d(c[0], cfg.in_channels, 3, padding=1, fused=fused)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def _check(self, latents, t, y, context, context_mask):
        name, cfg = self.cfg.name, self.cfg
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != cfg.in_channels:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"{name}: expected latents (B, {cfg.in_channels}, H, W), got {got}")
        check_matches_model(name, "latents", latents, self)
        B, _, H, W = latents.shape
        if H % 4 or W % 4 or H == 0 or W == 0:
            raise ValueError(f"{name}: latent height and width must be positive multiples of 4, got {(H, W)}")
        if not isinstance(t, torch.Tensor) or t.shape != (B,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected timesteps t of shape ({B},), got {got}")
        if t.device != latents.device:
            raise ValueError(f"{name}: timesteps are on {t.device}, latents on {latents.device}")
        if self.class_embed is not None:
            if context_mask is not None:
                raise ValueError(f"{name}: a class-conditional UNet takes no context_mask (it has no context)")
            if not isinstance(y, torch.Tensor) or y.shape != (B,) or y.dtype not in (torch.int64, torch.int32):
                got = (tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"{name}: expected class ids y of shape ({B},) and integer dtype, got {got}")
            if y.device != latents.device:
                raise ValueError(f"{name}: class ids are on {y.device}, latents on {latents.device}")
            # The value check reads the ids: on the CPU only (on an accelerator it would cost
            # a host sync per step, and nn.Embedding checks the range there itself), and not
            # while torch.compile / torch.export trace (a data-dependent branch has no graph;
            # the traced embedding lookup keeps its own bounds check).
            if y.numel() and y.device.type == "cpu" and not _tracing() and \
                    (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                raise ValueError(f"{name}: class ids must be in [0, {self.num_classes}] "
                                 f"({self.num_classes} = null class), got range [{int(y.min())}, {int(y.max())}]")
        else:
            if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[0] != B \
                    or context.shape[2] != cfg.context_dim:
                got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
                raise ValueError(f"{name}: expected context (B={B}, L, context_dim={cfg.context_dim}), got {got}")
            check_matches_model(name, "context", context, self)
            if context_mask is not None and (not isinstance(context_mask, torch.Tensor)
                                             or context_mask.shape != context.shape[:2]
                                             or context_mask.dtype != torch.bool):
                got = ((tuple(context_mask.shape), context_mask.dtype) if isinstance(context_mask, torch.Tensor)
                       else type(context_mask).__name__)
                raise ValueError(f"{name}: context_mask must be bool of shape {tuple(context.shape[:2])}, got {got}")

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Time (+ class) embedding (B, temb_dim) in the parameters' dtype."""
        w = self.time_mlp[0].weight
        temb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0]).to(w.dtype))
        if self.class_embed is not None:
            temb = temb + self.class_embed(y)
        return temb

    def forward(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cond`` is y (c2i) or context (t2i); see the class docstring."""
        y, context = (cond, None) if self.class_embed is not None else (None, cond)
        self._check(latents, t, y, context, context_mask)
        temb = self.embed(t, y)
        x = self.conv_in(latents)  # fused: channels_last from here on (token views for free)
        skips = []
        for i in range(3):
            x = self.down[i](x, temb, context, context_mask)
            skips.append(x)
            if i < 2:
                x = self.downsample[i](x)
        x = self.mid(x, temb, context, context_mask)
        for i in reversed(range(3)):
            x = self.merge[i](torch.cat([x, skips[i]], dim=1))
            x = self.up[i](x, temb, context, context_mask)
            if i > 0:
                x = self.upsample[i - 1](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(self.norm_out(x))


# --------------------------------------------------------------------------- variants
# c2i sizes follow DiT's ladder (S ~ 33M, B ~ 130M, XL ~ 675M parameters) so the
# class-conditional models compare with the usual ImageNet-256 baselines; t2i XL is
# SDXL-class (SDXL's UNet is ~2.6B) with SDXL's widths and a 2048-wide context.
UNET_CONFIGS: dict[str, UNetConfig] = {c.name: c for c in (
    UNetConfig("ascan_unet_c2i_t", channels=(64, 128, 128), layouts=("CC", "CT", "TT"), mid_layout="TT",
               head_dim=32, groups=16, notes="Tiny class-conditional model: trains on a CPU in minutes "
               "(the embedded digits, `python -m ascan train-diffusion`)."),
    UNetConfig("ascan_unet_c2i_s", channels=(128, 256, 384), layouts=("CC", "CT", "TT"), mid_layout="TT",
               notes="CI-fast class-conditional model."),
    UNetConfig("ascan_unet_c2i_b", channels=(192, 384, 768), layouts=("CC", "CCT", "TTTT"), mid_layout="TTTT",
               notes="DiT-B-class parameter count."),
    UNetConfig("ascan_unet_c2i_xl", channels=(320, 640, 1280), layouts=("CC", "CCTT", "CTTTTTTT"),
               mid_layout="TTTT", notes="DiT-XL-class parameter count."),
    UNetConfig("ascan_unet_t2i_s", channels=(128, 256, 384), layouts=("CC", "CT", "TT"), mid_layout="TT",
               context_dim=768, notes="CI-fast text-to-image model (CLIP-L-width context)."),
    UNetConfig("ascan_unet_t2i_xl", channels=(320, 640, 1280), layouts=("CC", "CCTT", "CC" + "T" * 24),
               mid_layout="T" * 10, context_dim=2048, notes="SDXL-class: SDXL's widths and context width."),
)}


def _c2i(cfg: UNetConfig, fused: bool, num_classes: int, in_channels: int) -> AsCANUNet:
    return AsCANUNet(dataclasses.replace(cfg, in_channels=in_channels), num_classes=num_classes, fused=fused)


def _t2i(cfg: UNetConfig, fused: bool, context_dim: int | None, in_channels: int) -> AsCANUNet:
    cfg = dataclasses.replace(cfg, in_channels=in_channels)
    return AsCANUNet(cfg if context_dim is None else dataclasses.replace(cfg, context_dim=context_dim), fused=fused)


@register_model
def ascan_unet_c2i_t(fused: bool = True, num_classes: int = 1000, in_channels: int = 4) -> AsCANUNet:
    """Class-conditional AsCAN UNet, tiny: CPU-trainable in minutes (``UNET_CONFIGS["ascan_unet_c2i_t"]``)."""
    return _c2i(UNET_CONFIGS["ascan_unet_c2i_t"], fused, num_classes, in_channels)


@register_model
def ascan_unet_c2i_s(fused: bool = True, num_classes: int = 1000, in_channels: int = 4) -> AsCANUNet:
    """Class-conditional AsCAN UNet, small: CI-fast (``UNET_CONFIGS["ascan_unet_c2i_s"]``)."""
    return _c2i(UNET_CONFIGS["ascan_unet_c2i_s"], fused, num_classes, in_channels)


@register_model
def ascan_unet_c2i_b(fused: bool = True, num_classes: int = 1000, in_channels: int = 4) -> AsCANUNet:
    """Class-conditional AsCAN UNet, base: DiT-B-class parameter count."""
    return _c2i(UNET_CONFIGS["ascan_unet_c2i_b"], fused, num_classes, in_channels)


@register_model
def ascan_unet_c2i_xl(fused: bool = True, num_classes: int = 1000, in_channels: int = 4) -> AsCANUNet:
    """Class-conditional AsCAN UNet, XL: DiT-XL-class parameter count."""
    return _c2i(UNET_CONFIGS["ascan_unet_c2i_xl"], fused, num_classes, in_channels)


@register_model
def ascan_unet_t2i_s(fused: bool = True, context_dim: int | None = None, in_channels: int = 4) -> AsCANUNet:
    """Text-to-image AsCAN UNet, small: CI-fast, CLIP-L-width (768) context by default."""
    return _t2i(UNET_CONFIGS["ascan_unet_t2i_s"], fused, context_dim, in_channels)


@register_model
def ascan_unet_t2i_xl(fused: bool = True, context_dim: int | None = None, in_channels: int = 4) -> AsCANUNet:
    """Text-to-image AsCAN UNet, XL: SDXL-class (SDXL's widths, 2048-wide context by default)."""
    return _t2i(UNET_CONFIGS["ascan_unet_t2i_xl"], fused, context_dim, in_channels)
