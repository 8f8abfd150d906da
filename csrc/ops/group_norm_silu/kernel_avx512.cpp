// group_norm_silu vector kernels for x86-64 with AVX-512 (F, BW, VL, DQ) + FMA.
// Chosen at run time only on CPUs that have them (group_norm_silu.cpp). See group_norm_silu_kernel.h.
#include "kernels.h"

#if ASCAN_X86_KERNELS
#include "ascan/isa_avx512_begin.h"
#include "kernel.h"
#pragma GCC pop_options
#endif
