"""Triton kernels, registered as the ``triton`` impl of the ops they cover.

Kernel modules (one per area) each define their ``@triton.jit`` kernels, the
launchers, ``impls()`` (op name -> :class:`~ascan_kernels.registry.Impl`) and
``aot_specs()`` (what :mod:`ascan_kernels.triton.aot` compiles for sm_80/sm_90).
They run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (see
:mod:`.runtime`). ``python -m ascan_kernels.triton.report`` prints the resource and
roofline table.
"""
from __future__ import annotations

import dataclasses
import importlib

from ..registry import Impl, get_op
from . import runtime

# module -> the ops its impls() registers (listed here so a missing Triton still shows
# each op's ``triton`` impl with the reason it cannot run)
KERNEL_MODULES: dict[str, tuple[str, ...]] = {
    "conv": ("conv_bn_gelu", "conv_bn_add", "conv_bn"),
    "attention": ("attention",),
    "norm": ("layer_norm", "add_layer_norm", "group_norm_silu"),
    "linear": ("linear_gelu", "linear_add"),
}


def _placeholder(reason: str):
    def fn(*args, **kwargs):
        raise RuntimeError(reason)
    return Impl("triton", fn, priority=runtime.PRIORITY, available=lambda: reason, doc=reason)


def register_all() -> None:
    """Register every kernel module's impls (or a placeholder that says why not)."""
    base = runtime.unavailable_reason()
    for mod, ops in KERNEL_MODULES.items():
        impls = None
        # Nothing can run (no Triton, or no GPU and no interpreter): say so without
        # importing Triton, which would add a fifth to `import ascan_kernels`.
        if base is None:
            try:
                impls = importlib.import_module(f"{__name__}.{mod}").impls()
            except Exception as e:  # a broken kernel module must not break the package
                reason = f"ascan_kernels.triton.{mod} failed to import: {type(e).__name__}: {e}"
                impls = {op: _placeholder(reason) for op in ops}
        else:
            impls = {op: _placeholder(base) for op in ops}
        for op, impl in impls.items():
            get_op(op).register(dataclasses.replace(impl, devices=runtime.devices()))
