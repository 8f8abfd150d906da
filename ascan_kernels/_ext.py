"""Loading of the compiled extension ``ascan_kernels._C``, with an actionable reason when it can't.

``load_extension()`` returns ``(module, None)`` or ``(None, reason)``, and never raises:
every failure becomes a reason string that the registry shows in ``available()`` and
``trace()``. A binary compiled against another torch than the running one is refused
before it is imported (its ops could crash or silently misbehave), with the command that
rebuilds it.

When the extension loads, the fake (meta) implementations of its ops are registered
here, so ``torch.compile`` and ``torch.library.opcheck`` can trace them. The C++ library
names this module (``set_python_module``), so torch imports it by itself when it needs
those fakes.
"""
from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

import torch

REBUILD = 'pip install -e ".[test]" in this environment (it compiles against the torch found there)'


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
    running = torch.__version__.split("+")[0]
    if compiled.get("torch_version") != running:
        return None, (f"build metadata mismatch: ascan_kernels._C was compiled against torch "
                      f"{compiled.get('torch_version')} but running torch {torch.__version__}; rebuild: {REBUILD}")
    if not hasattr(torch.ops.ascan_C, "add_layer_norm"):
        return None, f"ascan_kernels._C loaded but registered no ascan_C ops; rebuild: {REBUILD}"
    _register_fakes()
    return mod, None


def has_cuda_kernels() -> bool:
    """Whether the loaded extension was compiled with its CUDA kernels."""
    mod, _ = load_extension()
    if mod is None:
        return False
    try:
        return bool(mod.build_info().get("with_cuda"))
    except Exception:
        return False


_FAKES_REGISTERED = False


def _register_fakes() -> None:
    """Fake (meta) kernels: output shapes/dtypes without computing, for tracing."""
    global _FAKES_REGISTERED
    if _FAKES_REGISTERED:
        return
    _FAKES_REGISTERED = True

    @torch.library.register_fake("ascan_C::add_layer_norm")
    def _add_layer_norm_fake(x, residual, weight, bias, eps):
        torch._check(x.dtype in (torch.float32, torch.bfloat16, torch.float16),
                     lambda: f"ascan add_layer_norm: x must be float32, bfloat16 or float16, got {x.dtype}")
        torch._check(residual.dtype == x.dtype,
                     lambda: f"ascan add_layer_norm: residual dtype {residual.dtype} differs from x dtype {x.dtype}")
        torch._check(x.dim() >= 1, lambda: "ascan add_layer_norm: x must have at least 1 dim")
        torch._check(residual.shape == x.shape,
                     lambda: f"ascan add_layer_norm: residual shape {tuple(residual.shape)} differs from x shape "
                             f"{tuple(x.shape)}")
        for name, t in (("weight", weight), ("bias", bias)):
            torch._check(t.dim() == 1 and t.shape[0] == x.shape[-1],
                         lambda: f"ascan add_layer_norm: {name} must have shape ({x.shape[-1]},), got "
                                 f"{tuple(t.shape)}")
        # The CPU kernel returns fresh contiguous tensors.
        return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
                torch.empty(x.shape, dtype=x.dtype, device=x.device))

    # The norm/activation ops (CUDA kernels + CPU reference); a binary built before they
    # existed lacks them, and registering for a missing op would raise.
    if hasattr(torch.ops.ascan_C, "layer_norm_fwd"):
        _register_norm_act_fakes()
        _register_layer_norm_autograd()
    if hasattr(torch.ops.ascan_C, "group_norm_silu_cpu"):
        _register_group_norm_silu_cpu_fake()


def cuda_ops() -> tuple[str, ...]:
    """The ``ascan_C`` ops the loaded extension has CUDA kernels for (empty without them)."""
    mod, _ = load_extension()
    if mod is None:
        return ()
    try:
        return tuple(mod.build_info().get("cuda_ops", ()))
    except Exception:
        return ()


def _channels_last_like(t: torch.Tensor) -> torch.memory_format:
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _register_norm_act_fakes() -> None:
    # Shape/dtype rules only; the C++ checks (ascan/norm_act_ops.h) give the full messages
    # when the real kernels run.
    @torch.library.register_fake("ascan_C::bias_act_epilogue_")
    def _bias_act_epilogue_fake(y, bias, residual, act):
        torch._check(y.dim() >= 3, lambda: f"ascan bias_act_epilogue_: y must have at least 3 dims, got {tuple(y.shape)}")
        torch._check(bias.shape == (y.shape[1],),
                     lambda: f"ascan bias_act_epilogue_: bias must have shape ({y.shape[1]}), got {tuple(bias.shape)}")
        return None

    @torch.library.register_fake("ascan_C::group_norm_silu")
    def _group_norm_silu_fake(x, num_groups, weight, bias, eps, scale, shift):
        torch._check(x.dim() >= 3, lambda: f"ascan group_norm_silu: x must have at least 3 dims, got {tuple(x.shape)}")
        return torch.empty_like(x, memory_format=_channels_last_like(x))

    @torch.library.register_fake("ascan_C::layer_norm_fwd")
    def _layer_norm_fwd_fake(x, weight, bias, eps):
        torch._check(x.dim() >= 1, lambda: "ascan layer_norm_fwd: x must have at least 1 dim")
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        stats = lambda: torch.empty((rows,), dtype=torch.float32, device=x.device)  # noqa: E731
        return torch.empty(x.shape, dtype=x.dtype, device=x.device), stats(), stats()

    @torch.library.register_fake("ascan_C::layer_norm_bwd")
    def _layer_norm_bwd_fake(dy, x, mean, rstd, weight):
        C = x.shape[-1]
        vec = lambda: torch.empty((C,), dtype=torch.float32, device=x.device)  # noqa: E731
        return torch.empty(x.shape, dtype=x.dtype, device=x.device), vec(), vec()


def _register_group_norm_silu_cpu_fake() -> None:
    @torch.library.register_fake("ascan_C::group_norm_silu_cpu")
    def _group_norm_silu_cpu_fake(x, num_groups, weight, bias, eps, scale, shift):
        torch._check(x.dim() == 4, lambda: f"ascan group_norm_silu_cpu: x must be 4-D, got {tuple(x.shape)}")
        torch._check(x.dtype in (torch.float32, torch.bfloat16),
                     lambda: f"ascan group_norm_silu_cpu: x must be float32 or bfloat16, got {x.dtype}")
        # The kernel allocates with empty_like: x's dtype and strides (NCHW or channels_last).
        return torch.empty_like(x)


def _register_layer_norm_autograd() -> None:
    """``layer_norm_fwd`` is differentiable in x, weight and bias through ``layer_norm_bwd``
    (mean and rstd are saved statistics: their incoming gradients are ignored)."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, _eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, rstd)

    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = torch.ops.ascan_C.layer_norm_bwd(grad_y.contiguous(), x, mean, rstd, weight)
        return dx, (dw if weight is not None else None), (db if ctx.has_bias else None), None

    torch.library.register_autograd("ascan_C::layer_norm_fwd", backward, setup_context=setup_context)


# torch imports this module (set_python_module) when it needs the fakes of ops that the
# already-loaded binary defines: register them then too.
if "ascan_kernels._C" in sys.modules:
    load_extension()
