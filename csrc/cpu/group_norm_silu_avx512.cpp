// group_norm_silu vector kernels for x86-64 with AVX-512 (F, BW, VL, DQ) + FMA.
// Chosen at run time only on CPUs that have them (group_norm_silu.cpp). See group_norm_silu_kernel.h.
#include "group_norm_silu.h"

#if ASCAN_GN_X86_KERNELS
#include "isa_avx512_begin.h"
#include "group_norm_silu_kernel.h"
#pragma GCC pop_options
#endif
