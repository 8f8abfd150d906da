// The norm/activation ops of ascan_C that have both a CUDA kernel (csrc/cuda) and a CPU
// reference implementation (csrc/cpu/reference_ops.cpp) registered on one schema, and the
// input checks both share (csrc/norm_act_checks.cpp), so the CPU tests exercise the same
// checks and messages the CUDA binding applies.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace ascan {

// Shape and memory format of an (N, C, *spatial) activation.
struct ActLayout {
  int64_t N = 0, C = 0, HW = 0;
  bool channels_last = false;
};

// x: (N, C, *spatial), at least 3-D, float32/bfloat16/float16 on a `device` device, either
// contiguous (NCHW) or channels-last (4-D channels_last / 5-D channels_last_3d).
ActLayout check_activation(const char* op, const char* name, const at::Tensor& x, c10::DeviceType device);

// ascan_C::bias_act_epilogue_(y, bias, residual, act): y = act(y + bias[c] + residual) in
// place. bias: (C,) float32 contiguous; residual: y's sizes, dtype, device and strides.
ActLayout check_bias_act_epilogue(const at::Tensor& y, const at::Tensor& bias,
                                  const std::optional<at::Tensor>& residual, int64_t act, c10::DeviceType device);

// ascan_C::group_norm_silu(x, num_groups, weight, bias, eps, scale, shift). weight, bias:
// (C,) float32 or None; scale, shift: (N, C) float32 contiguous or None.
ActLayout check_group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps,
                                const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                c10::DeviceType device);

// ascan_C::layer_norm_fwd(x, weight, bias, eps) over x's last dim; x contiguous, weight,
// bias (C,) float32 or None; C <= max_C. Returns (rows, C).
std::pair<int64_t, int64_t> check_layer_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& bias, double eps,
                                                 c10::DeviceType device, int64_t max_C);

// ascan_C::layer_norm_bwd(dy, x, mean, rstd, weight): dy like x (contiguous); mean, rstd:
// (rows,) float32. Returns (rows, C).
std::pair<int64_t, int64_t> check_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                                 c10::DeviceType device, int64_t max_C);

namespace cpu {
// CPU reference implementations: plain loops over ascan/elementwise_math.h, the per-element
// math the CUDA kernels use. For testing that math against eager PyTorch, not for speed.
void bias_act_epilogue_(const at::Tensor& y, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                        int64_t act);
at::Tensor group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift);
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight);
}  // namespace cpu

}  // namespace ascan
