"""Multi-head attention core: ``softmax(q k^T * scale + mask) v``.

Plain global attention, as in the paper: the fused impls speed the same math up and
never approximate it. Lq != Lk is allowed (cross-attention). The impls: ``sdpa.py``
(PyTorch's scaled_dot_product_attention), ``triton.py`` (our flash attention),
``flash_attn.py`` (flash-attn 2 and flash-attn 4 from PyPI, when installed: no tensor mask).

Fully masked rows: a query row whose every score is ``-inf`` (a boolean mask with no
True in the row, or an additive mask of ``-inf`` everywhere) attends to nothing and its
output is **0** in every impl. Softmax alone would give 0/0 = NaN; 0 is what
``F.scaled_dot_product_attention`` and flash-attention return, and what classifier-free
guidance needs (an empty caption masks every context token).

NaN: a NaN in q, k or v propagates to the outputs it touches in every impl, and a key
that the mask hides is ignored, NaN or not, with two exceptions in PyTorch's CPU ``sdpa``
kernel: it returns 0 (not NaN) for a query row containing a NaN, and a NaN in a key
hidden by a boolean mask still reaches every query of that (batch, head) (the kernel
scores the key before masking it). In a model the first row's residual stream still
carries the NaN; for masked-out padding, give finite values (zeros) or use
``use(attention="eager")``, which ignores masked positions strictly (tests/test_fuzz_ops.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _checks as chk
from ...backends import triton as triton_backend
from ...registry import register_op, unavailable_impl
from . import flash_attn, sdpa

__all__ = ["attention", "attention_reference"]

OP = "attention"


def attention_reference(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """Eager math: scores in the input dtype, softmax in at least float32.

    q: (B, H, Lq, D); k, v: (B, H, Lk, D) (v may have its own head dim Dv);
    attn_mask: None, bool (True = attend) or float additive, broadcastable to
    (B, H, Lq, Lk). Returns (B, H, Lq, Dv) in q's dtype; a fully masked row gives 0.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, float("-inf"))
        else:
            s = s + attn_mask
    dead = None
    if attn_mask is not None:
        # Fully masked rows give 0. Their scores are made finite first so that neither the
        # softmax nor its gradient produces 0/0 = NaN; their probabilities are then zeroed.
        dead = torch.isneginf(s).all(-1, keepdim=True)
        s = s.masked_fill(dead, 0.0)
    p = torch.softmax(s, dim=-1, dtype=torch.promote_types(s.dtype, torch.float32))
    if dead is not None:
        p = p.masked_fill(dead, 0.0)
    p = p.to(v.dtype)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v)


def _validate(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    for n, t in (("q", q), ("k", k), ("v", v)):
        chk.tensor(OP, n, t, ndim=4)
    B, H, Lq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        chk.fail(OP, f"q, k, v must share (batch, heads); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[-1] != D:
        chk.fail(OP, f"q and k head dims differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        chk.fail(OP, f"k and v lengths differ: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if attn_mask is not None:
        chk.tensor(OP, "attn_mask", attn_mask, floating=False)
    chk.same_device(OP, q=q, k=k, v=v, attn_mask=attn_mask)
    chk.same_dtype(OP, q=q, k=k, v=v)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            chk.fail(OP, f"attn_mask must be bool or floating, got {attn_mask.dtype}", TypeError)
        try:
            torch.broadcast_shapes(attn_mask.shape, (B, H, Lq, k.shape[-2]))
        except RuntimeError:
            chk.fail(OP, f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to "
                         f"(B, H, Lq, Lk) = {(B, H, Lq, k.shape[-2])}")
    if scale is not None and not isinstance(scale, (int, float)):
        chk.fail(OP, f"scale must be a number or None, got {type(scale).__name__}", TypeError)
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        chk.fail(OP, f"dropout_p must be in [0, 1), got {dropout_p}")


attention_op = register_op(OP, attention_reference, "softmax(q k^T * scale + mask) v", _validate, autocast=True)
attention_op.register(sdpa.impl())
attention_op.register(flash_attn.fa2_impl())
attention_op.register(flash_attn.fa4_impl())
attention_op.register(triton_backend.load_impls(
    f"{__name__}.triton", (OP,), lambda op, why: unavailable_impl("triton", why, triton_backend.capabilities()))[OP])


def attention(q, k, v, attn_mask=None, dropout_p=0.0, scale=None):
    """Attention over (B, H, L, D) tensors; see :func:`attention_reference` for shapes.

    ``dropout_p`` applies to the attention probabilities; pass 0.0 in eval mode.
    """
    return attention_op(q, k, v, attn_mask, float(dropout_p), scale)
