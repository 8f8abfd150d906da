// The Python module ascan_kernels._C: how the extension was built, which instruction set
// its CPU kernels run with, and a low-overhead entry to add_layer_norm. The ops themselves
// (schemas, CPU/CUDA kernels, reference loops) are defined in csrc/ops/<op>/, one folder
// per op, each with TORCH_LIBRARY_FRAGMENT(ascan_C): which ops have a kernel for which
// device is asked from the dispatcher, not listed here.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "ascan/isa.h"
#include "ops/add_layer_norm/add_layer_norm.h"

#ifdef ASCAN_WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

#ifndef ASCAN_OPS_ABI
#error "setup.py defines ASCAN_OPS_ABI (from ascan_kernels/_ext.py)"
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
  // The layout of the ascan_C ops (names, keys): ascan_kernels/_ext.py's OPS_ABI, which
  // setup.py passes as ASCAN_OPS_ABI, so a binary from an older tree is recognised.
  d["ops_abi"] = ASCAN_OPS_ABI;
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

bool needs_autograd(std::initializer_list<const at::Tensor*> ts) {
  const bool grad_mode = at::GradMode::is_enabled();
  for (const at::Tensor* t : ts) {
    if (!t->defined()) continue;
    if ((grad_mode && t->requires_grad()) || t->_fw_grad(/*level=*/0).defined()) return true;
  }
  return false;
}

// The op through the dispatcher, for Python callers that want less overhead than
// torch.ops.ascan_C.add_layer_norm (whose generic argument parsing costs about 1.5 us, as
// much as the kernel at small shapes). Everything registered for the op still applies
// (CPU kernel, fake kernel under FakeTensorMode, the autograd formula) except that when
// no input needs gradients the Autograd key is skipped outright: a Python autograd
// registration (torch.library.register_autograd) would otherwise cost a few microseconds
// per call just to find that out. torch.compile cannot trace into this function: traced
// code should call torch.ops.ascan_C.add_layer_norm.
std::tuple<at::Tensor, at::Tensor> add_layer_norm_via_dispatcher(const at::Tensor& x, const at::Tensor& residual,
                                                                 const at::Tensor& weight, const at::Tensor& bias,
                                                                 double eps) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ascan_C::add_layer_norm", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, double)>();
  if (!needs_autograd({&x, &residual, &weight, &bias})) {
    at::AutoDispatchBelowADInplaceOrView no_autograd;
    return op.call(x, residual, weight, bias, eps);
  }
  return op.call(x, residual, weight, bias, eps);
}

}  // namespace

TORCH_LIBRARY(ascan_C, m) {
  // Fake (meta) kernels and autograd formulas are registered from Python, next to each op's
  // impls (ascan_kernels/ops/<op>/); importing this module registers them all.
  m.set_python_module("ascan_kernels.ops");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ascan_kernels._C: C++ CPU kernels (and CUDA kernels where built); ops in torch.ops.ascan_C";
  m.def("build_info", &build_info, "How this extension was built: torch version, CUDA, C++ ABI, OpenMP, compiler");
  m.def("add_layer_norm", &add_layer_norm_via_dispatcher, pybind11::arg("x"), pybind11::arg("residual"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("eps"),
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "(s, out) = ascan_C::add_layer_norm(x, residual, weight, bias, eps) through the dispatcher, with "
        "less Python overhead than torch.ops (not traceable by torch.compile: use torch.ops there)");
  m.def("cpu_kernel_isa", &ascan::cpu::cpu_kernel_isa,
        "Instruction set the CPU kernels run with here: avx512, avx2 or base (follows ATEN_CPU_CAPABILITY)");
}
