// add_layer_norm row kernels for x86-64 with AVX-512 (F, BW, VL, DQ) + FMA.
// Chosen at run time only on CPUs that have them (add_layer_norm.cpp). See add_layer_norm_kernel.h.
#include "rows.h"

#if ASCAN_X86_KERNELS
#include "ascan/isa_avx512_begin.h"
#include "kernel.h"
#pragma GCC pop_options
#endif
