// Torch-facing add_layer_norm: checks inputs, picks the kernel for this CPU, runs rows in parallel.
#include "ascan/add_layer_norm.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "add_layer_norm_dispatch.h"

namespace ascan::cpu {
namespace {

using RowsFn = void (*)(const AddLayerNormArgs&, int64_t, int64_t);

// ATen's own choice (honours ATEN_CPU_CAPABILITY), so we never run an ISA torch avoids.
RowsFn pick_kernel() {
  static const RowsFn fn = [] {
    const std::string cap = at::get_cpu_capability();
    if (cap.rfind("AVX512", 0) == 0) return &AVX512::add_layer_norm_rows;
    if (cap.rfind("AVX2", 0) == 0) return &AVX2::add_layer_norm_rows;
    return &DEFAULT::add_layer_norm_rows;
  }();
  return fn;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  double eps) {
  TORCH_CHECK(x.device().is_cpu() && residual.device().is_cpu() && weight.device().is_cpu() &&
                  bias.device().is_cpu(),
              "ascan add_layer_norm: all tensors must be on the CPU, got x on ", x.device(), ", residual on ",
              residual.device(), ", weight on ", weight.device(), ", bias on ", bias.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16,
              "ascan add_layer_norm: x must be float32 or bfloat16, got ", dt);
  TORCH_CHECK(residual.scalar_type() == dt, "ascan add_layer_norm: residual dtype ", residual.scalar_type(),
              " differs from x dtype ", dt);
  TORCH_CHECK(x.dim() >= 1, "ascan add_layer_norm: x must have at least one dim");
  TORCH_CHECK(residual.sizes() == x.sizes(), "ascan add_layer_norm: residual shape ", residual.sizes(),
              " differs from x shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous(),
              "ascan add_layer_norm: x and residual must be contiguous");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, "ascan add_layer_norm: the normalised (last) dim is empty");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && bias.dim() == 1 && bias.size(0) == C,
              "ascan add_layer_norm: weight and bias must have shape (", C, "), got ", weight.sizes(), " and ",
              bias.sizes());
  const auto wdt = weight.scalar_type();
  TORCH_CHECK((wdt == at::kFloat || wdt == dt) && bias.scalar_type() == wdt,
              "ascan add_layer_norm: weight/bias must both be float32 or x's dtype (", dt, "), got ", wdt, " and ",
              bias.scalar_type());
  TORCH_CHECK(eps >= 0, "ascan add_layer_norm: eps must be >= 0, got ", eps);

  auto s = at::empty_like(x);
  auto out = at::empty_like(x);
  const int64_t rows = x.numel() / C;
  if (rows == 0) return {s, out};
  const auto w = weight.to(at::kFloat).contiguous();
  const auto b = bias.to(at::kFloat).contiguous();
  const AddLayerNormArgs args{
      x.const_data_ptr(), residual.const_data_ptr(), w.const_data_ptr<float>(), b.const_data_ptr<float>(),
      s.mutable_data_ptr(), out.mutable_data_ptr(), C, static_cast<float>(eps),
      dt == at::kFloat ? RowDtype::kFloat : RowDtype::kBFloat16};
  const RowsFn kernel = pick_kernel();
  // ~16K elements per task: enough work to amortise a thread hand-off.
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return {s, out};
}

std::string add_layer_norm_kernel_isa() {
  const RowsFn fn = pick_kernel();
  if (fn == &AVX512::add_layer_norm_rows) return "AVX512";
  if (fn == &AVX2::add_layer_norm_rows) return "AVX2";
  return "DEFAULT";
}

}  // namespace ascan::cpu
