// Helpers of the CUDA torch bindings (csrc/ops/*/*_cuda.cpp, compiled by g++): the dtype
// code the launchers take, the device's SM count, and the launch check that names the op.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <optional>

#include "ascan/cuda_kernels.h"

namespace ascan::cuda {

inline constexpr auto kCUDA = c10::DeviceType::CUDA;

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "ascan: unsupported dtype ", t.scalar_type());  // the checks reject it first
  }
}

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "ascan ", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

inline const float* opt_f32(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<float>() : nullptr;
}

}  // namespace ascan::cuda
