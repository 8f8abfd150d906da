"""Registry impls named ``cuda`` (priority 300) backed by the ``ascan_C`` CUDA kernels.

Each impl takes the op's arguments exactly as the op's public function passes them
(see ascan_kernels/ops). The C++ binding re-checks everything it is given; ``supports``
keeps the registry from ever sending it inputs it would reject.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks as chk
from .._ext import _build_info, cuda_ops, has_cuda_kernels, load_extension, REBUILD
from ..ops import fold_bn
from ..registry import Impl

PRIORITY = 300  # above Triton (200), the CPU impls (100) and SDPA (50)
OPS = ("conv_bn_gelu", "conv_bn_add", "conv_bn", "group_norm_silu", "layer_norm")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYER_NORM_MAX_C = 1280  # csrc: kLayerNormMaxC, a row per warp in registers
GROUP_NORM_MAX_BLOCKS_Y = 65535  # N * num_groups rides on gridDim.y
# ascan::math::Act (csrc/include/ascan/elementwise_math.h)
ACT_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
# The ascan_C ops each registry op needs a CUDA kernel for.
_NEEDS = {"conv_bn_gelu": ("bias_act_epilogue_",), "conv_bn_add": ("bias_act_epilogue_",),
          "conv_bn": ("bias_act_epilogue_",), "group_norm_silu": ("group_norm_silu",),
          "layer_norm": ("layer_norm_fwd", "layer_norm_bwd")}


def unavailable_reason(op: str | None = None) -> str | None:
    """Why the CUDA kernels (of ``op``, or any) cannot run in this process, or None."""
    mod, why = load_extension()
    if mod is None:
        return why
    if not has_cuda_kernels():
        info = _build_info() or {}
        return (f"ascan_kernels._C was built without CUDA kernels "
                f"({info.get('why_no_cuda') or 'see ascan_kernels/_build_info.py'}); "
                f"with a CUDA build of torch and CUDA_HOME set, rebuild: {REBUILD}")
    missing = [name for name in _NEEDS.get(op, ()) if name not in cuda_ops()]
    if missing:
        return f"ascan_kernels._C has no CUDA kernel for {', '.join(missing)}; rebuild: {REBUILD}"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _device_dtype_reason(x: torch.Tensor, dtype: torch.dtype) -> str | None:
    if x.device.type != "cuda":
        return f"device {x.device.type}: the CUDA kernels take CUDA tensors"
    if dtype not in DTYPES:
        return f"dtype {dtype} not supported (float32, bfloat16, float16)"
    if x.numel() == 0:
        return "empty input"
    return None


def _param_reason(**params: torch.Tensor | None) -> str | None:
    for name, t in params.items():
        if t is not None and t.dtype not in DTYPES:
            return f"{name} dtype {t.dtype} not supported (float32, bfloat16, float16)"
    return None


def _autocast_fp32(x: torch.Tensor) -> bool:
    """CUDA autocast runs group_norm and layer_norm in float32 (float32 outputs)."""
    return x.device.type == "cuda" and chk.autocast_enabled("cuda")


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A small parameter as the float32 contiguous tensor the kernels read."""
    return None if t is None else t.to(torch.float32).contiguous()


