// Row kernels of add_layer_norm, written once against at::vec::Vectorized<float> and
// compiled once per instruction set. Include ONLY from kernel_{base,avx2,avx512}.cpp,
// each of which first defines:
//   ASCAN_ISA       the namespace the kernels go to (base, avx2, avx512),
//   CPU_CAPABILITY  + CPU_CAPABILITY_<ISA>: what selects ATen's vector implementation and
//                   puts its inline code in an ISA-specific namespace (at::vec::AVX512 ...),
// and, for avx2/avx512, a `#pragma GCC target` enabling those instructions.
//
// Rules that keep the ISA-specific code from leaking into the rest of the extension:
// nothing here has static storage or runs at load time, nothing is called except through
// the entry points at the bottom, and only at::vec and plain arithmetic are used (no at::Tensor,
// no dispatcher, no threading: the caller parallelises over rows).
//
// Per row (C elements, kept hot in L1 between the passes):
//   1. s = x + residual in float32, rounded to the input dtype and stored; the sum of the
//      *rounded* s is accumulated (so the statistics are those of the s we return, as in
//      eager `layer_norm(x + residual)`). For bfloat16/float16 the rounded row is also kept
//      widened in a float32 row buffer that passes 2 and 3 read.
//   2. variance = mean((s - mean)^2): the two-pass formula, no cancellation.
//   3. out = (s - mean) * rstd * weight + bias, rounded to the input dtype.
// All arithmetic is float32; reduced-precision inputs, weight and bias are widened on load.
#pragma once

#ifndef ASCAN_ISA
#error "define ASCAN_ISA (and CPU_CAPABILITY) before including add_layer_norm_kernel.h"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "rows.h"
#include "ascan/vec_io.h"

namespace ascan::cpu::ASCAN_ISA {
namespace {

// Rows up to this long keep their float32 copy of s on the stack (16 KiB); longer ones
// use the heap, once per call.
constexpr int64_t kStackRow = 4096;

// T: dtype of x, residual and the outputs. WT: dtype of weight and bias (float or T).
template <typename T, typename WT>
void add_layer_norm_rows(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  using IO = Io<T>;
  using WIO = Io<WT>;
  using FIO = Io<float>;
  static_assert(IO::kStep == WIO::kStep && IO::kStep == FIO::kStep);
  constexpr int64_t kStep = IO::kStep;
  constexpr bool kReduced = !std::is_same_v<T, float>;
  const int64_t C = args.C;
  const int64_t body = C - C % kStep;
  const int64_t tail = C - body;
  const WT* w = static_cast<const WT*>(args.weight);
  const WT* bb = static_cast<const WT*>(args.bias);

  // For reduced-precision T, passes 2 and 3 read the rounded s widened to float32 from
  // this row buffer (in L1) instead of widening s again; float32 rows re-read s itself.
  alignas(64) float stack_row[kReduced ? kStackRow : 1];
  float* heap_row = (kReduced && C > kStackRow) ? new float[C] : nullptr;
  float* row_buf = heap_row != nullptr ? heap_row : stack_row;

  for (int64_t row = begin; row < end; ++row) {
    const int64_t off = row * C;
    const T* x = static_cast<const T*>(args.x) + off;
    const T* res = static_cast<const T*>(args.residual) + off;
    T* s = static_cast<T*>(args.sum) + off;
    T* out = static_cast<T*>(args.out) + off;
    float* sf;  // s as float32
    if constexpr (kReduced) {
      sf = row_buf;
    } else {
      sf = s;
    }

    // Pass 1: s = x + residual (rounded to T), and the sum of the rounded values.
    Vec acc0(0.f), acc1(0.f);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec xa, xb, ra, rb;
      IO::load(x + i, xa, xb);
      IO::load(res + i, ra, rb);
      Vec sa = xa + ra, sb = xb + rb;
      IO::store_rounded(s + i, sa, sb);
      if constexpr (kReduced) FIO::store(sf + i, sa, sb);
      acc0 += sa;
      acc1 += sb;
    }
    if (tail > 0) {
      Vec xa, xb, ra, rb;
      IO::load(x + body, tail, xa, xb);
      IO::load(res + body, tail, ra, rb);
      Vec sa = xa + ra, sb = xb + rb;  // 0 + 0 in the lanes past the row
      IO::store_rounded(s + body, tail, sa, sb);
      if constexpr (kReduced) FIO::store(sf + body, tail, sa, sb);
      acc0 += sa;
      acc1 += sb;
    }
    const float mean = horizontal_sum(acc0 + acc1) / static_cast<float>(C);

    // Pass 2: sum of squared deviations from the mean (two-pass: no cancellation).
    const Vec vmean(mean);
    Vec sq0(0.f), sq1(0.f);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec sa, sb;
      FIO::load(sf + i, sa, sb);
      const Vec da = sa - vmean, db = sb - vmean;
      sq0 = at::vec::fmadd(da, da, sq0);
      sq1 = at::vec::fmadd(db, db, sq1);
    }
    if (tail > 0) {
      Vec sa, sb;
      FIO::load(sf + body, tail, sa, sb);
      const Vec da = keep_first(sa - vmean, tail < kV ? tail : kV);
      const Vec db = keep_first(sb - vmean, tail > kV ? tail - kV : 0);
      sq0 = at::vec::fmadd(da, da, sq0);
      sq1 = at::vec::fmadd(db, db, sq1);
    }
    const float var = horizontal_sum(sq0 + sq1) / static_cast<float>(C);
    const float rstd = 1.f / std::sqrt(var + args.eps);

    // Pass 3: out = (s - mean) * rstd * weight + bias, rounded to T.
    const Vec vrstd(rstd);
    for (int64_t i = 0; i < body; i += kStep) {
      Vec sa, sb, wa, wb, ba, bbv;
      FIO::load(sf + i, sa, sb);
      WIO::load(w + i, wa, wb);
      WIO::load(bb + i, ba, bbv);
      const Vec ya = at::vec::fmadd((sa - vmean) * vrstd, wa, ba);
      const Vec yb = at::vec::fmadd((sb - vmean) * vrstd, wb, bbv);
      IO::store(out + i, ya, yb);
    }
    if (tail > 0) {
      Vec sa, sb, wa, wb, ba, bbv;
      FIO::load(sf + body, tail, sa, sb);
      WIO::load(w + body, tail, wa, wb);
      WIO::load(bb + body, tail, ba, bbv);
      const Vec ya = at::vec::fmadd((sa - vmean) * vrstd, wa, ba);
      const Vec yb = at::vec::fmadd((sb - vmean) * vrstd, wb, bbv);
      IO::store(out + body, tail, ya, yb);
    }
  }
  delete[] heap_row;
}

}  // namespace

void add_layer_norm_rows_f32(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  add_layer_norm_rows<float, float>(args, begin, end);
}
void add_layer_norm_rows_bf16(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  add_layer_norm_rows<c10::BFloat16, float>(args, begin, end);
}
void add_layer_norm_rows_bf16_wbf16(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  add_layer_norm_rows<c10::BFloat16, c10::BFloat16>(args, begin, end);
}
void add_layer_norm_rows_f16(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  add_layer_norm_rows<c10::Half, float>(args, begin, end);
}
void add_layer_norm_rows_f16_wf16(const AddLayerNormArgs& args, int64_t begin, int64_t end) {
  add_layer_norm_rows<c10::Half, c10::Half>(args, begin, end);
}

}  // namespace ascan::cpu::ASCAN_ISA
