// add_layer_norm row kernels for x86-64 with AVX2 + FMA (+ F16C for float16), selected at
// run time only on CPUs that have them. See add_layer_norm_kernel.h.
#include "add_layer_norm.h"

#if ASCAN_X86_KERNELS
// Same instruction set as ATen's own AVX2 kernels; must precede every include.
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define ASCAN_ISA avx2
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "add_layer_norm_kernel.h"
#endif
