"""Building blocks shared by the AsCAN models, and the leaf layers that own the fused switch.

Leaves (each a subclass of the ``nn`` module it replaces, so parameter names, state_dicts
and ``isinstance`` checks are those of plain PyTorch): :class:`ConvBN`, :class:`Conv2d`,
:class:`LayerNorm`, :class:`AddLayerNorm`, :class:`LinearGELU`, :class:`ResidualLinear`,
:class:`GroupNormSiLU`, :class:`SelfAttentionCore`. ``fused`` is read once at construction
(timm's habit) and branches only inside these leaves: ``fused=False`` is the model as a
careful PyTorch user writes it, the baseline every speedup is measured against;
``fused=True`` routes the same math through ``ascan_kernels`` ops, whose registry picks an
impl per call. Blocks (:class:`CBlock`, :class:`TBlock`, the UNet's) have one forward body.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import ascan_kernels as K


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a whole sample's residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class ConvBN(nn.Module):
    """conv2d (no bias) + BatchNorm2d, optionally + residual, optionally + GELU.

    forward(x (N, Cin, H, W), residual=None) -> (N, Cout, Ho, Wo). With ``act="gelu"``
    the fused path calls ``conv_bn_gelu``; with a residual ``conv_bn_add``; otherwise
    ``conv_bn``. In eval mode the BN-folded weight and bias are cached and refolded
    whenever a parameter or running stat changes: in-place updates (optimizers,
    ``load_state_dict``, BN's running-stat updates) bump tensor version counters, and
    ``.to()``/``.cuda()`` make new tensors. Writes through ``param.data`` bypass version
    counters; call ``invalidate_fold()`` (or ``ascan.layers.invalidate_folds(model)``)
    after those. ``train()``/``eval()`` also drop the cache. The fused path works on
    channels_last activations (oneDNN and the token views of the T blocks want NHWC), so
    its input is made channels_last (a no-op after the first fused layer).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: str = "gelu", fused: bool = False):
        super().__init__()
        if act not in ("gelu", "none"):
            raise ValueError(f"ConvBN: act must be 'gelu' or 'none', got {act!r}")
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act_name = act
        self.act = nn.GELU() if act == "gelu" else nn.Identity()
        self.fused = fused
        self._fold_key: tuple | None = None
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        # SyncBatchNorm (distributed training) must compute its own cross-rank statistics
        if not self.fused or (self.training and isinstance(self.bn, nn.SyncBatchNorm)):
            y = self.bn(self.conv(x))
            if residual is not None:
                y = y + residual
            return self.act(y)
        return self._forward_fused(x, residual)

    def invalidate_fold(self) -> None:
        """Forget the cached fold (needed only after writes through ``.data``)."""
        self._fold_key = None
        self._folded = None

    def train(self, mode: bool = True) -> "ConvBN":
        self.invalidate_fold()
        return super().train(mode)

    def _bn_momentum(self) -> float:
        """nn.BatchNorm2d's bookkeeping, so fused training updates the same buffers."""
        bn = self.bn
        if not self.training or not bn.track_running_stats:
            return 0.0 if bn.momentum is None else bn.momentum
        bn.num_batches_tracked.add_(1)
        return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight, bias) of conv with inference BN folded in, float32, cached.

        The fold is made outside inference mode, so a first call under
        ``torch.inference_mode()`` caches tensors that later calls under ``no_grad`` (or
        with grad enabled) can use. Parameters that are themselves inference tensors (a
        model built under inference mode) have no version counter: in-place changes to
        them inside inference mode are not seen; call ``invalidate_fold()`` after those."""
        params = (self.conv.weight, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
        key = tuple((t.data_ptr(), K.version_key(t), t.device, t.dtype) for t in params) + (self.bn.eps,)
        if key != self._fold_key:
            with torch.inference_mode(False), torch.no_grad():  # this order: inference_mode(False) enables grad
                self._folded = K.fold_bn(self.conv.weight, self.conv.bias, self.bn.weight, self.bn.bias,
                                         self.bn.running_mean, self.bn.running_var, self.bn.eps)
            self._fold_key = key
        assert self._folded is not None
        return self._folded

    def _forward_fused(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        c, bn = self.conv, self.bn
        training = self.training
        momentum = self._bn_momentum()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or c.weight.requires_grad)
        # Cache the fold only where it is a constant: not training, no autograd through
        # it, and not while torch.compile traces (version counters are not traceable).
        use_cache = not (training or needs_grad or torch.compiler.is_compiling())
        folded = self.folded() if use_cache else None
        common = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups,
                      eps=bn.eps, momentum=momentum, training=training, folded=folded)
        args = (x, c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if self.act_name == "gelu":
            if residual is not None:
                raise ValueError("ConvBN: a residual with GELU is not a C-block pattern")
            return K.conv_bn_gelu(*args, **common)
        if residual is not None:
            return K.conv_bn_add(*args, residual, **common)
        return K.conv_bn(*args, **common)


def invalidate_folds(model: nn.Module) -> None:
    """Drop every cached BN fold in ``model`` (after writing weights through ``.data``)."""
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.invalidate_fold()


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with an optional residual added to its output:
    ``forward(x (N, Cin, H, W), residual=None (N, Cout, Ho, Wo)) -> (N, Cout, Ho, Wo)``.

    Fused: ``ascan_kernels.conv_bias_act`` (the bias and the residual in the conv's
    epilogue), channels_last out. The fused models keep activations NHWC (what oneDNN
    computes natively, and what makes the T blocks' (B, HW, C) token views free).
    """

    def __init__(self, *args, fused: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            return K.conv_bias_act(x, self.weight, self.bias, residual, stride=self.stride, padding=self.padding,
                                   dilation=self.dilation, groups=self.groups)
        y = super().forward(x)
        return y if residual is None else y + residual


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim; fused: ``ascan_kernels.layer_norm``."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True, fused: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return K.layer_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class AddLayerNorm(nn.LayerNorm):
    """Residual add then LayerNorm: ``forward(x, residual) -> (x + residual, norm(x + residual))``.

    Fused: ``ascan_kernels.add_layer_norm`` (one pass: the sum is normalised while hot)."""

    def __init__(self, dim: int, eps: float = 1e-5, fused: bool = False):
        super().__init__(dim, eps=eps)
        self.fused = fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            return K.add_layer_norm(x, residual, self.weight, self.bias, self.eps)
        s = x + residual
        return s, super().forward(s)


class LinearGELU(nn.Linear):
    """``gelu(linear(x))`` (an MLP's first layer); fused: ``ascan_kernels.linear_gelu``."""

    def __init__(self, in_features: int, out_features: int, fused: bool = False):
        super().__init__(in_features, out_features)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return K.linear_gelu(x, self.weight, self.bias)
        return F.gelu(super().forward(x))


class ResidualLinear(nn.Linear):
    """``residual + linear(x)`` (a projection with its shortcut), or ``linear(x)`` without one.

    Fused: ``ascan_kernels.linear_add`` (the add rides in the GEMM's epilogue)."""

    def __init__(self, in_features: int, out_features: int, fused: bool = False):
        super().__init__(in_features, out_features)
        self.fused = fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused and residual is not None:
            return K.linear_add(x, self.weight, self.bias, residual)
        y = super().forward(x)
        return y if residual is None else residual + y


class GroupNormSiLU(nn.GroupNorm):
    """``silu(group_norm(x) * (1 + scale) + shift)`` with an optional per-sample FiLM
    (scale, shift: (N, C)); fused: ``ascan_kernels.group_norm_silu`` (one op)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, fused: bool = False):
        super().__init__(num_groups, num_channels, eps=eps)
        self.fused = fused

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused:
            return K.group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift)
        h = super().forward(x)
        if scale is not None:
            h = h * (1 + scale[:, :, None, None])
        if shift is not None:
            h = h + shift[:, :, None, None]
        return F.silu(h)


class SelfAttentionCore(nn.Module):
    """The attention core ``softmax(q k^T / sqrt(d) + mask) v`` on (B, H, L, D) heads, no
    parameters; fused: ``ascan_kernels.attention``, else ``F.scaled_dot_product_attention``."""

    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                dropout_p: float = 0.0) -> torch.Tensor:
        if self.fused:
            return K.attention(q, k, v, attn_mask, dropout_p=dropout_p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class CBlock(nn.Module):
    """The convolutional (C) block, FusedMBConv-style.

    conv3x3 (expand, stride) -> BN -> GELU -> conv1x1 (project) -> BN, plus the input
    when shapes allow a shortcut (stride 1 and in == out channels), as in
    EfficientNetV2's FusedMBConv. The hidden width is ``expand_ratio * in_chs``.
    (N, in_chs, H, W) -> (N, out_chs, H/stride, W/stride).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.0,
                 drop_path: float = 0.0, fused: bool = False):
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.expand = ConvBN(in_chs, hidden, 3, stride, act="gelu", fused=fused)
        self.project = ConvBN(hidden, out_chs, 1, act="none", fused=fused)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x)
        if not self.has_skip:
            return self.project(h)
        if self.drop_path > 0.0 and self.training:
            return x + drop_path(self.project(h), self.drop_path, True)
        return self.project(h, residual=x)


