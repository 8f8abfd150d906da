// add_layer_norm row kernels for x86-64 with AVX2 + FMA (+ F16C for float16). Chosen at
// run time only on CPUs that have them (add_layer_norm.cpp). See add_layer_norm_kernel.h.
#include "add_layer_norm.h"

#if ASCAN_X86_KERNELS
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
#include "add_layer_norm_kernel.h"
#pragma GCC pop_options
#endif
