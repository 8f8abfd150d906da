// CUDA binding of ascan_C::group_norm_silu (g++; the kernel is group_norm_silu_kernel.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ascan/cuda_binding.h"
#include "group_norm_silu.h"

namespace ascan::cuda {
namespace {

at::Tensor group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift) {
  const ActLayout l = check_group_norm_silu(x, num_groups, weight, bias, eps, scale, shift, kCUDA);
  TORCH_CHECK(l.N * num_groups <= 65535, "ascan group_norm_silu: N * num_groups = ", l.N * num_groups,
              " exceeds the kernel's grid limit of 65535");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);  // x's memory format (the checks allow only NCHW or channels-last)
  if (x.numel() == 0) return out;
  const int sms = sm_count();
  const int splits = group_norm_splits(l.N, num_groups, (l.C / num_groups) * l.HW, sms);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor partial = at::empty({l.N * num_groups * splits * 3}, f32);
  at::Tensor coeffs = at::empty({2 * l.N * l.C}, f32);
  GroupNormSiluArgs a;
  a.out = out.mutable_data_ptr();
  a.x = x.const_data_ptr();
  a.weight = opt_f32(weight);
  a.bias = opt_f32(bias);
  a.scale = opt_f32(scale);
  a.shift = opt_f32(shift);
  a.partial_stats = partial.mutable_data_ptr<float>();
  a.coeffs = coeffs.mutable_data_ptr<float>();
  a.N = l.N;
  a.C = l.C;
  a.HW = l.HW;
  a.groups = num_groups;
  a.eps = static_cast<float>(eps);
  a.channels_last = l.channels_last;
  a.dtype = dtype_of(x);
  check_launch(launch_group_norm_silu(a, sms, at::cuda::getCurrentCUDAStream()), "group_norm_silu");
  return out;
}

}  // namespace
}  // namespace ascan::cuda

TORCH_LIBRARY_IMPL(ascan_C, CUDA, m) { m.impl("group_norm_silu", &ascan::cuda::group_norm_silu); }
