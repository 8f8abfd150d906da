// ascan_C::layer_norm_fwd / layer_norm_bwd: LayerNorm over the last dim with saved
// statistics (CUDA kernel in layer_norm_kernel.cu, one warp per row, C <= kLayerNormMaxC) and their
// CPU reference loops *_reference; the checks both apply.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace ascan {

// x contiguous, weight, bias (C,) float32 or None; C <= max_C. Returns (rows, C).
std::pair<int64_t, int64_t> check_layer_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& bias, double eps,
                                                 c10::DeviceType device, int64_t max_C);

// dy like x (contiguous); mean, rstd: (rows,) float32. Returns (rows, C).
std::pair<int64_t, int64_t> check_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                                 c10::DeviceType device, int64_t max_C);

}  // namespace ascan
