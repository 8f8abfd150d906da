// Fused residual add + LayerNorm over the last dimension (CPU).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

namespace ascan::cpu {

// s = x + residual; out = layer_norm(s, weight, bias, eps) over the last dim.
// x, residual: (..., C), contiguous, float32 or bfloat16, same dtype and shape.
// weight, bias: (C,), float32 or x's dtype. Returns (s, out), both in x's dtype.
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  double eps);

// Which per-ISA build of the row kernel runs on this CPU: "AVX512", "AVX2" or "DEFAULT".
std::string add_layer_norm_kernel_isa();

}  // namespace ascan::cpu
