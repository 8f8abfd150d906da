// ascan_C::add_layer_norm: fused residual add + LayerNorm over the last dimension (CPU).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ascan::cpu {

// s = x + residual; out = layer_norm(s, weight, bias, eps) over the last dim.
// x, residual: (..., C), contiguous, float32 / bfloat16 / float16, same dtype and shape.
// weight, bias: (C,), contiguous, float32 or x's dtype. Returns (s, out) in x's dtype;
// out is normalised from s as rounded to that dtype, like eager PyTorch.
std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  double eps);

}  // namespace ascan::cpu
