// The fast CPU group_norm_silu (ascan_C::group_norm_silu_cpu); declared for bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace ascan::cpu {

// silu(group_norm(x, num_groups, weight, bias, eps) * (1 + scale) + shift), computed in
// float32 with one rounding to x's dtype. x: (N, C, H, W) float32 or bfloat16, contiguous
// (NCHW) or channels_last; the output has x's dtype, shape and strides. weight, bias:
// (C,) or None; scale, shift: (N, C) or None; any floating dtype (widened to float32).
// Statistics are two-pass per block, merged exactly (Chan et al.), in float32/float64.
at::Tensor group_norm_silu_cpu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps,
                               const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift);

}  // namespace ascan::cpu