def _layout(t: torch.Tensor) -> torch.memory_format | None:
    """The memory format the kernels can walk ``t`` in, or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


# ---------------------------------------------------------------------------------------
# conv_bn_gelu / conv_bn_add / conv_bn: cuDNN conv, then the fused epilogue in place
# ---------------------------------------------------------------------------------------
def _conv_supports(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                   stride, padding, dilation, groups, eps, momentum, training, act, folded):
    if training:
        return "training-mode BatchNorm needs batch statistics; this impl folds the running stats"
    if act not in ACT_CODES:
        return f"activation {act!r} not supported"
    return _device_dtype_reason(x, chk.compute_dtype(x))


def _conv(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
          stride, padding, dilation, groups, eps, momentum, training, act, folded):
    """act(conv2d(x, w') + b' (+ residual)) with (w', b') = fold_bn(...): cuDNN conv without
    bias, then ascan_C::bias_act_epilogue_ on its output (one read-modify-write pass)."""
    dtype = chk.compute_dtype(x)
    if folded is None:
        folded = fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)
    w, b = folded
    y = F.conv2d(x.to(dtype), w.to(dtype), None, stride, padding, dilation, groups)
    if _layout(y) is None:  # cuDNN returns NCHW or channels_last; anything else, make it NCHW
        y = y.contiguous()
    if residual is not None:
        residual = residual.to(dtype)
        if residual.stride() != y.stride():  # the kernel walks both with one index
            residual = torch.empty_like(y).copy_(residual)
    torch.ops.ascan_C.bias_act_epilogue_(y, _f32(b), residual, ACT_CODES[act])
    return y


# ---------------------------------------------------------------------------------------
# group_norm_silu
# ---------------------------------------------------------------------------------------
def _gn_supports(x, num_groups, weight, bias, eps, scale, shift):
    reason = _device_dtype_reason(x, x.dtype) or _param_reason(weight=weight, bias=bias, scale=scale, shift=shift)
    if reason:
        return reason
    if _layout(x) is None:
        return f"layout with strides {tuple(x.stride())}: the kernel reads contiguous NCHW or channels_last"
    if x.shape[0] * num_groups > GROUP_NORM_MAX_BLOCKS_Y:
        return f"N * num_groups = {x.shape[0] * num_groups} > {GROUP_NORM_MAX_BLOCKS_Y} (grid limit)"
    return None


def _group_norm_silu(x, num_groups, weight, bias, eps, scale, shift):
    if _autocast_fp32(x):
        x = x.float()  # as eager under CUDA autocast: computed and returned in float32
    return torch.ops.ascan_C.group_norm_silu(x, num_groups, _f32(weight), _f32(bias), float(eps), _f32(scale),
                                             _f32(shift))


# ---------------------------------------------------------------------------------------
# layer_norm (autograd through ascan_C::layer_norm_bwd, registered in ascan_kernels._ext)
# ---------------------------------------------------------------------------------------
def _ln_supports(x, weight, bias, eps=1e-5):
    reason = _device_dtype_reason(x, x.dtype) or _param_reason(weight=weight, bias=bias)
    if reason:
        return reason
    if x.shape[-1] > LAYER_NORM_MAX_C:
        return f"C={x.shape[-1]} > {LAYER_NORM_MAX_C}: the kernel holds a row in one warp's registers"
    return None


def _layer_norm(x, weight, bias, eps=1e-5):
    if _autocast_fp32(x):
        x = x.float()
    # weight/bias cast to float32 here (differentiably): the kernels read float32 params.
    return torch.ops.ascan_C.layer_norm_fwd(x.contiguous(), _f32(weight), _f32(bias), float(eps))[0]


def impls() -> dict[str, Impl]:
    """op name -> its ``cuda`` Impl."""
    def avail(op):
        return lambda: unavailable_reason(op)

    conv_doc = "cuDNN conv (BN folded into the weight, no bias) + one fused bias/residual/GELU epilogue pass"
    out = {op: Impl("cuda", _conv, PRIORITY, supports=_conv_supports, available=avail(op), autograd=False,
                    doc=conv_doc) for op in ("conv_bn_gelu", "conv_bn_add", "conv_bn")}
    out["group_norm_silu"] = Impl("cuda", _group_norm_silu, PRIORITY, supports=_gn_supports,
                                  available=avail("group_norm_silu"), autograd=False,
                                  doc="Welford group stats, then one GroupNorm+FiLM+SiLU pass (forward only)")
    out["layer_norm"] = Impl("cuda", _layer_norm, PRIORITY, supports=_ln_supports, available=avail("layer_norm"),
                             autograd=True, doc="warp-per-row LayerNorm forward/backward, C <= 1280")
    return out
