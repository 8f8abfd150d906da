// Float32 vector I/O shared by the CPU row kernels (add_layer_norm, group_norm_silu):
// loads and stores of one "step" of 2 * Vectorized<float>::size() elements as two float
// vectors, for float, bfloat16 and float16 storage, plus a horizontal sum and a lane mask. Included by
// the *_kernel.h headers, once per instruction set, after the ISA macros are set (see
// add_layer_norm_kernel.h); it lands in that ISA's namespace.
#pragma once

#ifndef ASCAN_ISA
#error "define ASCAN_ISA (and CPU_CAPABILITY) before including vec_io_kernel.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <tuple>

namespace ascan::cpu::ASCAN_ISA {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kV = Vec::size();

// Loads/stores of 2 * kV elements ("a step") as two float vectors, for each dtype.
// The count overloads handle a row's tail (0 < n < kStep): lanes past n load as 0 and
// are not stored.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static constexpr int64_t kStep = 2 * kV;
  static void load(const float* p, Vec& a, Vec& b) {
    a = Vec::loadu(p);
    b = Vec::loadu(p + kV);
  }
  static void load(const float* p, int64_t n, Vec& a, Vec& b) {
    a = Vec::loadu(p, n < kV ? n : kV);
    b = n > kV ? Vec::loadu(p + kV, n - kV) : Vec(0.f);
  }
  static void store(float* p, const Vec& a, const Vec& b) {
    a.store(p);
    b.store(p + kV);
  }
  static void store(float* p, int64_t n, const Vec& a, const Vec& b) {
    a.store(p, static_cast<int>(n < kV ? n : kV));
    if (n > kV) b.store(p + kV, static_cast<int>(n - kV));
  }
  // Store, leaving (a, b) equal to what was stored: float32 needs no rounding.
  static void store_rounded(float* p, Vec& a, Vec& b) { store(p, a, b); }
  static void store_rounded(float* p, int64_t n, Vec& a, Vec& b) { store(p, n, a, b); }
};

template <typename T>
struct IoReduced {  // c10::BFloat16, c10::Half
  using RVec = at::vec::Vectorized<T>;
  static_assert(RVec::size() == 2 * kV, "a reduced-precision vector must widen to two float vectors");
  static constexpr int64_t kStep = RVec::size();

  static void load(const T* p, Vec& a, Vec& b) { std::tie(a, b) = at::vec::convert_to_float<T>(RVec::loadu(p)); }
  static void load(const T* p, int64_t n, Vec& a, Vec& b) {
    std::tie(a, b) = at::vec::convert_to_float<T>(RVec::loadu(p, static_cast<int>(n)));
  }
  static void store(T* p, const Vec& a, const Vec& b) { at::vec::convert_from_float<T>(a, b).store(p); }
  static void store(T* p, int64_t n, const Vec& a, const Vec& b) {
    at::vec::convert_from_float<T>(a, b).store(p, static_cast<int>(n));
  }
  // Round to T (round-to-nearest-even, like eager), store, and widen the rounded value back.
  static void store_rounded(T* p, Vec& a, Vec& b) {
    const RVec r = at::vec::convert_from_float<T>(a, b);
    r.store(p);
    std::tie(a, b) = at::vec::convert_to_float<T>(r);
  }
  static void store_rounded(T* p, int64_t n, Vec& a, Vec& b) {
    const RVec r = at::vec::convert_from_float<T>(a, b);
    r.store(p, static_cast<int>(n));
    std::tie(a, b) = at::vec::convert_to_float<T>(r);
  }
};

template <>
struct Io<c10::BFloat16> : IoReduced<c10::BFloat16> {};
template <>
struct Io<c10::Half> : IoReduced<c10::Half> {};

inline float horizontal_sum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& p, Vec& q) { return p + q; }, v);
}

// Zero the lanes at index >= n (0 <= n <= kV).
inline Vec keep_first(const Vec& v, int64_t n) { return Vec::set(Vec(0.f), v, n); }

// Free-function spelling of Io<T>::load / store, deduced from the pointer type.
template <typename T>
inline void load2(const T* p, Vec& a, Vec& b) { Io<T>::load(p, a, b); }
template <typename T>
inline void load2(const T* p, int64_t n, Vec& a, Vec& b) { Io<T>::load(p, n, a, b); }
template <typename T>
inline void store2(T* p, const Vec& a, const Vec& b) { Io<T>::store(p, a, b); }
template <typename T>
inline void store2(T* p, int64_t n, const Vec& a, const Vec& b) { Io<T>::store(p, n, a, b); }

}  // namespace
}  // namespace ascan::cpu::ASCAN_ISA
