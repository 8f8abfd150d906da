// add_layer_norm row kernels for x86-64 with AVX-512 (F, BW, VL, DQ) + FMA, selected at
// run time only on CPUs that have them. See add_layer_norm_kernel.h.
#include "add_layer_norm.h"

#if ASCAN_X86_KERNELS
// Same instruction set as ATen's own AVX512 kernels; must precede every include.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define ASCAN_ISA avx512
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "add_layer_norm_kernel.h"
#endif
