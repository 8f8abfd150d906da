// ascan_C::group_norm_silu: silu(group_norm(x) * (1 + scale) + shift). CPU: the fast
// kernel (group_norm_silu.cpp); CUDA: group_norm_silu_kernel.cu via group_norm_silu_cuda.cpp; its
// CPU reference loop, ascan_C::group_norm_silu_reference, is reference.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>

#include "ascan/checks.h"

namespace ascan {

namespace cpu {
// Computed in float32 with one rounding to x's dtype. x: (N, C, H, W) float32 or bfloat16,
// contiguous (NCHW) or channels_last; the output has x's dtype, shape and strides. weight,
// bias: (C,) or None; scale, shift: (N, C) or None; any floating dtype (widened to float32).
// Statistics are two-pass per block, merged exactly (Chan et al.), in float32/float64.
at::Tensor group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift);
}  // namespace cpu

// The CUDA binding's and the reference loop's checks: weight, bias (C,) float32 or None;
// scale, shift (N, C) float32 contiguous or None.
ActLayout check_group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps,
                                const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                c10::DeviceType device);

}  // namespace ascan
