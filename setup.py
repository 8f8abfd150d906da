"""Build script for the ``ascan_kernels._C`` extension (C++ CPU kernels; CUDA where it can).

Metadata lives in pyproject.toml; this file only decides what to compile, and never
lets a missing optional piece fail the install:

* ``ASCAN_SKIP_EXT=1``: nothing is compiled; a pure-Python install (the registry then
  runs the eager/Triton implementations and says why the C++ ones are unavailable).
* ``ASCAN_SKIP_CUDA=1``: the C++ CPU kernels only.
* Otherwise ``csrc/*.cpp`` and ``csrc/ops/<op>/*.cpp`` (``-O3``, OpenMP, torch's C++
  standard, ninja; ``MAX_JOBS`` caps its parallelism), plus the ``*.cu`` device code (nvcc)
  and the ``*_cuda.cpp`` torch bindings of the CUDA kernels when torch is a CUDA build and a CUDA toolkit
  with every header torch's CUDA API needs can be found (``build_backend/cuda_toolkit.py``:
  CUDA_HOME, else the toolkit nvcc on PATH belongs to, else /usr/local/cuda; library
  headers from the toolkit or from torch's nvidia pip packages), and nvcc's CUDA major
  version equals torch's. gencode for sm_80, sm_86, sm_90 (+PTX for sm_90, so newer GPUs
  can JIT it) unless ``TORCH_CUDA_ARCH_LIST`` says otherwise.
* When any CUDA condition fails, or the CUDA compile itself fails, the CPU part is built
  and the reason recorded; when the CPU compile fails (no C++ compiler), a pure-Python
  install with the reason recorded. ``ASCAN_REQUIRE_EXT=1`` turns both into errors.

Everything the compilers print goes to ``build/ascan-build.log`` as well as to pip's
output (which pip hides unless ``-v``). After the build ``ascan_kernels/_build_info.py``
records what was built, against what, and why anything was left out;
``python -m ascan_kernels`` prints it, and ``ascan_kernels._ext`` refuses a stale binary
with the command that rebuilds it. Object files are kept in ``build/`` so a re-install
recompiles only what changed.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import sys
import threading
import time

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_helper(name: str):
    """A module of build_backend/ (the build's own helpers; not an installed package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "build_backend", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_toolkit = _load_build_helper("cuda_toolkit")
PKG = "ascan_kernels"
INFO_NAME = "_build_info.py"
DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0+PTX"
BUILD_LOG = os.path.join(ROOT, "build", "ascan-build.log")
REBUILD_HINT = 'pip install -v -e ".[test]" shows the compiler output'


def log(msg: str) -> None:
    print(f"ascan setup: {msg}", file=sys.stderr, flush=True)


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def write_build_info(info: dict, path: str) -> None:
    """Atomically: a reader never sees a half-written file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write('"""Written by setup.py when the extension was built; do not edit, do not commit."""\n')
        f.write(f"BUILD_INFO = {info!r}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rel_sources(pattern: str) -> list[str]:
    # Paths relative to setup.py, as setuptools wants them.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def ops_abi() -> str:
    """``OPS_ABI`` from ascan_kernels/_ext.py, compiled into the binary (one place states it)."""
    with open(os.path.join(ROOT, PKG, "_ext.py")) as f:
        m = re.search(r"^OPS_ABI = (\d+)$", f.read(), re.MULTILINE)
    if m is None:
        raise RuntimeError("ascan setup: OPS_ABI not found in ascan_kernels/_ext.py")
    return m.group(1)


def cpu_isas() -> list[str]:
    """The instruction sets the CPU kernels are compiled for (one kernel_<isa>.cpp per ISA)."""
    isas = {os.path.basename(p)[len("kernel_"):-4] for p in glob.glob(os.path.join(ROOT, "csrc/ops/*/kernel_*.cpp"))}
    return sorted(isas & {"avx512", "avx2", "base"}, key=["avx512", "avx2", "base"].index)


def cpu_sources() -> list[str]:
    """Every C++ source but the CUDA bindings (``*_cuda.cpp``, which need the CUDA headers)."""
    return [p for p in rel_sources("csrc/*.cpp") + rel_sources("csrc/ops/*/*.cpp") if not p.endswith("_cuda.cpp")]


def cuda_sources() -> list[str]:
    """The device code (``*.cu``) and the torch bindings of the CUDA kernels (``*_cuda.cpp``)."""
    return rel_sources("csrc/cuda/*.cu") + rel_sources("csrc/ops/*/*.cu") + rel_sources("csrc/ops/*/*_cuda.cpp")


def record_only(reason: str) -> dict:
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


def cuda_plan(torch) -> tuple[dict | None, str | None]:
    """({"home", "found", "nvcc", "extra_includes"}, None) when the CUDA part can be built,
    else (None, why not). Looks only; changes nothing."""
    if flag("ASCAN_SKIP_CUDA"):
        return None, "ASCAN_SKIP_CUDA=1 was set at build time"
    if not torch.version.cuda:
        return None, f"torch {torch.__version__} is a CPU-only build"
    if not cuda_sources():
        return None, "csrc/ holds no CUDA sources"
    home, found = cuda_toolkit.find_toolkit()
    if home is None:
        return None, found
    nvcc = cuda_toolkit.nvcc_version(home)
    if nvcc is None or nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
        return None, (f"nvcc in {home} is CUDA {nvcc or '(unknown)'} but torch {torch.__version__} was built with "
                      f"CUDA {torch.version.cuda} (the major versions must match; point CUDA_HOME at a matching "
                      "toolkit)")
    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    extra, why = cuda_toolkit.library_header_dirs(home, [torch_site] + [p for p in sys.path if os.path.isdir(p)])
    if why:
        return None, why
    why = cuda_toolkit.preflight(home, extra)
    if why:
        return None, why
    return {"home": home, "found": found, "nvcc": nvcc, "extra_includes": extra}, None


@contextlib.contextmanager
def tee_output(path: str):
    """Copy everything written to fds 1 and 2 (ninja, the compilers) into ``path`` too."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    logf = open(path, "wb")

    def pump():
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            logf.write(chunk)
            os.write(saved[1], chunk)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)  # the last reference to the pipe's write end goes: the pump ends
        pumper.join(timeout=30)
        os.close(read_end)
        logf.close()
        os.close(saved[0])
        os.close(saved[1])


