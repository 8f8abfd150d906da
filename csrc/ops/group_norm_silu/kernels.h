// Internal interface between the CPU group_norm_silu op (group_norm_silu.cpp: checks,
// allocation, statistics merging, threading) and its vector kernels, compiled once per
// CPU instruction set (kernel_{base,avx2,avx512}.cpp). Plain types only: the
// ISA-specific translation units must not share torch-typed inline code with the rest
// of the extension (see kernel.h).
#pragma once

#include <cstdint>

#include "ascan/isa.h"  // ASCAN_X86_KERNELS

namespace ascan::cpu::gn {

// Every kernel takes untyped pointers to x / out in the kernel's dtype (the _f32 or _bf16
// suffix) and float32 statistics / coefficients.
//
// NCHW: a "plane" is the HW contiguous elements of one (n, c).
//   plane_stats: for each of `planes` consecutive planes starting at x, its mean and its
//                sum of squared deviations from that mean (two passes over the plane).
//   plane_apply: out = silu((x - center) * a[p] + b[p]) over each plane p (one group's
//                planes: one center, the group mean).
// channels_last: a "row" is the C contiguous channels of one (n, h, w).
//   rows_stats:  per channel c, over `rows` consecutive rows: mean[c] and the sum of
//                squared deviations m2[c] (two passes over the block of rows).
//   rows_apply:  out = silu((x - center[c]) * a[c] + b[c]) over each of `rows` rows (one
//                sample's center, a, b; center[c] is the mean of c's group).
// Why centred rather than x * a' + b' with the mean folded into b': with a mean of 1e4
// and rstd ~ 1, x * a' and b' are ~1e4 and their sum ~1, so float32 keeps only ~3
// digits of it; (x - mean) is exact for nearby values and keeps all of them.
using PlaneStatsFn = void (*)(const void* x, int64_t HW, int64_t planes, float* mean, float* m2);
using PlaneApplyFn = void (*)(const void* x, void* out, int64_t HW, int64_t planes, float center,
                              const float* a, const float* b);
using RowsStatsFn = void (*)(const void* x, int64_t C, int64_t rows, float* mean, float* m2);
using RowsApplyFn = void (*)(const void* x, void* out, int64_t C, int64_t rows, const float* center,
                             const float* a, const float* b);

#define ASCAN_DECLARE_GROUP_NORM_SILU_KERNELS(isa)                                              \
  namespace isa {                                                                               \
  void plane_stats_f32(const void*, int64_t, int64_t, float*, float*);                          \
  void plane_stats_bf16(const void*, int64_t, int64_t, float*, float*);                         \
  void plane_apply_f32(const void*, void*, int64_t, int64_t, float, const float*, const float*);  \
  void plane_apply_bf16(const void*, void*, int64_t, int64_t, float, const float*, const float*); \
  void rows_stats_f32(const void*, int64_t, int64_t, float*, float*);                           \
  void rows_stats_bf16(const void*, int64_t, int64_t, float*, float*);                          \
  void rows_apply_f32(const void*, void*, int64_t, int64_t, const float*, const float*, const float*);  \
  void rows_apply_bf16(const void*, void*, int64_t, int64_t, const float*, const float*, const float*); \
  }

ASCAN_DECLARE_GROUP_NORM_SILU_KERNELS(base)
#if ASCAN_X86_KERNELS
ASCAN_DECLARE_GROUP_NORM_SILU_KERNELS(avx2)
ASCAN_DECLARE_GROUP_NORM_SILU_KERNELS(avx512)
#endif

#undef ASCAN_DECLARE_GROUP_NORM_SILU_KERNELS

}  // namespace ascan::cpu::gn
