// Input checks shared by the ops that have a CUDA kernel and a CPU reference loop (the
// reference exercises the same checks and messages the CUDA binding applies). Every
// message starts with "ascan <op>: " and names the input. Each op's own checks are in its
// folder (csrc/ops/<op>/); these are the pieces they share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>

namespace ascan {

// Shape and memory format of an (N, C, *spatial) activation.
struct ActLayout {
  int64_t N = 0, C = 0, HW = 0;
  bool channels_last = false;
};

// x: (N, C, *spatial), at least 3-D, float32/bfloat16/float16 on a `device` device, either
// contiguous (NCHW) or channels-last (4-D channels_last / 5-D channels_last_3d).
ActLayout check_activation(const char* op, const char* name, const at::Tensor& x, c10::DeviceType device);

namespace checks {
bool float_dtype(at::ScalarType dt);
// t defined, on `device`, and on like's device when like is given.
void device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device, const at::Tensor* like);
// A (n,) float32 contiguous parameter next to `x` (optional: absent is fine).
void f32_vector(const char* op, const char* name, const at::Tensor& t, int64_t n, const at::Tensor& x);
void optional_f32_vector(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t n,
                         const at::Tensor& x);
void eps(const char* op, double eps);
}  // namespace checks

}  // namespace ascan
