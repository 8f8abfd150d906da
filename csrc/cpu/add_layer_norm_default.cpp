// Portable build of the add + LayerNorm row kernel (the compiler's baseline ISA).
#define ASCAN_ISA DEFAULT
#include "add_layer_norm_kernel.h"
