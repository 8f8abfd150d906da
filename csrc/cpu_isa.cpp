// The instruction set of the CPU kernels (add_layer_norm, group_norm_silu): see ascan/isa.h.
#include "ascan/isa.h"

#include <ATen/Version.h>

#include <string>

namespace ascan::cpu {
namespace {

Isa detect_isa() {
#if ASCAN_X86_KERNELS
  // torch's choice honours ATEN_CPU_CAPABILITY (e.g. =avx2 or =default to force a lower
  // one); the cpu checks guard against a torch that would claim more than this CPU has.
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (cap == "AVX512" && avx512) return Isa::kAvx512;
  if ((cap == "AVX512" || cap == "AVX2") && avx2) return Isa::kAvx2;
#endif
  return Isa::kBase;
}

}  // namespace

Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

const char* cpu_kernel_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

}  // namespace ascan::cpu
