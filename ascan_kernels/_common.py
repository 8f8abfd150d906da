"""Small helpers several ops and backends share, each written once.

* :func:`fold_bn`: inference BatchNorm folded into a conv's weight and bias;
* :func:`conv_out_hw`: a conv's output size;
* :func:`compute_dtype`, :func:`autocast_enabled`, :func:`residual_needs_promotion`: what
  autocast does to an op's dtypes;
* :func:`memory_format_of`, :func:`version_key`: layouts and cache keys;
* :class:`DerivedWeights`: weights laid out once per caller-owned weight (GEMM layouts, oneDNN
  blocked formats), dropped when the weight changes in place or dies;
* :func:`training_call`, :data:`SLOWER_IN_TRAINING`: the prefer rule of fused impls whose
  backward costs more than the eager op's.
"""
from __future__ import annotations

import collections
import threading
import weakref
from typing import Callable, Hashable

import torch


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold inference BatchNorm into a conv: returns (weight', bias') in float32.

    weight: (Cout, Cin/g, kh, kw); bias, bn_*, running_*: (Cout,).
    ``bn(conv(x, w, b)) == conv(x, w * s, (b - mean) * s + beta)`` with
    ``s = gamma / sqrt(var + eps)``. Computed in float32 whatever the params' dtype,
    so a bfloat16 model folds without double rounding.
    """
    s = torch.rsqrt(running_var.float() + eps)
    if bn_weight is not None:
        s = s * bn_weight.float()
    b = -running_mean.float()
    if bias is not None:
        b = b + bias.float()
    b = b * s
    if bn_bias is not None:
        b = b + bn_bias.float()
    w = weight.float() * s.reshape(-1, 1, 1, 1)
    return w, b


# Why an impl that folds BN into the conv cannot run in training mode.
FOLD_NEEDS_EVAL = "training-mode BatchNorm needs batch statistics; this impl folds the running stats"


def fold_unless_given(folded, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps):
    """``folded`` if the caller precomputed it (a model caches its fold), else :func:`fold_bn`."""
    return folded if folded is not None else fold_bn(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps)


def conv_out_hw(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple[int, int]:
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled`` that answers False for devices without autocast (meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul-class op computes in: the autocast dtype inside autocast."""
    dev = t.device.type
    if autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


def residual_needs_promotion(compute: torch.dtype, residual: torch.Tensor | None) -> bool:
    """Whether ``y + residual`` with ``y`` in ``compute`` promotes to another dtype.

    Under autocast eager PyTorch computes a conv/GEMM in bfloat16 and then adds an fp32
    residual in fp32, returning fp32. A fused impl whose epilogue adds in the compute
    dtype would return bfloat16; impls use this to add such a residual after the
    kernel instead, so they return what the reference returns."""
    return residual is not None and torch.promote_types(compute, residual.dtype) != compute


def version_key(t: torch.Tensor) -> int | None:
    """``t._version`` for cache keys, or None for an inference tensor (made under
    ``torch.inference_mode()``), which has no version counter. Such a tensor can only
    be changed in place inside inference mode, and then nothing can see it: callers
    that cache on a None key say so."""
    return None if t.is_inference() else t._version


def memory_format_of(t: torch.Tensor) -> torch.memory_format | None:
    """The memory format ``t`` is dense in (NCHW-contiguous, channels_last(_3d)), or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def apply_act(y: torch.Tensor, act: str, *, inplace: bool = False) -> torch.Tensor:
    """The conv ops' activations by name (``"none"``, ``"gelu"``, ``"gelu_tanh"``,
    ``"silu"``). ``inplace`` where the caller owns ``y`` (SiLU only: ATen's GELU has no
    in-place form)."""
    if act == "gelu":
        return torch.nn.functional.gelu(y)
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if act == "silu":
        return torch.nn.functional.silu(y, inplace=inplace)
    return y


def training_call(*tensors) -> bool:
    """Whether autograd records this call (grad mode on and an input requires grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


# Forward + backward of the oneDNN/C++ CPU impls against eager at the default trainers'
# shapes (ascan_t at 32x32, ascan_unet_c2i_t at 8x8, batch 64; fp32, AVX2 dev machine, 30
# interleaved reps, two sessions; `python -m bench.train_ops`, and bench/test_train.py for
# whole steps): linear_gelu 0.73x-0.94x (its backward recomputes the GEMM for GELU's
# input), linear_add 0.86x-0.96x, add_layer_norm 0.64x-0.68x. bf16 could not be measured here.
SLOWER_IN_TRAINING = "under autograd: forward + backward measured {} of eager (fp32, CPU)"


class DerivedWeights:
    """A bounded cache of tensors derived from a weight (a re-laid-out or pre-packed copy).

    A key of (data_ptr, dtype, device, shape) alone could match a new tensor allocated where a
    freed one lived, so an entry also holds a weak reference to the exact source tensor and its
    version counter: a different tensor, or the same one updated in place (an optimizer step, a
    new state dict), misses. At most ``max_entries`` entries, least recently used dropped
    first. Not used while torch.compile traces (data pointers and versions are not traceable).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, w: torch.Tensor, extra: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()``'s result for (``w``, ``extra``), made once while ``w`` is unchanged."""
        if torch.compiler.is_compiling():
            return make()
        key = (w.data_ptr(), w.dtype, w.device, tuple(w.shape), extra)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is w and hit[1] == version_key(w):
                self._entries.move_to_end(key)
                return hit[2]
        # A normal tensor, usable outside inference mode too; never part of a graph.
        with torch.inference_mode(False), torch.no_grad():
            out = make()
        with self._lock:
            self._entries[key] = (weakref.ref(w), version_key(w), out)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return out
