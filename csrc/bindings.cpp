// Torch bindings of ascan_kernels._C. Kernels live in csrc/cpu (and csrc/cuda); this
// file only declares schemas, registers implementations and exposes build metadata.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "ascan/add_layer_norm.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = TORCH_VERSION;
#ifdef ASCAN_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["add_layer_norm_isa"] = ascan::cpu::add_layer_norm_kernel_isa();
  d["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace

TORCH_LIBRARY(ascan_C, m) {
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("add_layer_norm", &ascan::cpu::add_layer_norm); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ascan_kernels._C: C++ CPU kernels (and CUDA kernels where built)";
  m.def("build_info", &build_info, "How this extension was built (torch version, CUDA, ABI)");
}
