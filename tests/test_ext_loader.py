"""The extension loader turns every failure into an actionable reason (and never raises)."""
import pytest
import torch

from ascan_kernels import _ext


@pytest.fixture
def fresh_loader(monkeypatch):
    _ext.load_extension.cache_clear()
    yield monkeypatch
    _ext.load_extension.cache_clear()


def test_skipped_build_is_reported(fresh_loader):
    fresh_loader.setattr(_ext, "_build_info", lambda: {"skipped": "ASCAN_SKIP_EXT=1 was set at build time"})
    mod, why = _ext.load_extension()
    assert mod is None and why == "extension not built: ASCAN_SKIP_EXT=1 was set at build time"


def test_torch_version_mismatch_is_refused(fresh_loader):
    fresh_loader.setattr(_ext, "_build_info", lambda: {"torch_version": "1.0.0"})
    mod, why = _ext.load_extension()
    assert mod is None
    assert f"compiled against torch 1.0.0 but running torch {torch.__version__}" in why
    assert "pip install -e" in why


def test_missing_build_is_reported(fresh_loader):
    fresh_loader.setattr(_ext, "_build_info", lambda: None)

    def no_module(name):
        raise ImportError(f"No module named {name!r}")

    fresh_loader.setattr(_ext.importlib, "import_module", no_module)
    mod, why = _ext.load_extension()
    assert mod is None and why.startswith("extension not built (run pip install -e")


def test_reloading_is_idempotent(fresh_loader):
    first = _ext.load_extension()
    _ext.load_extension.cache_clear()
    assert _ext.load_extension() == first  # registering fakes twice must not raise
