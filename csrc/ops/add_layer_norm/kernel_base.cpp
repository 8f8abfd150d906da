// add_layer_norm row kernels for any CPU: ATen's portable Vectorized (plain C++ that the
// compiler vectorises for the baseline instruction set). See add_layer_norm_kernel.h.
#define ASCAN_ISA base
#define CPU_CAPABILITY DEFAULT
#include "kernel.h"
