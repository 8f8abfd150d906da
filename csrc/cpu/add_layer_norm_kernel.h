// The add + LayerNorm row kernel, compiled once per instruction set.
//
// add_layer_norm_{default,avx2,avx512}.cpp each set an ISA target and include this
// header inside their own namespace; add_layer_norm.cpp picks one at run time from
// ATen's CPU capability. The loops are plain C++ written for the compiler's
// vectoriser (`omp simd`, restrict pointers, branch-free bf16 rounding): this header
// includes no torch headers, so nothing compiled with a wider ISA here can leak into
// inline functions shared with the rest of the program.
//
// Why one pass: eager PyTorch reads x and residual, writes s, then LayerNorm reads s
// again and writes out (3 reads + 2 writes of the activation). Here each row is
// loaded once into a float32 scratch row (C <= a few thousand: it stays in L1/L2)
// and both outputs are written from it (2 reads + 2 writes). For bfloat16, s is
// rounded to bfloat16 *before* it is normalised, so `out` is layer_norm of exactly
// the `s` returned (what eager computes); accumulation is float32 throughout.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "add_layer_norm_dispatch.h"

namespace {

inline float bf16_to_f32(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, NaN stays NaN: the same rounding as c10::BFloat16.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return f != f ? static_cast<uint16_t>(0x7fc0) : rounded;
}

struct F32 {
  using T = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static float load(uint16_t v) { return bf16_to_f32(v); }
  static uint16_t store(float v) { return f32_to_bf16(v); }
};

template <typename S>
void rows(const ascan::cpu::AddLayerNormArgs& a, int64_t begin, int64_t end) {
  using T = typename S::T;
  const int64_t C = a.C;
  const float* __restrict w = a.weight;
  const float* __restrict b = a.bias;
  std::vector<float> scratch(C);
  float* __restrict sb = scratch.data();
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict x = static_cast<const T*>(a.x) + r * C;
    const T* __restrict res = static_cast<const T*>(a.residual) + r * C;
    T* __restrict s_out = static_cast<T*>(a.s) + r * C;
    T* __restrict out = static_cast<T*>(a.out) + r * C;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < C; ++i) {
      const T s = S::store(S::load(x[i]) + S::load(res[i]));
      s_out[i] = s;
      sb[i] = S::load(s);  // the rounded sum: what we return is what we normalise
      sum += sb[i];
    }
    const float mean = sum / static_cast<float>(C);
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < C; ++i) {
      const float d = sb[i] - mean;
      sq += d * d;
    }
    const float rstd = 1.f / std::sqrt(sq / static_cast<float>(C) + a.eps);
#pragma omp simd
    for (int64_t i = 0; i < C; ++i) out[i] = S::store((sb[i] - mean) * rstd * w[i] + b[i]);
  }
}

}  // namespace

namespace ascan::cpu::ASCAN_ISA {

void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t begin, int64_t end) {
  if (a.dtype == RowDtype::kBFloat16) {
    rows<BF16>(a, begin, end);
  } else {
    rows<F32>(a, begin, end);
  }
}

}  // namespace ascan::cpu::ASCAN_ISA
