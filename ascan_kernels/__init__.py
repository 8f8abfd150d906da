"""ascan_kernels: fused ops for AsCAN with a registry that says what ran.

    import ascan_kernels as K
    K.available("conv_bn_gelu")        # {"cpu": "ok", "eager": "ok"} or the reasons
    with K.trace() as t:
        model(x)
    print(t.table())                   # which impl ran for each op, and why
    with K.use(attention="eager"):     # force (or "!sdpa" to forbid) an impl
        model(x)

Model code calls the functions below; it never imports Triton or the extension.
"""
from ._version import __version__
from .registry import (
    Impl,
    KernelUnavailableError,
    Op,
    Trace,
    TraceRecord,
    available,
    get_op,
    list_ops,
    set_fallback_logging,
    trace,
    use,
)
from .ops import (
    add_layer_norm,
    add_layer_norm_reference,
    attention,
    attention_reference,
    conv_bn,
    conv_bn_add,
    conv_bn_gelu,
    fold_bn,
    group_norm_silu,
    group_norm_silu_reference,
    layer_norm,
    layer_norm_reference,
    linear_add,
    linear_add_reference,
    linear_gelu,
    linear_gelu_reference,
)
from . import registry as _registry
from ._checks import version_key

from .triton import register_all as _register_triton

_register_triton()
from .cuda import register_all as _register_cuda; _register_cuda()
_registry.validate_env_overrides()

__all__ = [
    "__version__",
    "Impl", "KernelUnavailableError", "Op", "Trace", "TraceRecord",
    "available", "get_op", "version_key", "list_ops", "set_fallback_logging", "trace", "use",
    "add_layer_norm", "attention", "conv_bn", "conv_bn_add", "conv_bn_gelu", "fold_bn", "group_norm_silu", "group_norm_silu_reference",
    "layer_norm", "linear_add", "linear_gelu", "linear_add_reference",
    "add_layer_norm_reference", "attention_reference", "layer_norm_reference", "linear_gelu_reference",
]
