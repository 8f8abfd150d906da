// ascan_C::add_layer_norm on the CPU: its schema, input checks, output allocation, the choice of row
// kernel for this CPU, and the parallel loop over rows. The arithmetic is in
// kernel.h.
//
// Why fused: eager PyTorch reads x and residual and writes s, then LayerNorm reads s
// (statistics), reads it again (normalise) and writes out, with two dispatcher calls, two
// parallel regions and mean/rstd allocations. Here each row of x and residual is read
// once, s is written and re-read from L1, and out is written: one pass over memory.
#include "add_layer_norm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "ascan/isa.h"
#include "rows.h"

namespace ascan::cpu {
namespace {

// The row kernel for this CPU, x's dtype and weight/bias's dtype (float32 or x's).
AddLayerNormRowsFn pick_kernel(at::ScalarType dt, at::ScalarType wdt) {
  const bool wf32 = wdt == at::kFloat;
#define ASCAN_PICK(ns)                                                                            \
  switch (dt) {                                                                                   \
    case at::kFloat: return &ns::add_layer_norm_rows_f32;                                         \
    case at::kBFloat16: return wf32 ? &ns::add_layer_norm_rows_bf16 : &ns::add_layer_norm_rows_bf16_wbf16; \
    case at::kHalf: return wf32 ? &ns::add_layer_norm_rows_f16 : &ns::add_layer_norm_rows_f16_wf16;       \
    default: TORCH_CHECK(false, "ascan add_layer_norm: unsupported dtype ", dt);                  \
  }
  switch (isa()) {
#if ASCAN_X86_KERNELS
    case Isa::kAvx512: ASCAN_PICK(avx512)
    case Isa::kAvx2: ASCAN_PICK(avx2)
#endif
    default: ASCAN_PICK(base)
  }
#undef ASCAN_PICK
}

// Rows per task: about this many elements, so that small inputs stay on one thread
// (a parallel region costs a few microseconds) and large ones use every core.
constexpr int64_t kGrainElements = 16384;

void check_inputs(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                  const at::Tensor& bias, double eps) {
  const auto named = {std::make_pair("x", &x), std::make_pair("residual", &residual),
                      std::make_pair("weight", &weight), std::make_pair("bias", &bias)};
  for (const auto& [name, t] : named) {
    TORCH_CHECK(t->defined(), "ascan add_layer_norm: ", name, " is undefined (None)");
    TORCH_CHECK(t->device().is_cpu(), "ascan add_layer_norm: ", name, " must be a CPU tensor, got device ",
                t->device());
  }
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "ascan add_layer_norm: x must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(residual.scalar_type() == dt, "ascan add_layer_norm: residual dtype ", residual.scalar_type(),
              " differs from x dtype ", dt, " (mixed dtypes are not supported)");
  TORCH_CHECK(x.dim() >= 1, "ascan add_layer_norm: x must have at least 1 dim, got a 0-dim tensor");
  TORCH_CHECK(residual.sizes() == x.sizes(), "ascan add_layer_norm: residual shape ", residual.sizes(),
              " differs from x shape ", x.sizes());
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, "ascan add_layer_norm: the normalised (last) dim of x is empty, shape ", x.sizes());
  for (const auto& [name, t] : {std::make_pair("weight", &weight), std::make_pair("bias", &bias)}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "ascan add_layer_norm: ", name, " must have shape (", C,
                ") to match x's last dim, got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == dt, "ascan add_layer_norm: ", name,
                " dtype must be float32 or x's dtype ", dt, ", got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), "ascan add_layer_norm: ", name, " must be contiguous");
  }
  TORCH_CHECK(x.is_contiguous(), "ascan add_layer_norm: x must be contiguous, got strides ", x.strides(),
              " (call .contiguous())");
  TORCH_CHECK(residual.is_contiguous(), "ascan add_layer_norm: residual must be contiguous, got strides ",
              residual.strides(), " (call .contiguous())");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "ascan add_layer_norm: eps must be finite and >= 0, got ", eps);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  double eps) {
  check_inputs(x, residual, weight, bias, eps);
  auto s = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t C = x.size(-1);
  const int64_t rows = x.numel() / C;
  if (rows == 0) return {s, out};

  // weight and bias are read in their own dtype (float32 or x's); if they differ from
  // each other, both are widened to float32 first (a rare case, one small copy).
  at::Tensor w = weight, b = bias;
  if (w.scalar_type() != b.scalar_type()) {
    w = w.to(at::kFloat);
    b = b.to(at::kFloat);
  }

  AddLayerNormArgs args;
  args.x = x.const_data_ptr();
  args.residual = residual.const_data_ptr();
  args.weight = w.const_data_ptr();
  args.bias = b.const_data_ptr();
  args.sum = s.mutable_data_ptr();
  args.out = out.mutable_data_ptr();
  args.C = C;
  args.eps = static_cast<float>(eps);

  const AddLayerNormRowsFn kernel = pick_kernel(x.scalar_type(), w.scalar_type());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / C);
  if (rows <= grain) {
    kernel(args, 0, rows);  // skip the parallel region's overhead
  } else {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  }
  return {s, out};
}

}  // namespace ascan::cpu

TORCH_LIBRARY_FRAGMENT(ascan_C, m) {
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("add_layer_norm", &ascan::cpu::add_layer_norm); }
