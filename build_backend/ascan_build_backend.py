"""In-tree PEP 517 build backend for ascan: setuptools, compiled against the *installed* torch.

Why this exists
---------------
``pip install -e .`` builds in an isolated environment that holds only the packages of
``[build-system] requires``. A PyTorch C++ extension must be compiled against the very
torch that will import it (torch's C++ API and ABI change between releases, even between
the CPU and CUDA builds of one release), so that torch is the one in the *target*
environment. Listing ``torch`` in ``build-system.requires`` would instead make pip
download a second torch into the throwaway build environment: several GB, possibly
another version or CUDA variant than the installed one, and with pip >= 26.2 not bound by
the version caps of a local pip config (pip does not apply ``constraint =`` files to
isolated build environments).

So, when ``import torch`` fails in the build process, this module asks the target
interpreter where its torch lives, with pip's isolation undone for that one query, and
APPENDS that site-packages directory to ``sys.path``. Appending keeps the build
environment's own setuptools ahead of the target's.

When the target has no torch yet (a fresh venv: ``pip install -e ".[test]"`` installs
torch as a dependency, but only *after* building this package), the build environment
needs one of its own. It must be the very release the target will get, or the binary
would be refused at import: so the backend asks the target's pip which torch it would
install for our ``torch`` requirement (``pip install --dry-run --report``, with the
user's index, caps and constraints) and requires exactly that version. If that query
fails (no pip in the target, e.g. uv) it requires the plain range, with a warning.

How pip isolates a build (pip 26): by default (the "virtual" build environment) the
backend runs under the target interpreter itself, ``sys.executable``, with
``PYTHONNOUSERSITE=1`` and ``PYTHONPATH`` pointing at a ``sitecustomize`` that removes the
target's site-packages from ``sys.path``; so running ``sys.executable`` with those two
variables removed sees the target environment. With ``--use-feature=venv-isolation`` the
backend runs in a fresh venv whose interpreter has no access to the target at all; then
the target is looked for through ``VIRTUAL_ENV`` / ``CONDA_PREFIX`` and through the
interpreter running pip (the nearest ancestor process that is a Python). A candidate
counts only if its Python version equals the build interpreter's, since the extension is
compiled for this interpreter's ABI.

``pip install --no-build-isolation -e .`` needs none of this (torch is importable) and
keeps working; ``ASCAN_SKIP_EXT=1`` (pure-Python install) needs neither torch nor ninja.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from setuptools import build_meta as _setuptools

# Environment variables pip sets (or that could otherwise hide the target environment).
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONSTARTUP")

# Locates torch without importing it (fast: no CUDA libraries are loaded).
_PROBE = r"""
import json, os, sys
from importlib import metadata, util
spec = util.find_spec("torch")
if spec is None or not spec.origin:
    raise SystemExit(3)
try:
    version = metadata.version("torch")
except metadata.PackageNotFoundError:
    version = "unknown"
print(json.dumps({"site": os.path.dirname(os.path.dirname(spec.origin)), "version": version,
                  "python": list(sys.version_info[:2])}))
"""


def _log(msg: str) -> None:
    print(f"ascan build backend: {msg}", file=sys.stderr, flush=True)


def _skip_ext() -> bool:
    return os.environ.get("ASCAN_SKIP_EXT", "").strip() not in ("", "0")


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _ancestor_pythons(max_depth: int = 4) -> list[str]:
    """Interpreters of the processes above this one (pip's, typically), Linux only."""
    found: list[str] = []
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode()
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if os.path.isabs(argv0) and "python" in os.path.basename(argv0):
            found.append(argv0)
    return found


def _candidate_interpreters() -> list[str]:
    cands = [sys.executable]
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(var)
        if prefix:
            cands += [os.path.join(prefix, "bin", "python"), os.path.join(prefix, "python.exe")]
    cands += _ancestor_pythons()
    seen, out = set(), []
    for c in cands:
        if c and c not in seen and os.path.isfile(c):
            seen.add(c)
            out.append(c)
    return out


def _probe(python: str) -> dict | None:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    try:
        res = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                             cwd=os.path.expanduser("~"))  # not the source tree: no stray 'torch' dir
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    try:
        found = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if tuple(found.get("python", ())) != tuple(sys.version_info[:2]):
        return None  # another Python: its torch would not fit this interpreter's ABI
    return found


def _find_target_torch() -> dict | None:
    for python in _candidate_interpreters():
        found = _probe(python)
        if found is not None:
            found["interpreter"] = python
            return found
    return None


TARGET_TORCH: dict | None = None
if not _skip_ext() and not _torch_importable():
    TARGET_TORCH = _find_target_torch()
    if TARGET_TORCH is not None:
        if TARGET_TORCH["site"] not in sys.path:
            sys.path.append(TARGET_TORCH["site"])
        _log(f"compiling against the installed torch {TARGET_TORCH['version']} from {TARGET_TORCH['site']} "
             f"(found via {TARGET_TORCH['interpreter']})")


def _torch_requirement() -> str:
    """The ``torch`` entry of pyproject.toml's dependencies (one place states it)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return "torch"
    m = re.search(r'^dependencies\s*=\s*\[(.*?)\]', text, re.MULTILINE | re.DOTALL)
    for item in re.findall(r'"([^"]+)"', m.group(1) if m else ""):
        if re.match(r"torch\b(?![-_.\w])", item.strip()):
            return item.strip()
    return "torch"


def _version_target_would_install(requirement: str) -> str | None:
    """The torch version the target's pip resolves ``requirement`` to, or None."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    for python in _candidate_interpreters():
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--ignore-installed",
               "--report", "-", requirement]
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                                 cwd=os.path.expanduser("~"))
            report = json.loads(res.stdout) if res.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            report = None
        for item in (report or {}).get("install", []):
            meta = item.get("metadata", {})
            if str(meta.get("name", "")).lower() == "torch" and meta.get("version"):
                return str(meta["version"])
    return None


def _extra_requires() -> list[str]:
    if _skip_ext():
        return []
    req = ["ninja"]
    if not _torch_importable():
        wanted = _torch_requirement()
        version = _version_target_would_install(wanted)
        if version is not None:
            _log(f"no torch in the target environment yet: compiling against torch=={version}, the release pip "
                 f"will install there for {wanted!r} (a copy of it goes into the temporary build environment)")
            req.append(f"torch=={version}")
        else:
            _log(f"WARNING: no torch in the target environment, and its pip could not say which torch it will "
                 f"install for {wanted!r}. The extension is compiled against whatever torch the build "
                 "environment gets; if that differs from the one installed later, ascan_kernels refuses the "
                 "binary and says how to rebuild. Installing torch first avoids this.")
            req.append(wanted)
    return req


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _extra_requires()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _extra_requires()


def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)


# Every other hook is setuptools' own.
prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_wheel = _setuptools.build_wheel
build_editable = _setuptools.build_editable
build_sdist = _setuptools.build_sdist

__all__ = [
    "get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist",
    "prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable",
    "build_wheel", "build_editable", "build_sdist",
]
