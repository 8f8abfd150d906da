// AVX2 + FMA build of the add + LayerNorm row kernel; run only where ATen reports AVX2.
#include "add_layer_norm_dispatch.h"
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#define ASCAN_ISA AVX2
#include "add_layer_norm_kernel.h"
#else
namespace ascan::cpu::AVX2 {
void add_layer_norm_rows(const AddLayerNormArgs& a, int64_t b, int64_t e) { DEFAULT::add_layer_norm_rows(a, b, e); }
}  // namespace ascan::cpu::AVX2
#endif
