"""What an impl can run, as data, and the one table of priorities.

An impl declares :class:`Capabilities`: the devices and compute dtypes it takes, whether
it has a backward, the CUDA compute capabilities it runs on, whether it takes empty
tensors. The registry checks these before it asks the impl's own ``supports()`` (which
is left with what data cannot say: shapes, geometry, strides), so the common reasons are
worded once and the same for every backend, and ``python -m ascan_kernels`` and the
README's op table can list what each impl takes.

:data:`PRIORITY` orders the backends for automatic selection. A higher number is asked
first; the first impl whose checks pass runs; the eager reference is always last.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

# Why this order: a CUDA C++ kernel of ours is written for one job and shape family,
# Triton's are general; both were verified (interpreter, AOT, CPU builds of the math)
# but never timed on a GPU, so on CUDA this order is a design choice until measured
# (use(attention="sdpa") picks PyTorch's flash attention instead). On the CPU our oneDNN
# / C++ impls measured ahead of eager at the model's shapes, with `prefer` rules where
# they did not; PyTorch's sdpa beat the explicit-softmax reference. flash-attn 4 and 2
# (attention only) go above Triton: vendor-tuned kernels, also untimed here
# (ops/attention/flash_attn.py says why).
PRIORITY: dict[str, int] = {
    "cuda": 300,
    "flash_attn4": 260,
    "flash_attn": 250,
    "triton": 200,
    "cpu": 100,
    "sdpa": 50,
}
EAGER_PRIORITY = -(10**9)

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an impl takes. ``None`` in a field means "any".

    devices: device types of the inputs (``("cpu",)``, ``("cuda",)``).
    dtypes: compute dtypes (the autocast dtype for ops autocast casts, else the first
        input's dtype); ``dtypes_note`` is added to the refusal (e.g. what the CPU lacks).
    cuda_capability: (min, max) compute capability as (major, minor), either end None.
    empty: whether it takes inputs with no elements.
    timed_devices: device types where timing the impl measures the kernel (None: all). The
        Triton impls run on CPU tensors only under the interpreter, whose speed means nothing,
        so autotuning never times them there; ``untimed_note`` says why.
    """

    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    dtypes_note: str = ""
    cuda_capability: tuple[tuple[int, int] | None, tuple[int, int] | None] | None = None
    empty: bool = True
    timed_devices: tuple[str, ...] | None = None
    untimed_note: str = ""

    def untimed_reason(self, device_type: str) -> str | None:
        """Why autotuning must not time this impl on ``device_type`` tensors, or None."""
        if self.timed_devices is None or device_type in self.timed_devices:
            return None
        return f"not timed on {device_type}: {self.untimed_note or 'timing there measures nothing'}"

    def describe(self) -> str:
        """One line for tables: ``cpu; float32, bfloat16; no empty inputs``."""
        parts = ["/".join(self.devices) if self.devices else "any device"]
        parts.append(", ".join(dtype_name(d) for d in self.dtypes) if self.dtypes else "any float dtype")
        if self.cuda_capability:
            lo, hi = self.cuda_capability
            parts.append("sm_" + (f"{lo[0]}{lo[1]}" if lo else "?") + "+" + (f" to sm_{hi[0]}{hi[1]}" if hi else ""))
        if not self.empty:
            parts.append("no empty inputs")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class CallInfo:
    """What the capability checks look at, read once per call signature."""

    device: torch.device | None
    compute_dtype: torch.dtype | None
    empty: bool


def call_info(first: torch.Tensor | None, autocast_op: bool) -> CallInfo:
    """The device, compute dtype and emptiness of a call whose first tensor is ``first``."""
    if first is None:
        return CallInfo(None, None, False)
    dtype = first.dtype
    if autocast_op and first.is_floating_point():
        try:
            if torch.is_autocast_enabled(first.device.type):
                dtype = torch.get_autocast_dtype(first.device.type)
        except RuntimeError:  # a device type without autocast (meta)
            pass
    return CallInfo(first.device, dtype, first.numel() == 0)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of a CUDA device (None for other devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def capability_reason(caps: Capabilities, call: CallInfo,
                      device_capability: Callable[[torch.device], tuple[int, int] | None] = device_capability
                      ) -> str | None:
    """Why an impl with ``caps`` cannot take this call, or None. (The device check is
    separate, :func:`device_reason`, since the registry asks it before availability.)"""
    if caps.dtypes is not None and call.compute_dtype is not None and call.compute_dtype not in caps.dtypes:
        names = ", ".join(dtype_name(d) for d in caps.dtypes)
        note = f"; {caps.dtypes_note}" if caps.dtypes_note else ""
        return f"dtype {dtype_name(call.compute_dtype)} not supported ({names}){note}"
    if not caps.empty and call.empty:
        return "empty input: nothing to compute"
    if caps.cuda_capability is not None and call.device is not None and call.device.type == "cuda":
        cc = device_capability(call.device)
        lo, hi = caps.cuda_capability
        if cc is not None and ((lo is not None and cc < lo) or (hi is not None and cc > hi)):
            want = f"sm_{lo[0]}{lo[1]}" if lo else ""
            want += f" to sm_{hi[0]}{hi[1]}" if hi else " or newer"
            return f"compute capability {cc[0]}.{cc[1]}: this impl needs {want}"
    return None


def device_reason(caps: Capabilities | None, call: CallInfo) -> str | None:
    """Why an impl cannot take the call's device, or None (never worth logging: the impl
    is for another device)."""
    if caps is None or caps.devices is None or call.device is None or call.device.type in caps.devices:
        return None
    return f"device {call.device.type}: this impl takes {'/'.join(caps.devices)} tensors"
