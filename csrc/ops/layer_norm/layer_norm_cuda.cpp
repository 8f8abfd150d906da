// CUDA binding of ascan_C::layer_norm_fwd / layer_norm_bwd (g++; the kernels are layer_norm_kernel.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ascan/cuda_binding.h"
#include "layer_norm.h"

namespace ascan::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps) {
  const auto [rows, C] = check_layer_norm_fwd(x, weight, bias, eps, kCUDA, kLayerNormMaxC);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  LayerNormFwdArgs a;
  a.y = y.mutable_data_ptr();
  a.mean = mean.mutable_data_ptr<float>();
  a.rstd = rstd.mutable_data_ptr<float>();
  a.x = x.const_data_ptr();
  a.weight = opt_f32(weight);
  a.bias = opt_f32(bias);
  a.rows = rows;
  a.C = C;
  a.eps = static_cast<float>(eps);
  a.dtype = dtype_of(x);
  check_launch(launch_layer_norm_fwd(a, sm_count(), at::cuda::getCurrentCUDAStream()), "layer_norm_fwd");
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight) {
  const auto [rows, C] = check_layer_norm_bwd(dy, x, mean, rstd, weight, kCUDA, kLayerNormMaxC);
  const c10::cuda::CUDAGuard guard(x.device());
  const int sms = sm_count();
  const int blocks = layer_norm_bwd_blocks(rows, sms);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dw_part = at::empty({blocks, C}, f32);
  at::Tensor db_part = at::empty({blocks, C}, f32);
  LayerNormBwdArgs a;
  a.dx = dx.mutable_data_ptr();
  a.dweight_partial = dw_part.mutable_data_ptr<float>();
  a.dbias_partial = db_part.mutable_data_ptr<float>();
  a.dy = dy.const_data_ptr();
  a.x = x.const_data_ptr();
  a.mean = mean.const_data_ptr<float>();
  a.rstd = rstd.const_data_ptr<float>();
  a.weight = opt_f32(weight);
  a.rows = rows;
  a.C = C;
  a.dtype = dtype_of(x);
  check_launch(launch_layer_norm_bwd(a, sms, at::cuda::getCurrentCUDAStream()), "layer_norm_bwd");
  // Second level of the deterministic reduction: the blocks' partial rows.
  return {dx, dw_part.sum(0), db_part.sum(0)};
}

}  // namespace
}  // namespace ascan::cuda

TORCH_LIBRARY_IMPL(ascan_C, CUDA, m) {
  m.impl("layer_norm_fwd", &ascan::cuda::layer_norm_fwd);
  m.impl("layer_norm_bwd", &ascan::cuda::layer_norm_bwd);
}
