// CUDA binding of ascan_C::bias_act_epilogue_ (g++; the kernel is csrc/cuda/affine_act.cu).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ascan/cuda_binding.h"
#include "bias_act_epilogue.h"

namespace ascan::cuda {
namespace {

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

}  // namespace
}  // namespace ascan::cuda

TORCH_LIBRARY_IMPL(ascan_C, CUDA, m) { m.impl("bias_act_epilogue_", &ascan::cuda::bias_act_epilogue_); }
