"""What this process can run, and why not: ``python -m ascan_kernels [--json]``.

The answer to "which kernels will I get here?" in one place: versions (torch, CUDA,
cuDNN, Triton, compilers), the device (CPU model and instruction sets, GPUs and their
compute capability), how the extension was built (CPU ISAs, CUDA archs, or why CUDA was
left out, and where the build log is), and every op x impl with ``ok`` or the reason it
cannot run in this process. Per-call checks (dtype, shape, grad) are not part of this
report; ``ascan_kernels.trace()`` shows those.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from typing import Any

import torch

from . import autotune_cli, autotuning, registry
from ._host import cpu_model_and_flags
from ._ext import _build_info, load_extension, ops_with_kernel
from ._version import __version__
from .backends import triton as triton_runtime

# The /proc/cpuinfo flags that decide which CPU kernels and oneDNN paths run.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16",
             "amx_bf16", "amx_tile", "avx_ne_convert")


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict[str, Any]:
    """CPU model, threads, ATen's capability level and the ISA flags that matter here."""
    model, flags = cpu_model_and_flags()
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_flags": [f for f in CPU_FLAGS if f in flags],
        "onednn_bf16": onednn_bf16,
    }


def gpu_info() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count})
    return out


def extension_info() -> dict[str, Any]:
    """Load status, what the binary says of itself, and what setup.py recorded."""
    mod, why = load_extension()
    info: dict[str, Any] = {"loaded": mod is not None, "reason": why, "build": _build_info(),
                            "kernels": {key: list(ops_with_kernel(key)) for key in ("CPU", "CUDA")}}
    if mod is not None:
        try:
            info["binary"] = dict(mod.build_info())
            info["cpu_kernel_isa"] = mod.cpu_kernel_isa()
        except Exception as e:  # a binary missing an entry point: report, do not fail
            info["binary_error"] = f"{type(e).__name__}: {e}"
    return info


def collect() -> dict[str, Any]:
    """The whole report as plain data (what ``--json`` prints)."""
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "versions": {
            "ascan": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": cuda,
            "cudnn": cudnn,
            "triton": _dist_version("triton"),
            "numpy": _dist_version("numpy"),
        },
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "triton": {"reason": triton_runtime.unavailable_reason(), "interpreter": triton_runtime.interpreting()},
        "extension": extension_info(),
        "overrides": os.environ.get("ASCAN_KERNELS", ""),
        "autotune": autotuning.cache_report(),
        "ops": {op: {impl.name: {"status": registry.get_op(op).availability(impl) or "ok", "doc": impl.doc,
                                 "priority": impl.priority}
                     for impl in registry.get_op(op).impls}
                for op in registry.list_ops()},
    }


def _build_lines(ext: dict[str, Any]) -> list[str]:
    build = ext.get("build") or {}
    lines = []
    if ext["loaded"]:
        b = ext.get("binary", {})
        lines.append(f"  ascan_kernels._C: loaded (compiled with {b.get('compiler', '?')}, against torch "
                     f"{b.get('torch_version', '?')}; CPU kernels run as {ext.get('cpu_kernel_isa', '?')})")
    else:
        lines.append(f"  ascan_kernels._C: NOT loaded: {ext['reason']}")
    if "skipped" in build:
        lines.append(f"  build: skipped: {build['skipped']}")
        return lines
    if build:
        lines.append(f"  CPU ISAs compiled: {', '.join(build.get('cpu_isas') or ['?'])}")
        for key, names in ext.get("kernels", {}).items():
            lines.append(f"  ascan_C ops with a {key} kernel: {', '.join(names) or 'none'}")
        if build.get("with_cuda"):
            lines.append(f"  CUDA kernels: built (nvcc {build.get('nvcc_version')} from {build.get('cuda_home')}, "
                         f"archs {build.get('cuda_arch_list')}; toolkit: {build.get('cuda_found')})")
        else:
            lines.append(f"  CUDA kernels: not built: {build.get('why_no_cuda')}")
        if build.get("build_log"):
            lines.append(f"  build log: {build['build_log']} (built {build.get('built_at', '?')} in "
                         f"{build.get('build_seconds', '?')} s)")
    return lines


