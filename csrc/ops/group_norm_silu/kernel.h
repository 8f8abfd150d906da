// Vector kernels of the CPU group_norm_silu op, written once against
// at::vec::Vectorized<float> and compiled once per instruction set. Include ONLY from
// kernel_{base,avx2,avx512}.cpp, each of which first defines:
//   ASCAN_ISA       the namespace the kernels go to (base, avx2, avx512),
//   CPU_CAPABILITY  + CPU_CAPABILITY_<ISA>: what selects ATen's vector implementation and
//                   puts its inline code in an ISA-specific namespace (at::vec::AVX512 ...),
// and, for avx2/avx512, a `#pragma GCC target` enabling those instructions.
//
// Same rules as ../add_layer_norm/kernel.h: nothing here has static storage or runs at load
// time, nothing is reachable except the entry points at the bottom, and only at::vec and
// plain arithmetic are used (no at::Tensor, no dispatcher, no threading: the caller,
// group_norm_silu.cpp, splits the work and merges the statistics).
//
// All arithmetic is float32; bfloat16 inputs are widened on load and the result is
// rounded once on store. Statistics are two-pass (a mean, then the sum of squared
// deviations from it) over blocks that stay in L1/L2 between the passes, and the apply
// subtracts the group mean before scaling, so a large common offset (mean 1e4, spread 1)
// does not cancel.
#pragma once

#ifndef ASCAN_ISA
#error "define ASCAN_ISA (and CPU_CAPABILITY) before including group_norm_silu_kernel.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <tuple>

#include "kernels.h"
#include "ascan/vec_io.h"

namespace ascan::cpu::gn::ASCAN_ISA {
namespace {

// Vec, kV, Io<T>, load2/store2, horizontal_sum and keep_first (vec_io_kernel.h).
using namespace ::ascan::cpu::ASCAN_ISA;
using BVec = at::vec::Vectorized<c10::BFloat16>;
// Elements handled per step: two float vectors, i.e. one bfloat16 vector.
constexpr int64_t kStep = 2 * kV;
static_assert(BVec::size() == kStep, "a bfloat16 vector must widen to two float vectors");

// silu(z) = z / (1 + exp(-z)). exp_u20 is ATen's fast exp (about 20 ulp, ~2e-6 relative:
// far below bfloat16's step and within float32's test tolerance); it saturates for
// z < -88 instead of overflowing, which still gives silu -> -0.
inline Vec silu(const Vec& z) { return z / (Vec(1.f) + z.neg().exp_u20()); }

// ---- NCHW: planes of HW contiguous elements -------------------------------------------

template <typename T>
void plane_stats(const void* xv, int64_t HW, int64_t planes, float* mean, float* m2) {
  const int64_t body = HW - HW % kStep;
  const int64_t tail = HW - body;
  const float inv_hw = 1.f / static_cast<float>(HW);
  for (int64_t p = 0; p < planes; ++p) {
    const T* x = static_cast<const T*>(xv) + p * HW;
    // Pass 1: the mean.
    Vec s0(0.f), s1(0.f);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec a, b;
      load2(x + i, a, b);
      s0 += a;
      s1 += b;
    }
    if (tail > 0) {
      Vec a, b;
      load2(x + body, tail, a, b);  // zeros past the plane
      s0 += a;
      s1 += b;
    }
    const float mu = horizontal_sum(s0 + s1) * inv_hw;
    // Pass 2: squared deviations from it (the plane is in L1 now).
    const Vec vmu(mu);
    Vec q0(0.f), q1(0.f);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec a, b;
      load2(x + i, a, b);
      const Vec da = a - vmu, db = b - vmu;
      q0 = at::vec::fmadd(da, da, q0);
      q1 = at::vec::fmadd(db, db, q1);
    }
    if (tail > 0) {
      Vec a, b;
      load2(x + body, tail, a, b);
      const Vec da = keep_first(a - vmu, tail < kV ? tail : kV);
      const Vec db = keep_first(b - vmu, tail > kV ? tail - kV : 0);
      q0 = at::vec::fmadd(da, da, q0);
      q1 = at::vec::fmadd(db, db, q1);
    }
    mean[p] = mu;
    m2[p] = horizontal_sum(q0 + q1);
  }
}

template <typename T>
void plane_apply(const void* xv, void* outv, int64_t HW, int64_t planes, float center, const float* a,
                 const float* b) {
  const int64_t body = HW - HW % kStep;
  const int64_t tail = HW - body;
  const Vec vm(center);
  for (int64_t p = 0; p < planes; ++p) {
    const T* x = static_cast<const T*>(xv) + p * HW;
    T* out = static_cast<T*>(outv) + p * HW;
    const Vec va(a[p]), vb(b[p]);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec x0, x1;
      load2(x + i, x0, x1);
      store2(out + i, silu(at::vec::fmadd(x0 - vm, va, vb)), silu(at::vec::fmadd(x1 - vm, va, vb)));
    }
    if (tail > 0) {
      Vec x0, x1;
      load2(x + body, tail, x0, x1);
      store2(out + body, tail, silu(at::vec::fmadd(x0 - vm, va, vb)), silu(at::vec::fmadd(x1 - vm, va, vb)));
    }
  }
}

