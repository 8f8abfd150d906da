// Torch bindings of ascan_kernels._C. Kernels live in csrc/cpu (and csrc/cuda); this file
// only declares the op schemas, registers their implementations, and exposes how the
// extension was built.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "ascan/add_layer_norm.h"

#ifdef ASCAN_WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

namespace {

#define ASCAN_STR_(x) #x
#define ASCAN_STR(x) ASCAN_STR_(x)

// What this binary was compiled against; ascan_kernels._ext compares it with the torch
// that imports it.
pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = ASCAN_STR(TORCH_VERSION_MAJOR) "." ASCAN_STR(TORCH_VERSION_MINOR) "." ASCAN_STR(
      TORCH_VERSION_PATCH);
  d["torch_version_major"] = TORCH_VERSION_MAJOR;
  d["torch_version_minor"] = TORCH_VERSION_MINOR;
  d["torch_version_patch"] = TORCH_VERSION_PATCH;
#ifdef ASCAN_WITH_CUDA
  d["with_cuda"] = true;
  d["cuda_version"] = CUDA_VERSION;  // e.g. 13000
#else
  d["with_cuda"] = false;
  d["cuda_version"] = pybind11::none();
#endif
  d["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#if defined(__clang__)
  d["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = "gcc " __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
  d["cplusplus"] = static_cast<long>(__cplusplus);
  return d;
}

}  // namespace

TORCH_LIBRARY(ascan_C, m) {
  // Fake (meta) kernels are registered from Python: ascan_kernels/_ext.py.
  m.set_python_module("ascan_kernels._ext");
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("add_layer_norm", &ascan::cpu::add_layer_norm); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ascan_kernels._C: C++ CPU kernels (and CUDA kernels where built); ops in torch.ops.ascan_C";
  m.def("build_info", &build_info, "How this extension was built: torch version, CUDA, C++ ABI, OpenMP, compiler");
  m.def("cpu_kernel_isa", &ascan::cpu::cpu_kernel_isa,
        "Instruction set the CPU kernels run with here: avx512, avx2 or base (follows ATEN_CPU_CAPABILITY)");
}
