"""Whether the extension's CUDA kernels can run in this process, and on which GPU.

The ``cuda`` impls (ascan_kernels/ops/<op>/cuda.py) call ``ascan_C`` ops whose CUDA
kernels are compiled into ``ascan_kernels._C`` when a CUDA toolkit was found at build
time. Which ops have a CUDA kernel is asked from the dispatcher, not kept in a list. A
binary carries code for the architectures it was compiled for (``TORCH_CUDA_ARCH_LIST``,
default sm_80/86/90 + PTX for sm_90): SASS runs on its own major version at the same or
a higher minor; PTX is JIT-compiled for its own or any newer GPU. Anything else would
launch and fail, so it is a reason here instead.
"""
from __future__ import annotations

import functools
import re

import torch

from .._common import autocast_enabled
from .._ext import REBUILD, _build_info, has_kernel, load_extension
from ..capabilities import Capabilities

# The dtypes every CUDA kernel of ours takes (math in float32, one rounding on store).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def parse_arch_list(arch_list: str | None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``"8.0;8.6;9.0+PTX"`` -> (SASS archs [(8, 0), (8, 6), (9, 0)], PTX archs [(9, 0)])."""
    sass, ptx = [], []
    for item in re.split(r"[;\s,]+", arch_list or ""):
        m = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", item.strip())
        if not m:
            continue
        cc = (int(m.group(1)), int(m.group(2)))
        sass.append(cc)
        if m.group(3):
            ptx.append(cc)
    return sass, ptx


def arch_reason(device_cc: tuple[int, int], arch_list: str | None) -> str | None:
    """Why a binary built for ``arch_list`` cannot run on a GPU of compute capability
    ``device_cc``, or None."""
    sass, ptx = parse_arch_list(arch_list)
    if not sass:
        return None  # unknown build: let the launch tell
    if any(cc[0] == device_cc[0] and cc[1] <= device_cc[1] for cc in sass):
        return None
    if any(cc <= device_cc for cc in ptx):
        return None  # the driver JIT-compiles the PTX
    built = ", ".join(f"sm_{a}{b}" for a, b in sass) + (" (+PTX " + ", ".join(f"sm_{a}{b}" for a, b in ptx) + ")"
                                                        if ptx else "")
    return (f"the CUDA kernels were built for {built}, not for this GPU (sm_{device_cc[0]}{device_cc[1]}); "
            f"rebuild with TORCH_CUDA_ARCH_LIST=\"{device_cc[0]}.{device_cc[1]}\": {REBUILD}")


@functools.lru_cache(maxsize=None)
def device_arch_reason(index: int) -> str | None:
    """:func:`arch_reason` for CUDA device ``index`` and the binary that is loaded."""
    cc = torch.cuda.get_device_capability(index)
    return arch_reason(cc, (_build_info() or {}).get("cuda_arch_list"))


def unavailable_reason(kernels: tuple[str, ...] = ()) -> str | None:
    """Why the CUDA kernels ``ascan_C::<kernels>`` cannot run in this process, or None."""
    mod, why = load_extension()
    if mod is None:
        return why
    info = _build_info() or {}
    if not mod.build_info().get("with_cuda"):
        return (f"ascan_kernels._C was built without CUDA kernels "
                f"({info.get('why_no_cuda') or 'see python -m ascan_kernels'}); "
                f"with a CUDA build of torch and a CUDA toolkit, rebuild: {REBUILD}")
    missing = [k for k in kernels if not has_kernel(k, "CUDA")]
    if missing:
        return f"ascan_kernels._C has no CUDA kernel for {', '.join(missing)}; rebuild: {REBUILD}"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return device_arch_reason(torch.cuda.current_device())


def capabilities() -> Capabilities:
    """What the ``cuda`` impls take: CUDA tensors in DTYPES, no empty inputs, and only on
    GPUs the binary has code for (checked in :func:`unavailable_reason`)."""
    return Capabilities(devices=("cuda",), dtypes=DTYPES, empty=False)


def param_reason(**params: torch.Tensor | None) -> str | None:
    """Why a small parameter's dtype cannot be read by the kernels (they read float32)."""
    for name, t in params.items():
        if t is not None and t.dtype not in DTYPES:
            return f"{name} dtype {t.dtype} not supported (float32, bfloat16, float16)"
    return None


def autocast_runs_fp32(x: torch.Tensor) -> bool:
    """CUDA autocast runs group_norm and layer_norm in float32 (float32 outputs)."""
    return x.device.type == "cuda" and autocast_enabled("cuda")


def f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A small parameter as the float32 contiguous tensor the kernels read."""
    return None if t is None else t.to(torch.float32).contiguous()