// ---- channels_last: rows of C contiguous channels ---------------------------------------

// Per-channel two-pass statistics of one block of `rows` rows, kStep channels at a time
// (n of them in a tail block). Walking down the rows keeps the accumulators in
// registers; the block's column (rows x kStep elements) is still in L1 for pass 2.
template <typename T>
void column_stats(const T* x, int64_t C, int64_t rows, int64_t n, float* mean, float* m2) {
  const bool full = n == kStep;
  Vec s0(0.f), s1(0.f);
  for (int64_t r = 0; r < rows; ++r) {
    Vec a, b;
    if (full) load2(x + r * C, a, b); else load2(x + r * C, n, a, b);
    s0 += a;
    s1 += b;
  }
  // Lanes past n hold 0 (loaded as 0), so their mean and deviations are 0 as well.
  const Vec inv_rows(1.f / static_cast<float>(rows));
  const Vec mu0 = s0 * inv_rows, mu1 = s1 * inv_rows;
  Vec q0(0.f), q1(0.f);
  for (int64_t r = 0; r < rows; ++r) {
    Vec a, b;
    if (full) load2(x + r * C, a, b); else load2(x + r * C, n, a, b);
    const Vec da = a - mu0, db = b - mu1;
    q0 = at::vec::fmadd(da, da, q0);
    q1 = at::vec::fmadd(db, db, q1);
  }
  if (full) {
    store2(mean, mu0, mu1);
    store2(m2, q0, q1);
  } else {
    store2(mean, n, mu0, mu1);
    store2(m2, n, q0, q1);
  }
}

template <typename T>
void rows_stats(const void* xv, int64_t C, int64_t rows, float* mean, float* m2) {
  const T* x = static_cast<const T*>(xv);
  const int64_t body = C - C % kStep;
  for (int64_t c = 0; c < body; c += kStep) column_stats(x + c, C, rows, kStep, mean + c, m2 + c);
  if (body < C) column_stats(x + body, C, rows, C - body, mean + body, m2 + body);
}

template <typename T>
void rows_apply(const void* xv, void* outv, int64_t C, int64_t rows, const float* center, const float* a,
                const float* b) {
  const int64_t body = C - C % kStep;
  const int64_t tail = C - body;
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(xv) + r * C;
    T* out = static_cast<T*>(outv) + r * C;
    for (int64_t c = 0; c < body; c += kStep) {
      Vec x0, x1, m0, m1, a0, a1, b0, b1;
      load2(x + c, x0, x1);
      load2(center + c, m0, m1);
      load2(a + c, a0, a1);
      load2(b + c, b0, b1);
      store2(out + c, silu(at::vec::fmadd(x0 - m0, a0, b0)), silu(at::vec::fmadd(x1 - m1, a1, b1)));
    }
    if (tail > 0) {
      Vec x0, x1, m0, m1, a0, a1, b0, b1;
      load2(x + body, tail, x0, x1);
      load2(center + body, tail, m0, m1);
      load2(a + body, tail, a0, a1);
      load2(b + body, tail, b0, b1);
      store2(out + body, tail, silu(at::vec::fmadd(x0 - m0, a0, b0)), silu(at::vec::fmadd(x1 - m1, a1, b1)));
    }
  }
}

}  // namespace

void plane_stats_f32(const void* x, int64_t HW, int64_t planes, float* mean, float* m2) {
  plane_stats<float>(x, HW, planes, mean, m2);
}
void plane_stats_bf16(const void* x, int64_t HW, int64_t planes, float* mean, float* m2) {
  plane_stats<c10::BFloat16>(x, HW, planes, mean, m2);
}
void plane_apply_f32(const void* x, void* out, int64_t HW, int64_t planes, float center, const float* a,
                     const float* b) {
  plane_apply<float>(x, out, HW, planes, center, a, b);
}
void plane_apply_bf16(const void* x, void* out, int64_t HW, int64_t planes, float center, const float* a,
                      const float* b) {
  plane_apply<c10::BFloat16>(x, out, HW, planes, center, a, b);
}
void rows_stats_f32(const void* x, int64_t C, int64_t rows, float* mean, float* m2) {
  rows_stats<float>(x, C, rows, mean, m2);
}
void rows_stats_bf16(const void* x, int64_t C, int64_t rows, float* mean, float* m2) {
  rows_stats<c10::BFloat16>(x, C, rows, mean, m2);
}
void rows_apply_f32(const void* x, void* out, int64_t C, int64_t rows, const float* center, const float* a,
                    const float* b) {
  rows_apply<float>(x, out, C, rows, center, a, b);
}
void rows_apply_bf16(const void* x, void* out, int64_t C, int64_t rows, const float* center, const float* a,
                     const float* b) {
  rows_apply<c10::BFloat16>(x, out, C, rows, center, a, b);
}

}  // namespace ascan::cpu::gn::ASCAN_ISA
