"""PEP 517 backend for ascan: setuptools, but compiled against the *installed* torch.

Why this exists: ``pip install -e .`` builds in an isolated environment. A C++/CUDA
extension for PyTorch must be compiled against the very torch it will be imported
by (the C++ ABI changes between releases), and listing ``torch`` in
``build-system.requires`` would make pip install a second, possibly different torch
into the throwaway build environment - several GB, and with pip >= 26.2 not bound
by any local version cap. So, when the isolated build environment has no torch, we
ask the target interpreter (``sys.executable``, with pip's isolation variables
removed) where its torch lives and append that site-packages directory to
``sys.path``. Appending keeps the build environment's own setuptools first.

If the target environment has no torch at all, we fall back to asking pip for one
(with a loud warning): the package still installs, compiled against that torch.
``pip install --no-build-isolation -e .`` needs none of this and keeps working.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from setuptools import build_meta as _orig

# Variables pip sets to isolate the build; the probe must see the real environment.
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PYTHONSAFEPATH")

_PROBE = (
    "import json, os, torch; "
    "print(json.dumps({'site': os.path.dirname(os.path.dirname(torch.__file__)), 'version': torch.__version__}))"
)


def _find_target_torch() -> dict | None:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=300, cwd=os.path.expanduser("~"))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


_FOUND = None
if not _torch_importable():
    _FOUND = _find_target_torch()
    if _FOUND is not None and _FOUND["site"] not in sys.path:
        sys.path.append(_FOUND["site"])
        print(f"ascan build: compiling against the installed torch {_FOUND['version']} from {_FOUND['site']}",
              file=sys.stderr)


def _extra_requires() -> list[str]:
    req = ["ninja"]
    if not _torch_importable():
        print("ascan build: WARNING: no torch in the target environment; pip will install one into the build "
              "environment and the extension will be compiled against it. Install torch first to avoid this.",
              file=sys.stderr)
        req.append("torch")
    return req


def get_requires_for_build_wheel(config_settings=None):
    return _orig.get_requires_for_build_wheel(config_settings) + _extra_requires()


def get_requires_for_build_editable(config_settings=None):
    return _orig.get_requires_for_build_editable(config_settings) + _extra_requires()


def get_requires_for_build_sdist(config_settings=None):
    return _orig.get_requires_for_build_sdist(config_settings)


build_wheel = _orig.build_wheel
build_sdist = _orig.build_sdist
build_editable = _orig.build_editable
prepare_metadata_for_build_wheel = _orig.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _orig.prepare_metadata_for_build_editable
