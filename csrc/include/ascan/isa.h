// Which instruction set the CPU kernels run with: one choice for the whole extension.
// Plain C++ only (the per-ISA translation units include this before their target pragma).
#pragma once

// The x86-64 AVX2 / AVX-512 kernel variants are built with GCC only (they use
// `#pragma GCC target`); elsewhere the portable `base` kernels run.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ASCAN_X86_KERNELS 1
#else
#define ASCAN_X86_KERNELS 0
#endif

namespace ascan::cpu {

enum class Isa { kBase, kAvx2, kAvx512 };

// torch's own choice (ATen's CPU capability, which ATEN_CPU_CAPABILITY overrides),
// checked against what this CPU has; decided once per process.
Isa isa();

// The same as "avx512", "avx2" or "base" (what ascan_kernels._C.cpu_kernel_isa() returns).
const char* cpu_kernel_isa();

}  // namespace ascan::cpu
