"""Find a usable CUDA toolkit and the CUDA library headers, for setup.py (stdlib only).

A newcomer's machine often has an ``nvcc`` on PATH that is not inside a toolkit folder
(a wrapper script in /usr/local/bin, a conda shim), CUDA_HOME unset, and the CUDA
*library* headers torch's C++ API needs (cusparse.h, cublas_v2.h, cusolverDn.h) not in
the toolkit at all but in the ``nvidia-*`` pip packages that a CUDA build of torch
depends on. torch.utils.cpp_extension guesses CUDA_HOME as ``dirname(dirname(which
nvcc))``, which for such a wrapper is a folder without headers, and the build then dies
with "cuda.h: No such file or directory". This module answers instead, with a reason
whenever the answer is "no":

* :func:`find_toolkit` - the toolkit root: CUDA_HOME / CUDA_PATH if they hold a toolkit,
  else the folder ``nvcc`` itself reports (``nvcc --dryrun`` prints ``TOP=...``, which
  sees through wrappers and symlinks), else /usr/local/cuda;
* :func:`nvcc_version` - ``"13.0"``-style release of a toolkit's nvcc;
* :func:`library_header_dirs` - folders that hold the library headers (the toolkit's own
  include folder, else the pip packages' ``nvidia/<pkg>/include`` or ``nvidia/cu13/include``);
* :func:`preflight` - compiles a three-line file that includes those headers, so a missing
  one is reported by the compiler in a second instead of ten minutes into the build.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

# What torch's CUDA headers (ATen/cuda/CUDAContext.h) include besides the runtime.
LIBRARY_HEADERS = ("cusparse.h", "cublas_v2.h", "cusolverDn.h")
RUNTIME_HEADERS = ("cuda.h", "cuda_runtime_api.h")


def _log(msg: str) -> None:
    print(f"ascan setup: {msg}", file=sys.stderr, flush=True)


def include_dirs(home: str) -> list[str]:
    """The header folders of a toolkit root (flat layout and the targets/<arch> layout)."""
    out = [os.path.join(home, "include")]
    out += sorted(glob.glob(os.path.join(home, "targets", "*", "include")))
    return [d for d in out if os.path.isdir(d)]


def _has_header(dirs: list[str], name: str) -> bool:
    return any(os.path.isfile(os.path.join(d, name)) for d in dirs)


def toolkit_reason(home: str) -> str | None:
    """None when ``home`` is a CUDA toolkit root (nvcc + runtime headers), else what is missing."""
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"{home} has no bin/nvcc"
    dirs = include_dirs(home)
    missing = [h for h in RUNTIME_HEADERS if not _has_header(dirs, h)]
    if missing:
        return f"{home} has no {', '.join(missing)} (not a complete CUDA toolkit)"
    return None


def _nvcc_top(nvcc: str) -> str | None:
    """The toolkit root an nvcc executable belongs to, as nvcc itself reports it."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(m.group(1).strip()) if m else None


def find_toolkit(env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(toolkit root, how it was found) or (None, why none was found)."""
    env = os.environ if env is None else env
    tried: list[str] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = env.get(var)
        if home:
            why = toolkit_reason(home)
            if why is None:
                return home, f"{var}={home}"
            tried.append(f"{var}: {why}")
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        top = _nvcc_top(nvcc)
        for home in ([top] if top else []) + [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]:
            why = toolkit_reason(home)
            if why is None:
                return home, f"nvcc on PATH ({nvcc}) belongs to {home}"
            tried.append(f"nvcc on PATH ({nvcc}): {why}")
    for home in ("/usr/local/cuda", "/opt/cuda"):
        if os.path.isdir(home):
            why = toolkit_reason(home)
            if why is None:
                return home, f"found at {home}"
            tried.append(why)
    if not tried:
        return None, "no CUDA toolkit: CUDA_HOME is unset, no nvcc on PATH, no /usr/local/cuda"
    return None, "no usable CUDA toolkit (" + "; ".join(tried) + ")"


def nvcc_version(home: str) -> str | None:
    """``"13.0"`` for a toolkit whose nvcc says "release 13.0", else None."""
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _pip_nvidia_include_dirs(site_dirs: list[str]) -> list[str]:
    """Include folders of the nvidia-* pip packages: nvidia/cu13/include (CUDA 13 wheels)
    and nvidia/<library>/include (CUDA 12 wheels)."""
    out: list[str] = []
    for site in site_dirs:
        for pattern in ("nvidia/*/include", "nvidia/include"):
            out += sorted(glob.glob(os.path.join(site, pattern)))
    seen: set[str] = set()
    return [d for d in out if not (d in seen or seen.add(d))]


def library_header_dirs(home: str, site_dirs: list[str]) -> tuple[list[str], str | None]:
    """(extra include folders, None) that make every LIBRARY_HEADERS header findable, or
    ([], what is missing). Folders the toolkit already has are not repeated."""
    toolkit = include_dirs(home)
    extra: list[str] = []
    missing: list[str] = []
    pip_dirs = _pip_nvidia_include_dirs(site_dirs)
    for header in LIBRARY_HEADERS:
        if _has_header(toolkit + extra, header):
            continue
        where = next((d for d in pip_dirs if os.path.isfile(os.path.join(d, header))), None)
        if where is None:
            missing.append(header)
        else:
            extra.append(where)
    if missing:
        return [], (f"CUDA library headers {', '.join(missing)} are neither in the toolkit ({home}) nor in "
                    f"torch's nvidia pip packages")
    return extra, None


def preflight(home: str, extra_dirs: list[str], cxx: str | None = None) -> str | None:
    """Compile a file that includes the runtime and library headers; None or the compiler's complaint."""
    cxx = cxx or os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return "no C++ compiler found (c++/g++; set CXX)"
    src = "".join(f"#include <{h}>\n" for h in RUNTIME_HEADERS + LIBRARY_HEADERS) + "int main() { return 0; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ascan_cuda_preflight.cpp")
        with open(path, "w") as f:
            f.write(src)
        flags = [f"-I{d}" for d in include_dirs(home)] + [f"-I{d}" for d in extra_dirs]
        try:
            res = subprocess.run([cxx, "-fsyntax-only", *flags, path], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"the CUDA header check could not run {cxx}: {e}"
    if res.returncode != 0:
        first = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:300])
        return f"the CUDA headers do not compile: {first.strip()}"
    return None
