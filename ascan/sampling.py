"""DDIM sampling with classifier-free guidance for the AsCAN UNets.

Enough of a sampler to run a UNet end to end and measure it: the Stable Diffusion
noise schedule ("scaled linear" betas from 0.00085 to 0.012 over 1000 steps),
epsilon prediction, DDIM updates (``eta=0`` deterministic, ``eta>0`` adds noise), and
classifier-free guidance that runs the conditional and unconditional halves as one
batch. Every random draw comes from a ``torch.Generator`` seeded by ``seed``, so a
call is deterministic for a given model, device and seed.
"""
from __future__ import annotations

import torch


def scaled_linear_alphas_cumprod(num_train_steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """Cumulative products of (1 - beta) for the scaled-linear schedule, float64 (T,)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int, num_train_steps: int = 1000) -> list[int]:
    """``steps`` evenly spaced training timesteps, from the noisiest down ("leading" spacing + 1)."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"generate: steps must be in [1, {num_train_steps}], got {steps}")
    stride = num_train_steps // steps
    return list(range(num_train_steps - 1, -1, -stride))[:steps]


@torch.no_grad()
def generate(model, batch_size: int | None = None, latent_size: int | tuple[int, int] = 32, *,
             y: torch.Tensor | None = None, context: torch.Tensor | None = None,
             context_mask: torch.Tensor | None = None, null_context: torch.Tensor | None = None,
             steps: int = 50, guidance_scale: float = 4.0, eta: float = 0.0, seed: int = 0,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sample latents (B, C, H, W) from an :class:`~ascan.unet.AsCANUNet` with DDIM + CFG.

    c2i: pass class ids ``y`` (B,) long; the unconditional branch uses the model's null
    class. t2i: pass ``context`` (B, L, context_dim) (any text encoder's embeddings) and
    optionally ``context_mask`` (B, L) bool; the unconditional branch uses
    ``null_context`` (B or 1, L', context_dim), default zeros like the context.
    ``guidance_scale=1`` skips the unconditional branch. ``latent_size`` is H (= W) or
    (H, W), multiples of 4. Runs on the model's device in ``dtype`` (default: the
    model's). Returns float32 latents; decode them with the VAE of your choice.
    """
    p = next(model.parameters())
    device, dtype = p.device, dtype or p.dtype
    c2i = model.num_classes is not None
    if c2i and (context is not None or context_mask is not None or null_context is not None):
        raise ValueError(f"generate: {model.cfg.name} is class-conditional: pass y (class ids), "
                         "not context/context_mask/null_context")
    if not c2i and y is not None:
        raise ValueError(f"generate: {model.cfg.name} is text-to-image: pass context (and context_mask), not y")
    cond = y if c2i else context
    if cond is None:
        raise ValueError(f"generate: {model.cfg.name} needs {'y (class ids)' if c2i else 'context'}")
    B = cond.shape[0]
    if batch_size is not None and batch_size != B:
        raise ValueError(f"generate: batch_size={batch_size} but the condition has batch {B}")
    H, W = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    guided = guidance_scale != 1.0
    cond = cond.to(device) if c2i else cond.to(device, dtype)
    mask = context_mask.to(device) if context_mask is not None else None
    if guided:
        if c2i:
            uncond = torch.full_like(cond, model.null_class)
        else:
            uncond = (torch.zeros_like(cond) if null_context is None
                      else null_context.to(device, dtype).expand(B, -1, -1))
            if mask is not None or uncond.shape[1] != cond.shape[1]:
                # the two halves run as one batch: pad to one length and mask the padding
                L = max(cond.shape[1], uncond.shape[1])
                m_c = mask if mask is not None else torch.ones(B, cond.shape[1], dtype=torch.bool, device=device)
                m_u = torch.ones(B, uncond.shape[1], dtype=torch.bool, device=device)
                cond, m_c = _pad_tokens(cond, m_c, L)
                uncond, m_u = _pad_tokens(uncond, m_u, L)
                mask = torch.cat([m_c, m_u])
        cond_in = torch.cat([cond, uncond])
    else:
        cond_in = cond

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(B, model.cfg.in_channels, H, W, generator=gen, dtype=torch.float32).to(device)
    abar = scaled_linear_alphas_cumprod().to(device)
    ts = ddim_timesteps(steps)
    for i, t in enumerate(ts):
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64, device=device)
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((x_in.shape[0],), t, device=device, dtype=torch.long)
        eps = model(x_in.to(dtype), t_in, cond_in, mask).float()
        if guided:
            e_c, e_u = eps.chunk(2)
            eps = e_u + guidance_scale * (e_c - e_u)
        x0 = (x - (1 - a_t).sqrt().float() * eps) / a_t.sqrt().float()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt().float()
        x = a_prev.sqrt().float() * x0 + ((1 - a_prev).float() - sigma ** 2).clamp_min(0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device)
    return x


def _pad_tokens(ctx: torch.Tensor, mask: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    pad = L - ctx.shape[1]
    if pad == 0:
        return ctx, mask
    return (torch.nn.functional.pad(ctx, (0, 0, 0, pad)),
            torch.nn.functional.pad(mask, (0, pad), value=False))
