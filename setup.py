"""Build script for the ``ascan_kernels._C`` extension (C++ CPU kernels; CUDA where built).

Metadata lives in pyproject.toml; this file only decides what to compile:

* ``ASCAN_SKIP_EXT=1``: nothing is compiled; a pure-Python install (the registry then
  runs the eager/Triton implementations and says why the C++ ones are unavailable).
* torch not importable: the same, with a warning.
* Otherwise ``csrc/*.cpp`` and ``csrc/cpu/*.cpp`` as a ``CppExtension`` (``-O3``,
  OpenMP, torch's C++ standard), built with ninja (``MAX_JOBS`` caps its parallelism).
* Plus ``csrc/cuda/*.cu`` (device code, nvcc) and ``csrc/cuda/*.cpp`` (their torch binding,
  g++) as a ``CUDAExtension`` when torch is a CUDA build, ``CUDA_HOME`` is found and that
  folder holds .cu sources: gencode for sm_80, sm_86 and sm_90 unless
  ``TORCH_CUDA_ARCH_LIST`` says otherwise, ``-DASCAN_WITH_CUDA``; nvcc's CUDA major version
  must equal torch's. Otherwise the CPU part alone, and the build says why (once).

After a successful compile ``ascan_kernels/_build_info.py`` records what the binary was
built against; ``ascan_kernels._ext`` compares it with the running torch and refuses a
stale binary with the command that rebuilds it. Object files are kept in ``build/`` so a
re-install recompiles only what changed.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PKG = "ascan_kernels"
INFO_NAME = "_build_info.py"
DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0"


def log(msg: str) -> None:
    print(f"ascan setup: {msg}", file=sys.stderr, flush=True)


def write_build_info(info: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write('"""Written by setup.py when the extension was built; do not edit, do not commit."""\n')
        f.write(f"BUILD_INFO = {info!r}\n")
    os.replace(tmp, path)


def rel_sources(pattern: str) -> list[str]:
    # Paths relative to setup.py, as setuptools wants them.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def nvcc_version(cuda_home: str) -> str | None:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def pure_python(reason: str) -> dict:
    """No extension; the package records why when it is built (not when pip merely asks
    for metadata or build requirements, which also runs this file)."""
    from setuptools.command.build_py import build_py

    class BuildPyRecordingSkip(build_py):
        def run(self):
            super().run()
            editable = getattr(self, "editable_mode", False)
            pkg_dir = os.path.join(ROOT, PKG) if editable else os.path.join(self.build_lib, PKG)
            write_build_info({"skipped": reason}, os.path.join(pkg_dir, INFO_NAME))

    return {"cmdclass": {"build_py": BuildPyRecordingSkip}}


def extension_setup() -> dict:
    if os.environ.get("ASCAN_SKIP_EXT", "").strip() not in ("", "0"):
        log("ASCAN_SKIP_EXT is set: installing pure Python, no extension compiled")
        return pure_python("ASCAN_SKIP_EXT=1 was set at build time")
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except ImportError as e:
        log(f"WARNING: torch is not importable ({e}); installing pure Python WITHOUT the C++ extension. "
            "Install torch first, then re-run pip install -e .")
        return pure_python(f"torch was not importable at build time ({e})")

    sources = rel_sources("csrc/*.cpp") + rel_sources("csrc/cpu/*.cpp")
    cuda_sources = rel_sources("csrc/cuda/*.cu")
    cuda_binding_sources = rel_sources("csrc/cuda/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-Wno-unknown-pragmas"]  # torch headers use #pragma unroll
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")

    why_no_cuda = None
    if not torch.version.cuda:
        why_no_cuda = "torch is a CPU-only build"
    elif ce.CUDA_HOME is None:
        why_no_cuda = "no CUDA toolkit found (set CUDA_HOME)"
    elif not cuda_sources:
        why_no_cuda = "csrc/cuda/ holds no .cu sources yet"
    with_cuda = why_no_cuda is None

    nvcc_flags: list[str] = []
    if with_cuda:
        nvcc = nvcc_version(ce.CUDA_HOME)
        if nvcc is None or nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
            raise RuntimeError(
                f"ascan setup: nvcc in CUDA_HOME={ce.CUDA_HOME} is CUDA {nvcc or '(unknown)'}, but torch "
                f"{torch.__version__} was built with CUDA {torch.version.cuda}: the major versions must match. "
                "Point CUDA_HOME at a matching toolkit, or set ASCAN_SKIP_EXT=1 for a pure-Python install.")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        nvcc_flags = ["-O3", "-DASCAN_WITH_CUDA"]
        ext = ce.CUDAExtension(f"{PKG}._C", sources + cuda_binding_sources + cuda_sources, include_dirs=include_dirs,
                               define_macros=[("ASCAN_WITH_CUDA", None)],
                               extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                               extra_link_args=link_flags)
        what = (f"with CUDA kernels (nvcc {nvcc}, "
                f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = ce.CppExtension(f"{PKG}._C", sources, include_dirs=include_dirs,
                              extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
        what = f"with CPU kernels only: {why_no_cuda}"

    info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": with_cuda,
        "why_no_cuda": why_no_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cxx_flags": " ".join(cxx_flags),
        "nvcc_flags": " ".join(nvcc_flags) if with_cuda else None,
        "python": ".".join(map(str, sys.version_info[:3])),
    }

    class BuildExt(ce.BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            # Keep ninja's objects between installs (pip would use a fresh temp dir).
            self.build_temp = os.path.join(ROOT, "build", f"temp-ascan-py{sys.version_info[0]}{sys.version_info[1]}")

        def run(self):
            # Said here, not when setup.py is evaluated: pip evaluates it several times
            # (build requirements, metadata, build) and only this one compiles.
            log(f"building {PKG}._C {what}")
            start = time.time()
            super().run()
            info["build_seconds"] = round(time.time() - start, 1)
            info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # Written only once the binary exists, next to it: in the source tree for
            # editable/in-place builds, in the wheel's tree otherwise.
            pkg_dir = os.path.join(ROOT, PKG) if self.inplace else os.path.join(self.build_lib, PKG)
            write_build_info(info, os.path.join(pkg_dir, INFO_NAME))
            log(f"compiled {PKG}._C in {info['build_seconds']} s")

    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExt}}


setup(**extension_setup())
