"""The ``sdpa`` impl of attention: ``torch.nn.functional.scaled_dot_product_attention``
(PyTorch's flash / fused kernels on CPU and CUDA), with a rule that keeps it off the
small low-precision CPU shapes where it measured slower than the reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._common import compute_dtype
from ...capabilities import Capabilities
from ...registry import Impl


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(compute_dtype(q))  # SDPA wants the mask in q's dtype
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


# Below this many attention scores (B*H*Lq*Lk) PyTorch's CPU flash kernel in bf16/fp16
# lost to the eager reference on our bench machine (bench/ops/bench_attention.py: 0.46x at
# (16,16,49,49), 0.69x at (1,8,196,196); 2.7x faster at (16,8,196,196)), so the
# registry does not prefer it there.
SDPA_CPU_LOWP_MIN_SCORES = 1 << 20


def _sdpa_prefer(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    if q.device.type == "cpu" and compute_dtype(q) in (torch.bfloat16, torch.float16):
        scores = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
        if scores < SDPA_CPU_LOWP_MIN_SCORES:
            return (f"CPU {compute_dtype(q)} with {scores} scores (< {SDPA_CPU_LOWP_MIN_SCORES}): "
                    "measured slower than the eager reference")
    return None


def _supports(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    if k.shape[-2] == 0:
        return "empty input"
    return None


def impl() -> Impl:
    return Impl("sdpa", _sdpa, caps=Capabilities(empty=False), supports=_supports, prefer=_sdpa_prefer,
                autograd=True,
                doc="torch.nn.functional.scaled_dot_product_attention (flash/fused kernels on CPU and CUDA)")
