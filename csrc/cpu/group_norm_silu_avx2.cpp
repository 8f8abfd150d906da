// group_norm_silu vector kernels for x86-64 with AVX2 + FMA. Chosen at
// run time only on CPUs that have them (group_norm_silu.cpp). See group_norm_silu_kernel.h.
#include "group_norm_silu.h"

#if ASCAN_GN_X86_KERNELS
#pragma GCC push_options
// Warnings GCC gives inside ATen's vector headers when they are compiled under a target
// pragma (a lambda-to-pointer conversion ABI note, a false maybe-uninitialized).
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The instruction set of ATen's own AVX2 kernels, for everything below (it must precede
// every other include).
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "isa_avx2_macros.h"  // the feature macros sleef.h needs under the pragma
#define ASCAN_ISA avx2
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "group_norm_silu_kernel.h"
#pragma GCC pop_options
#endif
