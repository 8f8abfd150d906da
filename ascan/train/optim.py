"""Optimizer pieces: AdamW parameter groups, the warmup + cosine schedule, the weight EMA."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on weight matrices and conv kernels; none on norms,
    biases, embeddings, or anything 1-D (decaying a norm's gain or a bias only hurts)."""
    no_decay_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier at step s: linear from 1/warmup to 1 over ``warmup_steps``, then a cosine
    from 1 down to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class EMA:
    """Exponential moving average of a model's parameters and floating buffers.

    ``decay_at(n) = min(decay, (1 + n) / (10 + n))``: early on the average follows the
    weights closely, so a short run still has a useful EMA. Works on plain tensors and on
    FSDP2's sharded DTensors alike (each rank averages its own shards). Integer buffers
    (BatchNorm's batch counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, _ in _tensors(model)]
        self.shadow = [t.detach().clone() for _, t in _tensors(model)]
        self.updates = 0

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay_at(self.updates)
        floats_s, floats_m = [], []
        for s, (_, t) in zip(self.shadow, _tensors(model)):
            if s.is_floating_point():
                floats_s.append(s)
                floats_m.append(t.detach())
            else:
                s.copy_(t)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_m, 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's tensors with the averaged ones (call twice to undo)."""
        for s, (_, t) in zip(self.shadow, _tensors(model)):
            tmp = t.detach().clone()
            t.copy_(s)
            s.copy_(tmp)

    def named(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for n, s in zip(self.names, self.shadow):
            _copy_full_into(s, tensors[n])
        self.updates = updates


def _tensors(model: nn.Module):
    """Parameters then buffers, in ``state_dict`` naming (what checkpoints store)."""
    yield from model.named_parameters()
    yield from ((n, b) for n, b in model.named_buffers() if b is not None)


def _copy_full_into(dst: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (unsharded) tensor into ``dst``, which may be a sharded DTensor."""
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # pragma: no cover
        DTensor = ()
    if isinstance(dst, DTensor):
        dst.copy_(distribute_tensor(full.to(dst.device, dst.dtype), dst.device_mesh, dst.placements))
    else:
        dst.copy_(full)
