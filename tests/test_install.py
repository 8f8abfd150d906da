"""The install's decisions, without compiling: finding a CUDA toolkit (through wrapper
scripts on PATH), the CUDA library headers (toolkit or torch's nvidia pip packages), the
header preflight, the torch pin of the build backend, and the metadata a newcomer sees
(LICENSE, version). The real builds run in CI (.ci/run: a fresh venv, nvcc on PATH with
CUDA_HOME unset, and once with ASCAN_SKIP_CUDA=1)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import stat

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_build_helper(name: str):
    """A module of build_backend/ (the build's own helpers, not an installed package), as setup.py loads it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "build_backend" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


backend = _load_build_helper("ascan_build_backend")
cuda_toolkit = _load_build_helper("cuda_toolkit")


def _executable(path: pathlib.Path, body: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def fake_toolkit(root: pathlib.Path, release: str = "13.0", headers=("cuda.h", "cuda_runtime_api.h"),
                 layout: str = "targets") -> pathlib.Path:
    """A folder that looks like a CUDA toolkit: bin/nvcc answering --version and --dryrun."""
    home = root / f"cuda-{release}"
    inc = home / ("targets/x86_64-linux/include" if layout == "targets" else "include")
    inc.mkdir(parents=True)
    for h in headers:
        (inc / h).write_text("/* fake */\n")
    _executable(home / "bin" / "nvcc",
                f'case "$1" in --version) echo "Cuda compilation tools, release {release}, V{release}.0";;\n'
                f'  --dryrun) echo "#$ TOP={home}/bin/.." >&2;;\nesac\n')
    return home


def test_toolkit_from_cuda_home(tmp_path):
    home = fake_toolkit(tmp_path)
    found, how = cuda_toolkit.find_toolkit({"CUDA_HOME": str(home), "PATH": ""})
    assert found == str(home) and how == f"CUDA_HOME={home}"
    assert cuda_toolkit.nvcc_version(str(home)) == "13.0"


def test_toolkit_behind_a_wrapper_nvcc_on_path(tmp_path):
    """The newcomer's case: /usr/local/bin/nvcc is a shell wrapper, CUDA_HOME is unset.
    torch would guess /usr/local (no headers); nvcc's own TOP= names the real toolkit."""
    home = fake_toolkit(tmp_path)
    wrappers = tmp_path / "usr_local_bin"
    _executable(wrappers / "nvcc", f'exec {home}/bin/nvcc "$@"\n')
    found, how = cuda_toolkit.find_toolkit({"PATH": str(wrappers)})
    assert found == os.path.realpath(home)
    assert "nvcc on PATH" in how and str(wrappers / "nvcc") in how


def test_cuda_home_without_headers_is_reported_and_skipped(tmp_path):
    broken = fake_toolkit(tmp_path / "a", headers=())
    good = fake_toolkit(tmp_path / "b")
    found, _ = cuda_toolkit.find_toolkit({"CUDA_HOME": str(broken), "PATH": str(good / "bin")})
    assert found == os.path.realpath(good)
    found, why = cuda_toolkit.find_toolkit({"CUDA_HOME": str(broken), "PATH": ""})
    if found is None:  # (a real /usr/local/cuda on this machine would be found instead)
        assert "no cuda.h, cuda_runtime_api.h" in why and "CUDA_HOME" in why


def test_no_toolkit_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_toolkit.os.path, "isdir", lambda p: False)
    found, why = cuda_toolkit.find_toolkit({"PATH": str(tmp_path)})
    assert found is None and "no CUDA toolkit" in why


def test_library_headers_from_the_nvidia_pip_packages(tmp_path):
    home = fake_toolkit(tmp_path)
    site = tmp_path / "site-packages"
    cu13 = site / "nvidia" / "cu13" / "include"
    cu13.mkdir(parents=True)
    for h in cuda_toolkit.LIBRARY_HEADERS:
        (cu13 / h).write_text("/* fake */\n")
    extra, why = cuda_toolkit.library_header_dirs(str(home), [str(site)])
    assert why is None and extra == [str(cu13)]


def test_library_headers_missing_everywhere(tmp_path):
    home = fake_toolkit(tmp_path)
    extra, why = cuda_toolkit.library_header_dirs(str(home), [str(tmp_path / "empty-site")])
    assert extra == [] and "cusparse.h" in why and "nvidia pip packages" in why


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_preflight_compiles_or_names_the_missing_header(tmp_path):
    home = fake_toolkit(tmp_path, headers=cuda_toolkit.RUNTIME_HEADERS + cuda_toolkit.LIBRARY_HEADERS)
    assert cuda_toolkit.preflight(str(home), []) is None
    (next(home.rglob("cusparse.h"))).unlink()
    why = cuda_toolkit.preflight(str(home), [])
    assert why is not None and "cusparse.h" in why


def test_backend_reads_the_torch_requirement_from_pyproject():
    deps = re.search(r"^dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S).group(1)
    want = next(d for d in re.findall(r'"([^"]+)"', deps) if d.startswith("torch"))
    assert backend._torch_requirement() == want


def test_backend_pins_the_torch_the_target_will_get(tmp_path, monkeypatch):
    """With no torch in the target, the build environment gets exactly the release the
    target's pip resolves (so the binary matches the torch installed next)."""
    report = {"install": [{"metadata": {"name": "torch", "version": "9.8.7"}}]}
    fake_py = _executable(tmp_path / "python", f"echo '{json.dumps(report)}'\n")
    monkeypatch.setattr(backend, "_candidate_interpreters", lambda: [str(fake_py)])
    monkeypatch.setattr(backend, "_torch_importable", lambda: False)
    monkeypatch.delenv("ASCAN_SKIP_EXT", raising=False)
    assert backend._extra_requires() == ["ninja", "torch==9.8.7"]
    failing = _executable(tmp_path / "python-nopip", "exit 1\n")
    monkeypatch.setattr(backend, "_candidate_interpreters", lambda: [str(failing)])
    assert backend._extra_requires() == ["ninja", backend._torch_requirement()]
    monkeypatch.setenv("ASCAN_SKIP_EXT", "1")
    assert backend._extra_requires() == []


def test_license_and_version():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license-files = ["LICENSE"]' in text and 'license = "Apache-2.0"' in text
    import ascan
    import ascan_kernels

    assert ascan.__version__ == ascan_kernels.__version__ == importlib.metadata.version("ascan")
