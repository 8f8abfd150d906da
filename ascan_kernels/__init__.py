"""ascan_kernels: fused ops for AsCAN with a registry that says what ran.

    import ascan_kernels as K
    K.available("conv_bn_gelu")        # {"cpu": "ok", "eager": "ok"} or the reasons
    with K.trace() as t:
        model(x)
    print(t.table())                   # which impl ran for each op, and why
    with K.use(attention="eager"):     # force (or "!sdpa" to forbid) an impl
        model(x)
    with K.autotune():                 # time the eligible impls per call signature, keep the fastest
        model(x)                       # (cached on disk; ASCAN_AUTOTUNE=1 does the same)

Model code calls the functions below; it never imports Triton or the extension. The
layout: ``registry`` (Op, Impl, selection, trace, use) and ``capabilities`` (what an impl
declares, one priority table); ``ops/<op>/`` (each op with its reference and its impls);
``autotuning`` (measured selection and its cache file); ``backends/`` (runtime probes: oneDNN, Triton, CUDA); ``_ext`` (loading the C++
extension); ``tools/`` (AOT compile, resource and roofline reports; nothing imports them).
"""
from ._cli import run_cli
from ._common import fold_bn, version_key
from ._files import TMP_PREFIX, atomic_write, fsync_dir
from ._version import __version__
from .autotuning import autotune
from .ops import (
    add_layer_norm,
    add_layer_norm_reference,
    attention,
    attention_reference,
    conv_bias_act,
    conv_bias_act_reference,
    conv_bn,
    conv_bn_add,
    conv_bn_gelu,
    group_norm_silu,
    group_norm_silu_reference,
    layer_norm,
    layer_norm_reference,
    linear_add,
    linear_add_reference,
    linear_gelu,
    linear_gelu_reference,
)
from .registry import (
    CUSTOM_OP_NAMESPACES,
    Impl,
    KernelUnavailableError,
    Op,
    Trace,
    TraceRecord,
    available,
    decompositions,
    get_op,
    list_ops,
    set_fallback_logging,
    trace,
    use,
    validate_env_overrides,
)

# Every op is registered now: ASCAN_KERNELS can be checked against their impls.
validate_env_overrides()

__all__ = [
    "__version__", "CUSTOM_OP_NAMESPACES", "TMP_PREFIX", "atomic_write", "fsync_dir", "run_cli",
    "Impl", "KernelUnavailableError", "Op", "Trace", "TraceRecord",
    "autotune", "available", "decompositions", "get_op", "list_ops", "set_fallback_logging", "trace", "use", "version_key",
    "add_layer_norm", "add_layer_norm_reference", "attention", "attention_reference",
    "conv_bias_act", "conv_bias_act_reference", "conv_bn", "conv_bn_add", "conv_bn_gelu", "fold_bn", "group_norm_silu", "group_norm_silu_reference",
    "layer_norm", "layer_norm_reference", "linear_add", "linear_add_reference", "linear_gelu",
    "linear_gelu_reference",
]
