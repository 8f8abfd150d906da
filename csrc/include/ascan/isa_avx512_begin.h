// Opens an AVX-512 (F, BW, VL, DQ) + FMA region: everything after this include (until the
// including file's `#pragma GCC pop_options`) compiles with the instruction set of ATen's
// own AVX512 kernels, with ATen's CPU_CAPABILITY set to match. Include it once per
// translation unit, before ATen's headers. Only for code chosen at run time on CPUs that
// have these features. No include guard: it must take effect in each file that includes it.
#pragma GCC push_options
// Warnings GCC gives inside ATen's vector headers when they are compiled under a target
// pragma (a lambda-to-pointer conversion ABI note, a false maybe-uninitialized).
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "ascan/isa_feature_macros.h"  // the AVX2-level feature macros sleef.h needs under the pragma
// ... and the AVX-512 ones, for sleef's AVX-512 declarations.
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define ASCAN_ISA avx512
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
