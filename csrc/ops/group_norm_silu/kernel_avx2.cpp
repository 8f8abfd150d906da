// group_norm_silu vector kernels for x86-64 with AVX2 + FMA.
// Chosen at run time only on CPUs that have them (group_norm_silu.cpp). See group_norm_silu_kernel.h.
#include "kernels.h"

#if ASCAN_X86_KERNELS
#include "ascan/isa_avx2_begin.h"
#include "kernel.h"
#pragma GCC pop_options
#endif
