// Opens an AVX2 + FMA region: everything after this include (until the including file's
// `#pragma GCC pop_options`) compiles with the instruction set of ATen's own AVX2
// kernels, with ATen's CPU_CAPABILITY set to match. Include it once per translation unit,
// before ATen's headers (the vector headers pick their code paths from these macros).
// Only for code chosen at run time on CPUs that have these features. No include guard:
// it must take effect in each file that includes it.
#pragma GCC push_options
// Warnings GCC gives inside ATen's vector headers when they are compiled under a target
// pragma (a lambda-to-pointer conversion ABI note, a false maybe-uninitialized).
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "ascan/isa_feature_macros.h"  // the feature macros sleef.h needs under the pragma
#define ASCAN_ISA avx2
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
