"""The CUDA C++ kernels of ``ascan_kernels._C``, registered as the ``cuda`` impl of the ops they cover.

The kernels live in ``csrc/cuda`` (built by ``pip install -e .`` when torch is a CUDA build
and ``CUDA_HOME`` is set); :mod:`.wrappers` wraps them for the registry:

* ``conv_bn_gelu`` / ``conv_bn_add`` / ``conv_bn``: cuDNN convolution (no bias) with the
  BN-folded weight, then one fused in-place epilogue pass (folded bias, residual, GELU);
* ``group_norm_silu``: GroupNorm statistics + FiLM + SiLU in one normalising pass;
* ``layer_norm``: warp-per-row forward and backward (C <= 1280).

Every impl reports why it cannot run: the extension's load/build reason, or
``"no CUDA device"``. :func:`resource_usage` lists the kernels' registers, shared and
local memory per architecture from the built binary.
"""
from __future__ import annotations

import dataclasses

from ..registry import get_op
from .wrappers import OPS, PRIORITY, impls, unavailable_reason
from .resources import resource_usage

__all__ = ["OPS", "PRIORITY", "impls", "register_all", "resource_usage", "unavailable_reason"]


def register_all() -> None:
    """Register the ``cuda`` impl of every op in :data:`OPS` (unavailable ones say why)."""
    for op, impl in impls().items():
        get_op(op).register(dataclasses.replace(impl, devices=("cuda",)))
