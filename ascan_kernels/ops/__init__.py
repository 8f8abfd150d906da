"""The ops. Importing this package registers every op and its impls."""
from .attention import attention, attention_reference
from .group_norm import group_norm_silu, group_norm_silu_reference
from .conv import conv_bn, conv_bn_add, conv_bn_gelu, fold_bn
from .linear import linear_add, linear_add_reference, linear_gelu, linear_gelu_reference
from .norm import add_layer_norm, add_layer_norm_reference, layer_norm, layer_norm_reference

__all__ = [
    "attention", "attention_reference", "group_norm_silu", "group_norm_silu_reference",
    "conv_bn", "conv_bn_add", "conv_bn_gelu", "fold_bn",
    "linear_add", "linear_add_reference", "linear_gelu", "linear_gelu_reference",
    "add_layer_norm", "add_layer_norm_reference", "layer_norm", "layer_norm_reference",
]
