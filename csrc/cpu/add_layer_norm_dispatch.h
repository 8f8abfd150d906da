// Plain-data interface between the torch-facing add_layer_norm and its per-ISA kernels.
#pragma once

#include <cstdint>

namespace ascan::cpu {

enum class RowDtype { kFloat, kBFloat16 };

struct AddLayerNormArgs {
  const void* x;  // float32 or bfloat16 storage, per `dtype`
  const void* residual;
  const float* weight;  // (C,), float32
  const float* bias;    // (C,), float32
  void* s;
  void* out;
  int64_t C;
  float eps;
  RowDtype dtype;
};

// Processes rows [begin, end); one definition per CPU capability.
namespace DEFAULT { void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t begin, int64_t end); }
namespace AVX2 { void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t begin, int64_t end); }
namespace AVX512 { void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t begin, int64_t end); }

}  // namespace ascan::cpu