def format_report(data: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    v, cpu = data["versions"], data["cpu"]
    lines = [f"ascan {v['ascan']} | python {v['python']} | torch {v['torch']} (CUDA {v['torch_cuda'] or 'none'}, "
             f"cuDNN {v['cudnn'] or 'none'}) | triton {v['triton'] or 'not installed'}", "",
             "device:",
             f"  CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs, torch uses {cpu['torch_threads']} threads",
             f"  CPU ISA: ATen {cpu['aten_capability']}; flags {' '.join(cpu['isa_flags']) or 'none of interest'}; "
             f"oneDNN bf16 {'yes' if cpu['onednn_bf16'] else 'no (needs AVX512-BW/VL/DQ or AVX-NE-CONVERT)'}"]
    if data["gpus"]:
        for g in data["gpus"]:
            lines.append(f"  GPU {g['index']}: {g['name']}, compute capability {g['capability']}, "
                         f"{g['memory_gib']} GiB, {g['sms']} SMs")
    else:
        lines.append("  GPU: none (torch.cuda.is_available() is False)")
    t = data["triton"]
    lines.append(f"  Triton: {'runs' if t['reason'] is None else t['reason']}"
                 + (" (TRITON_INTERPRET=1: CPU interpreter)" if t["interpreter"] else ""))
    lines += ["", "extension:", *_build_lines(data["extension"]), ""]
    if data["overrides"]:
        lines += [f"ASCAN_KERNELS={data['overrides']}", ""]
    lines += [autotuning.format_cache_report(data["autotune"], limit=12), ""]
    lines.append("ops (impls in priority order; per-call checks are in ascan_kernels.trace()):")
    width = max(len(i) for impls in data["ops"].values() for i in impls)
    for op, impls in data["ops"].items():
        lines.append(f"  {op}")
        for name, d in impls.items():
            lines.append(f"    {name.ljust(width)}  {d['status']}")
    return "\n".join(lines)


def _described_impls(name: str) -> list:
    """The impls of op ``name`` as the code declares them: a Triton impl that cannot run in
    this process is a placeholder without its description, so its module is asked (when
    Triton is installed) for the real one."""
    op = registry.get_op(name)
    out = []
    for impl in op.impls:
        if impl.name == "triton" and triton_runtime.unavailable_reason() is not None \
                and importlib.util.find_spec("triton") is not None:
            module = importlib.import_module(f"{op.reference.__module__}.triton")
            impl = module.impls()[name]
        out.append(impl)
    return out


def op_table() -> str:
    """The README's op table, from the registry: every op, its impls in priority order,
    what each takes (its declared capabilities) and what it runs (its doc). It describes
    the code, not this machine (Triton's impls take CUDA tensors; the CPU interpreter is
    for tests)."""
    rows = ["| op | impl | priority | devices | dtypes | backward | what runs |", "|---|---|---:|---|---|---|---|"]
    for name in registry.list_ops():
        for i, impl in enumerate(_described_impls(name)):
            caps = impl.caps
            devices = "cuda" if impl.name == "triton" else ("/".join(caps.devices) if caps and caps.devices else "any")
            dtypes = ", ".join(str(d).replace("torch.", "") for d in caps.dtypes) if caps and caps.dtypes else "any"
            prio = "last" if impl.name == registry.EAGER else str(impl.priority)
            rows.append(f"| {'`' + name + '`' if i == 0 else ''} | `{impl.name}` | {prio} | {devices} | {dtypes} | "
                        f"{'yes' if impl.autograd else 'no'} | {impl.doc} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ascan_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--op-table", action="store_true", help="print the README's op table (from the registry)")
    ap.epilog = "python -m ascan_kernels autotune --model NAME --batch N: fill the autotune cache for a model"
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["autotune"]:
        return autotune_cli.main(argv[1:])
    args = ap.parse_args(argv)
    if args.op_table:
        print(op_table())
        return 0
    data = collect()
    print(json.dumps(data, indent=1, default=str) if args.json else format_report(data))
    return 0