def first_error(path: str) -> str:
    """The first compiler error line in a build log (for the recorded reason)."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "error" in line.lower() and not line.lstrip().startswith("ninja: build stopped"):
                    return line.strip()[:300]
    except OSError:
        pass
    return "see the build log"


def extension_setup() -> dict:
    if flag("ASCAN_SKIP_EXT"):
        log("ASCAN_SKIP_EXT is set: installing pure Python, no extension compiled")
        return record_only("ASCAN_SKIP_EXT=1 was set at build time")
    try:
        import torch
    except ImportError as e:
        log(f"WARNING: torch is not importable ({e}); installing pure Python WITHOUT the C++ extension. "
            "Install torch, then re-run pip install -e .")
        return record_only(f"torch was not importable at build time ({e})")

    plan, why_no_cuda = cuda_plan(torch)
    if plan is not None:
        # torch.utils.cpp_extension reads CUDA_HOME when imported; the library headers from
        # the pip packages go on CPATH, after the toolkit's own (nvcc's -I) and the -I flags.
        os.environ["CUDA_HOME"] = plan["home"]
        os.environ["CPATH"] = os.pathsep.join(plan["extra_includes"] + [p for p in [os.environ.get("CPATH")] if p])
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    from torch.utils import cpp_extension as ce

    if plan is not None:
        ce.CUDA_HOME = plan["home"]

    sources = cpu_sources()
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-Wno-unknown-pragmas", f"-DASCAN_OPS_ABI={ops_abi()}"]  # torch headers use #pragma unroll
    link_flags: list[str] = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    nvcc_flags = ["-O3", "-DASCAN_WITH_CUDA"]

    def cpu_ext():
        return ce.CppExtension(f"{PKG}._C", sources, include_dirs=include_dirs,
                               extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

    def cuda_ext():
        return ce.CUDAExtension(f"{PKG}._C", sources + cuda_sources(),
                                include_dirs=include_dirs, define_macros=[("ASCAN_WITH_CUDA", None)],
                                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                                extra_link_args=link_flags)

    info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": plan is not None,
        "why_no_cuda": why_no_cuda,
        "cuda_home": plan["home"] if plan else None,
        "cuda_found": plan["found"] if plan else None,
        "nvcc_version": plan["nvcc"] if plan else None,
        "cuda_extra_includes": plan["extra_includes"] if plan else [],
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if plan else None,
        "cpu_isas": cpu_isas(),
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cxx_flags": " ".join(cxx_flags),
        "nvcc_flags": " ".join(nvcc_flags) if plan else None,
        "python": ".".join(map(str, sys.version_info[:3])),
        "build_log": BUILD_LOG,
    }

    class BuildExt(ce.BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            self._tmp_root = os.path.join(ROOT, "build", f"temp-ascan-py{sys.version_info[0]}{sys.version_info[1]}")
            # Keep ninja's objects between installs (pip would use a fresh temp dir); the
            # CUDA and CPU-only builds compile bindings.cpp with different macros.
            self.build_temp = self._tmp_root + ("-cuda" if info["with_cuda"] else "-cpu")

        def _compile(self, what: str) -> bool:
            log(f"building {PKG}._C {what} (log: {BUILD_LOG})")
            try:
                with tee_output(BUILD_LOG):
                    super().run()
            except Exception as e:  # noqa: BLE001 - any compiler failure is handled the same way
                log(f"the build failed: {type(e).__name__}: {e}")
                return False
            return True

        def run(self):
            # Said here, not when setup.py is evaluated: pip evaluates it several times
            # (build requirements, metadata, build) and only this one compiles.
            start = time.time()
            ok = False
            if info["with_cuda"]:
                ok = self._compile(f"with CUDA kernels (nvcc {info['nvcc_version']} from {info['cuda_home']}, "
                                   f"TORCH_CUDA_ARCH_LIST={info['cuda_arch_list']})")
                if not ok:
                    if flag("ASCAN_REQUIRE_EXT"):
                        raise RuntimeError(f"ascan setup: the CUDA build failed and ASCAN_REQUIRE_EXT=1: "
                                           f"{first_error(BUILD_LOG)} ({REBUILD_HINT})")
                    info.update(with_cuda=False, why_no_cuda=f"the CUDA compile failed: {first_error(BUILD_LOG)} "
                                                             f"(full log: {BUILD_LOG})",
                                cuda_arch_list=None, nvcc_flags=None)
                    log("WARNING: falling back to the CPU kernels only: " + info["why_no_cuda"])
                    self.extensions = [cpu_ext()]
                    self.distribution.ext_modules = self.extensions
                    self.build_temp = self._tmp_root + "-cpu"
            if not ok:
                ok = self._compile(f"with CPU kernels only ({info['why_no_cuda']})")
            pkg_dir = os.path.join(ROOT, PKG) if self.inplace else os.path.join(self.build_lib, PKG)
            if not ok:
                reason = f"the C++ compile failed: {first_error(BUILD_LOG)} (full log: {BUILD_LOG})"
                if flag("ASCAN_REQUIRE_EXT"):
                    raise RuntimeError(f"ascan setup: {reason} ({REBUILD_HINT})")
                log(f"WARNING: installing pure Python WITHOUT the C++ extension: {reason}")
                self.extensions = []
                self.distribution.ext_modules = []
                write_build_info({"skipped": reason}, os.path.join(pkg_dir, INFO_NAME))
                return
            info["build_seconds"] = round(time.time() - start, 1)
            info["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # Written only once the binary exists, next to it: in the source tree for
            # editable/in-place builds, in the wheel's tree otherwise.
            write_build_info(info, os.path.join(pkg_dir, INFO_NAME))
            log(f"compiled {PKG}._C in {info['build_seconds']} s "
                f"({'with CUDA kernels' if info['with_cuda'] else 'CPU kernels only: ' + str(info['why_no_cuda'])})")

    ext = cuda_ext() if plan is not None else cpu_ext()
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExt}}


setup(**extension_setup())
