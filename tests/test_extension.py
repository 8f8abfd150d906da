"""The compiled extension ascan_kernels._C: build metadata, loading (every failure an
actionable reason, never an exception), and the CUDA kernels' build and registration (the
kernels themselves are tested with their ops, tests/ops/test_<op>.py)."""
from __future__ import annotations

import os
import re

import pytest
import torch

import ascan_kernels as K
from ascan_kernels import _ext
from ascan_kernels._ext import _build_info, cuda_ops, has_cuda_kernels, load_extension
from ascan_kernels.capabilities import PRIORITY

EXT, WHY = load_extension()
needs_ext = pytest.mark.skipif(EXT is None, reason=f"ascan_kernels._C is not available: {WHY}")
needs_cuda_build = pytest.mark.skipif(not has_cuda_kernels(),
                                      reason=f"ascan_kernels._C was built without CUDA kernels: {WHY or _build_info()}")
GPU = torch.cuda.is_available()


# ------------------------------------------------------------------------- build metadata
@needs_ext
def test_build_info_matches_running_torch():
    info = EXT.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert (info["torch_version_major"], info["torch_version_minor"]) == (major, minor)
    assert info["cxx11_abi"] == bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    assert info["openmp"] is True
    assert has_cuda_kernels() == info["with_cuda"]

    from ascan_kernels._build_info import BUILD_INFO

    assert BUILD_INFO["torch_version"] == torch.__version__
    assert BUILD_INFO["torch_cuda"] == torch.version.cuda
    assert BUILD_INFO["with_cuda"] == info["with_cuda"]
    if not BUILD_INFO["with_cuda"]:
        assert BUILD_INFO["why_no_cuda"], "a CPU-only build must say why"


@needs_ext
def test_cpu_kernel_isa_follows_torch():
    isa = EXT.cpu_kernel_isa()
    cap = torch.backends.cpu.get_cpu_capability()
    assert isa in ("avx512", "avx2", "base")
    if cap == "DEFAULT":
        assert isa == "base"
    if cap == "AVX2":
        assert isa in ("avx2", "base")


# ------------------------------------------------------------------------- CUDA kernels: build and registration
# The ops with a cuda impl (the registry is the source: test_cuda_ops_are_the_registrys).
CUDA_OPS = ("conv_bias_act", "conv_bn_gelu", "conv_bn_add", "conv_bn", "group_norm_silu", "layer_norm")
# Each CUDA kernel, and the CPU kernels of the same ascan_C math: the *_reference loops, and
# for group_norm_silu also the fast CPU kernel, registered under the same name.
CUDA_AND_CPU_KERNELS = [("bias_act_epilogue_", ("bias_act_epilogue_reference_",)),
                        ("group_norm_silu", ("group_norm_silu", "group_norm_silu_reference")),
                        ("layer_norm_fwd", ("layer_norm_fwd_reference",)),
                        ("layer_norm_bwd", ("layer_norm_bwd_reference",))]


def test_cuda_kernels_built_when_a_toolkit_was_there():
    info = _build_info() or {}
    if info.get("skipped"):
        pytest.skip(f"pure-Python install: {info['skipped']}")
    toolkit = os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    if not info.get("with_cuda"):
        if toolkit and torch.version.cuda:
            pytest.fail(f"CUDA_HOME has nvcc and torch is a CUDA build, but the extension was built without CUDA "
                        f"kernels ({info.get('why_no_cuda')}): rebuild with pip install -e .")
        pytest.skip(f"extension built without CUDA kernels: {info.get('why_no_cuda')}")
    assert EXT is not None, WHY
    built = EXT.build_info()
    assert built["with_cuda"] is True and built["cuda_version"] >= 11000
    assert info["cuda_arch_list"]


@needs_cuda_build
@pytest.mark.parametrize("name,cpu_names", CUDA_AND_CPU_KERNELS, ids=[n for n, _ in CUDA_AND_CPU_KERNELS])
def test_cuda_and_cpu_kernels_registered(name, cpu_names):
    assert name in cuda_ops()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ascan_C::{name}", "CUDA"), (name, "CUDA")
    for cpu_name in cpu_names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ascan_C::{cpu_name}", "CPU"), (cpu_name, "CPU")


def test_cuda_ops_are_the_registrys():
    assert sorted(op for op in K.list_ops() if "cuda" in K.available(op)) == sorted(CUDA_OPS)


@pytest.mark.parametrize("op", CUDA_OPS)
def test_registry_lists_cuda_impl_with_reason(op):
    impl = K.get_op(op).impl("cuda")
    assert impl.priority == PRIORITY["cuda"] == 300
    status = K.available(op)["cuda"]
    if GPU and has_cuda_kernels():
        assert status == "ok"
    elif has_cuda_kernels():
        assert status == "no CUDA device"
    else:
        assert status != "ok" and status  # the build/load reason
    assert impl.autograd == (op == "layer_norm")


def test_forcing_cuda_without_device_raises_with_reason():
    if GPU:
        pytest.skip("a CUDA device is present")
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(K.KernelUnavailableError, match="impl 'cuda' was forced"):
        with K.use(layer_norm="cuda"):
            K.layer_norm(x)


# ------------------------------------------------------------------------- _ext reasons
def test_load_extension_never_raises_and_caches():
    assert load_extension() is load_extension()
    mod, why = load_extension()
    assert (mod is None) != (why is None)


@pytest.mark.parametrize("info,expected", [
    ({"skipped": "ASCAN_SKIP_EXT=1 was set at build time"}, "^extension not built: ASCAN_SKIP_EXT=1 was set at build"),
    ({"torch_version": "1.0.0+old", "cxx11_abi": True}, "build metadata mismatch: .*compiled against torch 1.0.0\\+old "
                                                       "but running torch .*; rebuild: pip install -e"),
    ({"torch_version": torch.__version__, "cxx11_abi": not torch._C._GLIBCXX_USE_CXX11_ABI},
     "build metadata mismatch: .*_GLIBCXX_USE_CXX11_ABI=.*; rebuild: pip install -e"),
])
def test_reasons_are_actionable(monkeypatch, info, expected):
    monkeypatch.setattr(_ext, "_build_info", lambda: info)
    mod, why = _ext._load()
    assert mod is None
    assert why is not None
    assert re.search(expected, why), why


# ------------------------------------------------------------------------- the loader, fresh
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
