// Helpers of the CPU reference loops (csrc/ops/*/reference.cpp): the per-element math of the
// CUDA kernels (ascan/math.h) run serially on the CPU, so tests can check the formulas and
// the NCHW / channels-last addressing against eager PyTorch without a GPU. Never tuned for
// speed, never picked by the registry: each such op is named *_reference.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <optional>

#include "ascan/checks.h"
#include "ascan/math.h"

namespace ascan::cpu::ref {

// Like the kernels: load as float, compute in float, round once on store.
template <typename T>
inline float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

template <typename F>
void dispatch_float_types(at::ScalarType dt, const char* op, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "ascan ", op, ": unsupported dtype ", dt);
  }
}

inline const float* opt_f32(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<float>() : nullptr;
}

// out[i] = act(x[i] * a[k] + b[k] + res[i]) with k = math::coeff_index(i, ...).
template <typename T>
inline void affine_act_loop(T* out, const T* x, const T* res, const float* a, const float* b, const ActLayout& l,
                     bool per_sample, int act) {
  const int64_t numel = l.N * l.C * l.HW;
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t k = math::coeff_index<int64_t>(i, l.C, l.HW, l.channels_last, per_sample);
    const float r = res != nullptr ? ld(res, i) : 0.0f;
    out[i] = static_cast<T>(math::affine_act(ld(x, i), a != nullptr ? a[k] : 1.0f, b[k], r, act));
  }
}

}  // namespace ascan::cpu::ref
