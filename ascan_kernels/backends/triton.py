"""The Triton runtime as the ops' ``triton`` impls see it: where the kernels can run.

Triton kernels run on CUDA tensors. With ``TRITON_INTERPRET=1`` set before Triton is
imported they run instead on CPU tensors under Triton's interpreter (numpy): slow,
for checking numerics on a machine without a GPU. The registry then treats the
``triton`` impls as available but never prefers them for CPU tensors, so only an
explicit ``use(op="triton")`` runs them there.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
from typing import Any, Callable

import torch

from ..capabilities import Capabilities

# The dtypes the kernels take (fp32 accumulation; tf32 dots for float32 on a GPU).
FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def devices() -> tuple[str, ...]:
    """The device type the kernels take in this process: CPU tensors under the interpreter."""
    return ("cpu",) if interpreting() else ("cuda",)


def unavailable_reason() -> str | None:
    """Why no Triton kernel can run in this process, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, for testing)"
    return None


def device_reason(t: torch.Tensor) -> str | None:
    """Why a Triton kernel cannot take ``t``'s device, or None."""
    if interpreting():
        if t.device.type != "cpu":
            return f"device {t.device.type}: under TRITON_INTERPRET=1 the kernels take CPU tensors"
        return None
    if t.device.type != "cuda":
        return f"device {t.device.type}: the Triton kernels take CUDA tensors"
    return None


def prefer_reason(t: torch.Tensor) -> str | None:
    """Automatic selection never picks the interpreter: it is for numerics tests only."""
    if t.device.type == "cpu":
        return "CPU tensors run under Triton's interpreter (numerics only); force with use(op='triton')"
    return None


def dtype_reason(dtype: torch.dtype, allowed=(torch.float16, torch.bfloat16, torch.float32)) -> str | None:
    if dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        return f"dtype {dtype} not supported ({names})"
    return None


def capabilities(dtypes: tuple[torch.dtype, ...] = FLOATS, empty: bool = False) -> Capabilities:
    """What a ``triton`` impl takes: CUDA tensors (CPU ones under the interpreter), ``dtypes``,
    and sm_80 or newer (the GPUs the AOT checks compile for: bf16 dots need Ampere)."""
    return Capabilities(devices=devices(), dtypes=dtypes, cuda_capability=((8, 0), None), empty=empty,
                        timed_devices=("cuda",), untimed_note="CPU tensors run under Triton's interpreter (numerics only)")


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (sizes persistent grids)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One kernel variant to compile: every argument typed, every constexpr fixed.

    ``signature`` maps each parameter of ``fn`` (in order) to a Triton type string
    (``"*bf16"``, ``"*fp32"``, ``"i32"``, ``"fp32"``) or ``"constexpr"``.
    ``constexprs`` fixes the non-tuning constexprs (dtype flags, head dim, epilogue);
    each ``triton.Config`` in ``configs`` adds its block sizes, ``num_warps`` and
    ``num_stages``. ``uses_dot`` kernels must compile to tensor-core instructions.
    """

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    configs: tuple
    uses_dot: bool = False




def load_impls(module: str, ops: tuple[str, ...], placeholder: Callable[[str, str], Any]) -> dict[str, Any]:
    """``module.impls()`` (op name -> Impl) when Triton can run here, else a placeholder
    per op that says why.

    The kernel module is imported only then: importing Triton costs a fifth of
    ``import ascan_kernels``, for nothing on a machine that cannot run it. A module that
    fails to import becomes a placeholder with the error, never a broken package.
    """
    why = unavailable_reason()
    if why is None:
        try:
            return importlib.import_module(module).impls()
        except Exception as e:  # a broken kernel module must not break the package
            why = f"{module} failed to import: {type(e).__name__}: {e}"
    return {op: placeholder(op, why) for op in ops}
