// Internal interface between the add_layer_norm op (add_layer_norm.cpp: checks,
// allocation, threading) and its row kernels, compiled once per CPU instruction set
// (kernel_{base,avx2,avx512}.cpp). Plain types only: the ISA-specific
// translation units must not share torch-typed inline code with the rest of the
// extension (see kernel.h).
#pragma once

#include <cstdint>

#include "ascan/isa.h"  // ASCAN_X86_KERNELS

namespace ascan::cpu {

struct AddLayerNormArgs {
  const void* x;         // (rows, C) in the input dtype
  const void* residual;  // (rows, C) in the input dtype
  const void* weight;    // (C,) float32, or the input dtype (the *_w<dtype> kernels)
  const void* bias;      // (C,) same dtype as weight
  void* sum;             // (rows, C) output s = x + residual, input dtype
  void* out;             // (rows, C) output layer_norm(s), input dtype
  int64_t C;
  float eps;
};

// Processes rows [begin, end).
using AddLayerNormRowsFn = void (*)(const AddLayerNormArgs&, int64_t begin, int64_t end);

#define ASCAN_DECLARE_ADD_LAYER_NORM_ROWS(isa)                                  \
  namespace isa {                                                               \
  void add_layer_norm_rows_f32(const AddLayerNormArgs&, int64_t, int64_t);      \
  void add_layer_norm_rows_bf16(const AddLayerNormArgs&, int64_t, int64_t);     \
  void add_layer_norm_rows_bf16_wbf16(const AddLayerNormArgs&, int64_t, int64_t); \
  void add_layer_norm_rows_f16(const AddLayerNormArgs&, int64_t, int64_t);      \
  void add_layer_norm_rows_f16_wf16(const AddLayerNormArgs&, int64_t, int64_t); \
  }

ASCAN_DECLARE_ADD_LAYER_NORM_ROWS(base)
#if ASCAN_X86_KERNELS
ASCAN_DECLARE_ADD_LAYER_NORM_ROWS(avx2)
ASCAN_DECLARE_ADD_LAYER_NORM_ROWS(avx512)
#endif

#undef ASCAN_DECLARE_ADD_LAYER_NORM_ROWS

}  // namespace ascan::cpu
