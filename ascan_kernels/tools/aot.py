"""Ahead-of-time compilation of the Triton kernels for real GPUs, without a GPU.

Each op's Triton module (``ascan_kernels/ops/<op>/triton.py``) lists its kernels as
:class:`~ascan_kernels.backends.triton.KernelSpec` s (``aot_specs()``): the
``@triton.jit`` function, the type of every argument, the fixed constexprs and the
autotune configs. :func:`compile_spec` compiles one spec at one config for one
compute capability with ``triton.compile(ASTSource(...), target=GPUTarget(...))``
and reads back what the hardware would see: registers, spills (local memory) and
shared memory from ``cuobjdump --dump-resource-usage`` and the compiled metadata,
and whether the PTX uses tensor-core instructions (``mma`` on sm_80, ``wgmma`` on
sm_90).

Do not call this in a process with ``TRITON_INTERPRET=1``: the interpreter replaces
the JIT functions (``check_environment`` says so).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import tempfile

from .. import ops
from ..backends.triton import KernelSpec, interpreting

# Shared memory a block may opt into, per compute capability (CUDA C programming
# guide, "Technical specifications per compute capability").
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
MAX_REGS_PER_THREAD = 255
TARGETS = (80, 90)


@dataclasses.dataclass
class CompileResult:
    name: str
    cc: int
    config: str
    registers: int
    spills: int          # bytes of local memory per thread (register spills, stack)
    shared: int          # bytes of shared memory per block (static + dynamic)
    num_warps: int
    tensor_cores: str    # the tensor-core instruction family found in the PTX, or ""
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_environment() -> None:

    if interpreting():
        raise RuntimeError("ascan_kernels.tools.aot: unset TRITON_INTERPRET to compile for GPUs "
                           "(the interpreter replaces the JIT functions)")


def config_str(cfg) -> str:
    kw = ",".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items()))
    return f"{kw},w{cfg.num_warps},s{cfg.num_stages}"


def cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cuobjdump not found at {path} (it ships with triton's NVIDIA backend)")
    return path


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack, static shared and local bytes of the (single) function in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([cuobjdump(), "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    finally:
        os.unlink(path)
    m = _RES.search(out)
    if m is None:
        raise RuntimeError(f"could not parse cuobjdump output:\n{out}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "static_shared": shared, "local": local}


def tensor_core_family(ptx: str) -> str:
    if re.search(r"^\s*wgmma\.mma_async", ptx, re.M):
        return "wgmma"
    if re.search(r"^\s*mma\.sync", ptx, re.M):
        return "mma"
    return ""


def compile_spec(spec: KernelSpec, cfg, cc: int) -> CompileResult:
    """Compile ``spec`` at ``cfg`` for ``sm_<cc>`` and check registers, spills, smem, tensor cores."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    check_environment()
    constexprs = {**spec.constexprs, **cfg.kwargs}
    missing = [k for k, t in spec.signature.items() if t == "constexpr" and k not in constexprs]
    if missing:
        raise ValueError(f"{spec.name}: constexprs without a value: {missing}")
    src = ASTSource(fn=spec.fn, signature=dict(spec.signature), constexprs=constexprs)
    problems: list[str] = []
    try:
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    except Exception as e:  # report, do not crash the whole sweep
        msg = str(e).strip().splitlines()
        return CompileResult(spec.name, cc, config_str(cfg), 0, 0, 0, cfg.num_warps, "",
                             [f"compile error: {msg[-1] if msg else type(e).__name__}"])
    res = resource_usage(k.asm["cubin"])
    shared = max(int(k.metadata.shared), res["static_shared"])
    spills = res["local"] + res["stack"]
    tc = tensor_core_family(k.asm["ptx"])
    limit = SHARED_LIMIT[cc]
    if spills:
        problems.append(f"spills: {res['local']} B local, {res['stack']} B stack per thread")
    if shared > limit:
        problems.append(f"shared memory {shared} B > sm_{cc} limit {limit} B")
    if spec.uses_dot:
        # Hopper's tensor cores are fed by warp-group wgmma; mma.sync still runs there
        # but at a fraction of the rate, so on sm_90 it counts as a failure too.
        want = "wgmma" if cc >= 90 else "mma"
        if tc != want:
            problems.append(f"no {want} instruction in the PTX (found {tc or 'none'}); "
                            + ("wgmma wants num_warps a multiple of 4 and a 64-row tile per warp group" if cc >= 90 else
                               "tl.dot did not lower to tensor cores"))
    return CompileResult(spec.name, cc, config_str(cfg), res["registers"], spills, shared,
                         cfg.num_warps, tc, problems)


def triton_modules() -> dict[str, str]:
    """op package name -> the module path of its Triton kernels, found by walking
    ascan_kernels.ops (no list to keep in step with the ops). A package whose triton.py
    only wraps another op's kernels (conv_bn folds BN, then runs conv_bias_act's) has no
    ``aot_specs`` and is left out."""
    out = {}
    for info in pkgutil.iter_modules(ops.__path__):
        name = f"{ops.__name__}.{info.name}.triton"
        if info.ispkg and importlib.util.find_spec(name) is not None \
                and hasattr(importlib.import_module(name), "aot_specs"):
            out[info.name] = name
    return out


def specs_of(names: list[str] | None = None) -> list[KernelSpec]:
    """The kernel variants of the named op packages' Triton modules (all by default)."""
    mods = triton_modules()
    unknown = sorted(set(names or ()) - set(mods))
    if unknown:
        raise ValueError(f"no Triton kernels in op package(s) {unknown}; packages with kernels: {sorted(mods)}")
    return [s for n in (names or sorted(mods)) for s in importlib.import_module(mods[n]).aot_specs()]


def all_specs() -> list[KernelSpec]:
    """Every kernel variant of every op's Triton kernels."""
    return specs_of()


def sweep(specs: list[KernelSpec] | None = None, targets=TARGETS, jobs: int | None = None) -> list[CompileResult]:
    """Compile every spec at every config for every target; results in a stable order."""
    specs = all_specs() if specs is None else specs
    work = [(s, c, cc) for s in specs for c in s.configs for cc in targets]
    return [compile_spec(s, c, cc) for s, c, cc in work]


def format_results(results: list[CompileResult]) -> str:
    rows = [("kernel", "sm", "config", "regs", "spill B", "smem B", "tensor cores", "status")]
    for r in results:
        rows.append((r.name, str(r.cc), r.config, str(r.registers), str(r.spills), str(r.shared),
                     r.tensor_cores or "-", "ok" if r.ok else "; ".join(r.problems)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ascan_kernels.tools.aot",
                                 description="Compile every Triton kernel at every autotune config for "
                                             "sm_80 and sm_90; fail on compile errors, spills, shared "
                                             "memory over the limit, or dot kernels without tensor cores.")
    ap.add_argument("--module", action="append", help="only these op packages (conv_bn, attention, ...)")
    ap.add_argument("--cc", action="append", type=int, help="compute capabilities (default 80 and 90)")
    args = ap.parse_args(argv)
    specs = specs_of(args.module)
    results = sweep(specs, tuple(args.cc or TARGETS))
    print(format_results(results))
    bad = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(bad)}/{len(results)} compiled clean")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
