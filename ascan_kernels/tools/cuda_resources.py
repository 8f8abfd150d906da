"""Per-kernel resource usage of the built extension, from ``cuobjdump --dump-resource-usage``.

No GPU is needed: cuobjdump reads the cubins embedded in ``ascan_kernels/_C*.so``. The
cuobjdump that ships with Triton is used when the CUDA toolkit's is not found.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess

_ARCH = re.compile(r"^\s*arch = (sm_\d+)")
_FUNC = re.compile(r"^\s*Function (\S+):")
_FIELDS = re.compile(r"(REG|STACK|SHARED|LOCAL):(\d+)")


@dataclasses.dataclass(frozen=True)
class KernelUsage:
    """One kernel of one architecture: registers per thread, static shared memory per block
    (bytes), local memory per thread (bytes; > 0 means spills or a stack array) and stack."""
    arch: str
    kernel: str  # demangled when c++filt is available
    mangled: str
    registers: int
    shared: int
    local: int
    stack: int


def find_cuobjdump() -> str | None:
    """The CUDA toolkit's cuobjdump (CUDA_HOME, PATH), else the one Triton ships, else None."""
    cands = []
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    cands.append(shutil.which("cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        cands.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def extension_path() -> str | None:
    """Path of the built ``ascan_kernels._C`` binary, without importing it."""
    spec = importlib.util.find_spec("ascan_kernels._C")
    return spec.origin if spec is not None else None


def _demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    try:
        out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return names
    lines = out.splitlines()
    return lines if len(lines) == len(names) else names


def parse_resource_usage(text: str) -> list[KernelUsage]:
    """Parse ``cuobjdump --dump-resource-usage`` output (one Function line, then its fields)."""
    rows: list[tuple[str, str, dict[str, int]]] = []
    arch, func = "?", None
    for line in text.splitlines():
        if m := _ARCH.match(line):
            arch = m.group(1)
        elif m := _FUNC.match(line):
            func = m.group(1)
        elif func is not None and "REG:" in line:
            rows.append((arch, func, {k: int(v) for k, v in _FIELDS.findall(line)}))
            func = None
    names = _demangle([r[1] for r in rows])
    return [KernelUsage(arch=a, kernel=n, mangled=f, registers=d.get("REG", 0), shared=d.get("SHARED", 0),
                        local=d.get("LOCAL", 0), stack=d.get("STACK", 0))
            for (a, f, d), n in zip(rows, names)]


def resource_usage(path: str | None = None) -> list[KernelUsage]:
    """Registers/shared/local memory of every CUDA kernel in the built extension, per arch.

    ``path`` defaults to the installed ``ascan_kernels._C``. Raises RuntimeError when there
    is no binary, no cuobjdump, or the binary holds no CUDA kernels (a CPU-only build).
    """
    path = path or extension_path()
    if path is None or not os.path.isfile(path):
        raise RuntimeError("ascan_kernels._C is not built (pip install -e .)")
    tool = find_cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA toolkit or Triton's nvidia backend)")
    res = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, timeout=300)
    usage = parse_resource_usage(res.stdout)
    if not usage:
        raise RuntimeError(f"no CUDA kernels in {path} (a CPU-only build?): {res.stderr.strip()[:500]}")
    return usage


def short_name(kernel: str) -> str:
    """``ascan::cuda::(anonymous namespace)::layer_norm_fwd_kernel<float, 4, 8>(...)`` ->
    ``layer_norm_fwd_kernel<float, 4, 8>``."""
    name = kernel.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name).split("(")[0]
    head, sep, args = name.partition("<")
    return head.rsplit("::", 1)[-1] + sep + args


def table(usage: list[KernelUsage] | None = None) -> str:
    """A text table of :func:`resource_usage`, one row per kernel and arch."""
    usage = resource_usage() if usage is None else usage
    rows = [(u.arch, short_name(u.kernel), str(u.registers), str(u.shared), str(u.local)) for u in usage]
    header = ("arch", "kernel", "regs", "smem B", "local B")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows])


if __name__ == "__main__":
    print(table())
