// group_norm_silu vector kernels for any CPU: ATen's portable Vectorized (plain C++ that
// the compiler vectorises for the baseline instruction set). See group_norm_silu_kernel.h.
#define ASCAN_ISA base
#define CPU_CAPABILITY DEFAULT
#include "kernel.h"