class Attention(nn.Module):
    """Multi-head self-attention on tokens (B, L, C): qkv projection, global attention, out projection."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0.0, fused: bool = False):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"Attention: dim {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.core = SelfAttentionCore(fused)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        o = self.core(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class Mlp(nn.Module):
    """fc1 + GELU -> fc2 on tokens (B, L, C); with ``residual`` returns ``residual + mlp(x)``
    (the fused model runs fc1+GELU as one op and the add in fc2's epilogue)."""

    def __init__(self, dim: int, ratio: float = 4.0, fused: bool = False):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = LinearGELU(dim, hidden, fused=fused)
        self.fc2 = ResidualLinear(hidden, dim, fused=fused)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc2(self.fc1(x), residual)


class TBlock(nn.Module):
    """The transformer (T) block, pre-norm: x + Attn(LN(x)), then x + MLP(LN(x)).

    Full global multi-head self-attention (head dim 32) and an MLP of ratio 4 with
    GELU; no relative position bias (the C blocks before it carry position). Tokens
    (B, L, C) -> (B, L, C). The first residual add and the second LayerNorm are one
    :class:`AddLayerNorm`; the second residual add goes into fc2 (:class:`ResidualLinear`).
    """

    def __init__(self, dim: int, head_dim: int = 32, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 fused: bool = False):
        super().__init__()
        self.norm1 = LayerNorm(dim, fused=fused)
        self.attn = Attention(dim, head_dim, fused=fused)
        self.norm2 = AddLayerNorm(dim, fused=fused)
        self.mlp = Mlp(dim, mlp_ratio, fused=fused)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dp = self.drop_path if self.training else 0.0
        x, h = self.norm2(x, drop_path(self.attn(self.norm1(x)), dp, True))
        if dp > 0.0:
            return x + drop_path(self.mlp(h), dp, True)
        return self.mlp(h, residual=x)
