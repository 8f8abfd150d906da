// Torch binding of the CUDA kernels (compiled by g++, not nvcc): checks every input with
// the checks the CPU reference shares (ascan/norm_act_ops.h), allocates outputs and
// workspaces, calls the raw-pointer launchers of ascan/cuda_kernels.h on the current
// stream and device, and turns a failed launch into an error naming the op.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ascan/cuda_kernels.h"
#include "ascan/norm_act_ops.h"

namespace ascan::cuda {
namespace {

constexpr auto kCUDA = c10::DeviceType::CUDA;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "ascan: unsupported dtype ", t.scalar_type());  // the checks reject it first
  }
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "ascan ", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

const float* opt_f32(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<float>() : nullptr;
}

void bias_act_epilogue_(const at::Tensor& y, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                        int64_t act) {
  const ActLayout l = check_bias_act_epilogue(y, bias, residual, act, kCUDA);
  const c10::cuda::CUDAGuard guard(y.device());
  AffineActArgs a;
  a.out = y.mutable_data_ptr();
  a.x = y.const_data_ptr();
  a.residual = residual.has_value() && residual->defined() ? residual->const_data_ptr() : nullptr;
  a.b = bias.const_data_ptr<float>();
  a.N = l.N;
  a.C = l.C;
  a.HW = l.HW;
  a.channels_last = l.channels_last;
  a.act = static_cast<int>(act);
  a.dtype = dtype_of(y);
  check_launch(launch_affine_act(a, sm_count(), at::cuda::getCurrentCUDAStream()), "bias_act_epilogue_");
}

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
  m.impl("bias_act_epilogue_", &ascan::cuda::bias_act_epilogue_);
  m.impl("group_norm_silu", &ascan::cuda::group_norm_silu);
  m.impl("layer_norm_fwd", &ascan::cuda::layer_norm_fwd);
  m.impl("layer_norm_bwd", &ascan::cuda::layer_norm_bwd);
}
