// ascan_C::bias_act_epilogue_(y, bias, residual, act): y = act(y + bias[c] + residual) in
// place, the conv_bn ops' epilogue after a cuDNN convolution (CUDA kernel in
// csrc/cuda/affine_act.cu, binding in bias_act_epilogue_cuda.cpp) and its CPU reference loop
// ascan_C::bias_act_epilogue_reference_. act: 0 none, 1 gelu (erf), 2 gelu (tanh), 3 silu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <optional>

#include "ascan/checks.h"

namespace ascan {

// bias: (C,) float32 contiguous; residual: y's sizes, dtype, device and strides.
ActLayout check_bias_act_epilogue(const at::Tensor& y, const at::Tensor& bias,
                                  const std::optional<at::Tensor>& residual, int64_t act, c10::DeviceType device);

}  // namespace ascan
