"""Shapes on which oneDNN's CPU convolution crashes or corrupts values, and the way around.

Found by fuzzing (tests/test_fuzz_ops.py) on torch 2.14.1. The eager reference and the
``cpu`` impl both steer around them (same values, another layout or a zero channel), so
no input crashes the process and NaN stays where it belongs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_reads_only_padding(size: int, k: int, stride: int, padding: int, dilation: int) -> bool:
    """Whether every output position along one spatial axis reads only zero padding
    (no tap lands inside the input), e.g. W=1 with a 1x1 kernel, padding 1, stride 2.

    oneDNN's channels_last convolution with a bias crashes the process (SIGSEGV) on such
    shapes when the dilation is above 1 - ``F.conv2d`` too, since it routes there
    (torch 2.14.1, found by fuzzing: tests/test_fuzz_ops.py). The output is just the
    bias there, so nothing is lost by keeping such calls off oneDNN's NHWC path."""
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    for j in range(k):
        first = max(0, -((j * dilation - padding) // stride))  # smallest o with o*s - p + j*d >= 0
        if first < out and first * stride - padding + j * dilation < size:
            return False
    return out > 0


def conv_reads_only_padding(x_hw: tuple[int, int], w_hw: tuple[int, int], stride, padding, dilation) -> bool:
    """:func:`axis_reads_only_padding` along H or W."""
    return any(axis_reads_only_padding(x_hw[i], w_hw[i], stride[i], padding[i], dilation[i]) for i in range(2))


def odd_bf16_channels(x: torch.Tensor, weight: torch.Tensor, groups: int, dtype: torch.dtype) -> bool:
    """Whether a CPU bf16 conv has an odd number of input channels per group.

    oneDNN's bf16 kernels (AVX512-BF16) consume input channels in pairs; with an odd
    count per group, a NaN in one pixel was seen to leak into the neighbouring pixel's
    output (the stem, Cin=3, channels_last). Padding a zero channel makes the count
    even and changes no value."""
    return x.device.type == "cpu" and dtype == torch.bfloat16 and weight.shape[1] % 2 == 1


def pad_input_channels(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, weight) with one zero input channel appended (groups=1): the same conv."""
    return F.pad(x, (0, 0, 0, 0, 0, 1)), F.pad(weight, (0, 0, 0, 0, 0, 1))


def cpu_safe_conv_operands(x, weight, stride, padding, dilation, groups, dtype):
    """(x, weight) for ``F.conv2d`` on the CPU, steered around three oneDNN hazards:

    * every output row/column reading only padding with a channels_last input crashes
      (:func:`conv_reads_only_padding`): computed on NCHW instead;
    * bf16 with an odd channel count per group leaks NaN across pixels
      (:func:`odd_bf16_channels`): a zero channel is padded (groups=1);
    * bf16 weight gradients for a channels_last weight contain uninitialised values
      (torch 2.14.1): the weight is made contiguous, so autograd gets its gradient
      from a dense conv backward and copies it back to the weight's layout.
    """
    if x.device.type != "cpu":
        return x, weight
    if not x.is_contiguous() and conv_reads_only_padding(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        x, weight = x.contiguous(), weight.contiguous()
    if dtype == torch.bfloat16 and not weight.is_contiguous():
        weight = weight.contiguous()
    if groups == 1 and odd_bf16_channels(x, weight, groups, dtype):
        x, weight = pad_input_channels(x, weight)
    return x, weight
