"""The ``cuda`` impl of group_norm_silu: ``ascan_C::group_norm_silu`` on CUDA tensors
(csrc/ops/group_norm_silu/): split Welford group statistics, then one GroupNorm + FiLM +
SiLU pass. Forward only."""
from __future__ import annotations

import functools

import torch

from ..._common import memory_format_of
from ...backends import cuda as backend
from ...backends.cuda import f32
from ...registry import Impl

GROUP_NORM_MAX_BLOCKS_Y = 65535  # N * num_groups rides on gridDim.y
KERNELS = ("group_norm_silu",)


def _supports(x, num_groups, weight, bias, eps, scale, shift):
    reason = backend.param_reason(weight=weight, bias=bias, scale=scale, shift=shift)
    if reason:
        return reason
    if memory_format_of(x) is None:
        return f"layout with strides {tuple(x.stride())}: the kernel reads contiguous NCHW or channels_last"
    if x.shape[0] * num_groups > GROUP_NORM_MAX_BLOCKS_Y:
        return f"N * num_groups = {x.shape[0] * num_groups} > {GROUP_NORM_MAX_BLOCKS_Y} (grid limit)"
    return None


def _group_norm_silu(x, num_groups, weight, bias, eps, scale, shift):
    if backend.autocast_runs_fp32(x):
        x = x.float()  # as eager under CUDA autocast: computed and returned in float32
    return torch.ops.ascan_C.group_norm_silu(x, num_groups, f32(weight), f32(bias), float(eps), f32(scale),
                                             f32(shift))


def impl() -> Impl:
    return Impl("cuda", _group_norm_silu, caps=backend.capabilities(), supports=_supports,
                available=functools.partial(backend.unavailable_reason, KERNELS), autograd=False,
                doc="Welford group stats, then one GroupNorm+FiLM+SiLU pass (forward only)")
