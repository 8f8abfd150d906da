"""Loading of the compiled extension ``ascan_kernels._C``, with an actionable reason when it can't.

``load_extension()`` returns ``(module, None)`` or ``(None, reason)``, and never raises:
every failure becomes a reason string that the registry shows in ``available()`` and
``trace()``. A binary compiled against another torch than the running one is refused
before it is imported (its ops could crash or silently misbehave), with the command that
rebuilds it.

The fake (meta) kernels and autograd formulas of the ``ascan_C`` ops are registered next
to each op's impls (``ascan_kernels/ops/<op>/``), through :func:`register_fake` and
:func:`register_autograd` here, which do nothing when the loaded binary lacks the op. The
C++ library names ``ascan_kernels.ops`` (``set_python_module``), so torch imports the ops
by itself when it needs a fake. Which ops have a kernel for which device is asked from
the dispatcher (:func:`has_kernel`), never listed by hand.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

REBUILD = 'pip install -e ".[test]" in this environment (it compiles against the torch found there)'
# The layout of ascan_C's ops this Python code expects; csrc/module.cpp's build_info()["ops_abi"].
# Bumped whenever an op is renamed, added with a new contract, or moves between keys.
OPS_ABI = 2


def _build_info() -> dict | None:
    """The metadata setup.py wrote after compiling, or None if it never ran."""
    try:
        from ._build_info import BUILD_INFO
    except Exception:  # missing, or a broken/partial file
        return None
    return BUILD_INFO if isinstance(BUILD_INFO, dict) else None


def _mismatch(info: dict) -> str | None:
    built = info.get("torch_version")
    if built != torch.__version__:
        return (f"build metadata mismatch: ascan_kernels._C was compiled against torch {built} but running "
                f"torch {torch.__version__}; rebuild: {REBUILD}")
    abi = info.get("cxx11_abi")
    if abi is not None and abi != bool(torch._C._GLIBCXX_USE_CXX11_ABI):
        return (f"build metadata mismatch: ascan_kernels._C was compiled with _GLIBCXX_USE_CXX11_ABI={int(abi)}, "
                f"torch uses {int(torch._C._GLIBCXX_USE_CXX11_ABI)}; rebuild: {REBUILD}")
    return None


@functools.lru_cache(maxsize=None)
def load_extension() -> tuple[ModuleType | None, str | None]:
    """(the ``_C`` module, None), or (None, why it is unavailable and what to do)."""
    try:
        return _load()
    except Exception as e:  # never raise: whatever went wrong becomes the reason
        return None, f"ascan_kernels._C failed to load: {type(e).__name__}: {e}"


def _load() -> tuple[ModuleType | None, str | None]:
    info = _build_info()
    if info is not None and "skipped" in info:
        return None, f"extension not built: {info['skipped']}"
    if info is not None and (why := _mismatch(info)):
        return None, why
    try:
        mod = importlib.import_module("ascan_kernels._C")
    except ImportError as e:
        if info is None:  # setup.py writes the metadata with every build: nothing was built here
            return None, f"extension not built (run {REBUILD})"
        return None, f"ascan_kernels._C failed to import: {e}; rebuild: {REBUILD}"
    try:
        compiled = mod.build_info()
    except Exception as e:  # a stale or foreign binary
        return None, f"ascan_kernels._C has no usable build_info() ({e}); rebuild: {REBUILD}"
    if compiled.get("ops_abi") != OPS_ABI:
        return None, (f"ascan_kernels._C is a stale binary (ops ABI {compiled.get('ops_abi')}, this package needs "
                      f"{OPS_ABI}); rebuild: {REBUILD}")
    running = torch.__version__.split("+")[0]
    if compiled.get("torch_version") != running:
        return None, (f"build metadata mismatch: ascan_kernels._C was compiled against torch "
                      f"{compiled.get('torch_version')} but running torch {torch.__version__}; rebuild: {REBUILD}")
    if not hasattr(torch.ops.ascan_C, "add_layer_norm"):
        return None, f"ascan_kernels._C loaded but registered no ascan_C ops; rebuild: {REBUILD}"
    return mod, None


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether the loaded extension registered a kernel for ``ascan_C::<name>`` under
    ``dispatch_key`` ("CPU", "CUDA", ...)."""
    if load_extension()[0] is None or not hasattr(torch.ops.ascan_C, name):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"ascan_C::{name}", dispatch_key)


def ops_with_kernel(dispatch_key: str) -> tuple[str, ...]:
    """Every ``ascan_C`` op with a kernel for ``dispatch_key``, from the dispatcher."""
    if load_extension()[0] is None:
        return ()
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ascan_C::")]
    return tuple(sorted(n for n in set(names) if has_kernel(n, dispatch_key)))


def cuda_ops() -> tuple[str, ...]:
    """The ``ascan_C`` ops the loaded extension has CUDA kernels for (empty without them)."""
    return ops_with_kernel("CUDA")


def has_cuda_kernels() -> bool:
    """Whether the loaded extension was compiled with its CUDA kernels."""
    mod, _ = load_extension()
    if mod is None:
        return False
    try:
        return bool(mod.build_info().get("with_cuda"))
    except Exception:
        return False


def register_fake(name: str):
    """``torch.library.register_fake("ascan_C::<name>")`` when the loaded binary has the op
    (a decorator; without the op it returns the function unregistered)."""
    def deco(fn):
        if load_extension()[0] is not None and hasattr(torch.ops.ascan_C, name):
            torch.library.register_fake(f"ascan_C::{name}")(fn)
        return fn
    return deco


def register_autograd(name: str, backward, setup_context) -> None:
    """``torch.library.register_autograd("ascan_C::<name>", ...)`` when the binary has the op."""
    if load_extension()[0] is not None and hasattr(torch.ops.ascan_C, name):
        torch.library.register_autograd(f"ascan_C::{name}", backward, setup_context=setup_context)
