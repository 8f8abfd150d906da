"""The ops: one package per op (or family of ops that share a reference), each holding the
op's eager reference, validation and public functions (``__init__.py``) and one module per
backend impl (``cpu.py``, ``cuda.py``, ``triton.py``, ``sdpa.py``), each with its custom
ops, fakes and autograd. Importing this package registers every op and impl.

Adding an op: docs/adding-an-op.md.
"""
from .attention import attention, attention_reference
from .conv_bias_act import conv_bias_act, conv_bias_act_reference
from .conv_bn import conv_bn, conv_bn_add, conv_bn_gelu
from .group_norm_silu import group_norm_silu, group_norm_silu_reference
from .layer_norm import add_layer_norm, add_layer_norm_reference, layer_norm, layer_norm_reference
from .linear import linear_add, linear_add_reference, linear_gelu, linear_gelu_reference

__all__ = [
    "attention", "attention_reference", "conv_bias_act", "conv_bias_act_reference", "conv_bn", "conv_bn_add", "conv_bn_gelu",
    "group_norm_silu", "group_norm_silu_reference", "add_layer_norm", "add_layer_norm_reference",
    "layer_norm", "layer_norm_reference", "linear_add", "linear_add_reference", "linear_gelu",
    "linear_gelu_reference",
]
