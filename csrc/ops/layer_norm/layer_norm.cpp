// The LayerNorm ops with a CUDA kernel: their schemas, input checks and CPU reference loops
// (two-pass statistics, as the kernel computes them from a row in registers).
#include "layer_norm.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "ascan/cpu_reference.h"

namespace ascan {

namespace {
std::pair<int64_t, int64_t> check_layer_norm_input(const char* op, const at::Tensor& x,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps,
                                                   c10::DeviceType device, int64_t max_C) {
  checks::device(op, "x", x, device, nullptr);
  TORCH_CHECK(checks::float_dtype(x.scalar_type()), "ascan ", op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "ascan ", op, ": x must have at least 1 dim, got a 0-dim tensor");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, "ascan ", op, ": the normalised (last) dim of x is empty, shape ", x.sizes());
  TORCH_CHECK(C <= max_C, "ascan ", op, ": the last dim of x is ", C, ", this kernel holds a row in one warp's ",
              "registers and takes at most ", max_C);
  TORCH_CHECK(x.is_contiguous(), "ascan ", op, ": x must be contiguous, got strides ", x.strides());
  checks::optional_f32_vector(op, "weight", weight, C, x);
  checks::optional_f32_vector(op, "bias", bias, C, x);
  checks::eps(op, eps);
  return {x.numel() / C, C};
}
}  // namespace

std::pair<int64_t, int64_t> check_layer_norm_fwd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& bias, double eps,
                                                 c10::DeviceType device, int64_t max_C) {
  return check_layer_norm_input("layer_norm_fwd", x, weight, bias, eps, device, max_C);
}

std::pair<int64_t, int64_t> check_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                                 const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                                 c10::DeviceType device, int64_t max_C) {
  const char* op = "layer_norm_bwd";
  const auto [rows, C] = check_layer_norm_input(op, x, weight, std::nullopt, 0.0, device, max_C);
  checks::device(op, "dy", dy, device, &x);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "ascan ", op, ": dy dtype ", dy.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(dy.sizes() == x.sizes(), "ascan ", op, ": dy shape ", dy.sizes(), " differs from x shape ", x.sizes());
  TORCH_CHECK(dy.is_contiguous(), "ascan ", op, ": dy must be contiguous");
  checks::f32_vector(op, "mean", mean, rows, x);
  checks::f32_vector(op, "rstd", rstd, rows, x);
  return {rows, C};
}

namespace cpu {
namespace {

using ref::dispatch_float_types;
using ref::ld;
using ref::opt_f32;

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_reference(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps) {
  const auto [rows, C] = check_layer_norm_fwd(x, weight, bias, eps, c10::DeviceType::CPU, INT64_MAX);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  const float *w = opt_f32(weight), *b = opt_f32(bias);
  float *mp = mean.mutable_data_ptr<float>(), *rp = rstd.mutable_data_ptr<float>();
  dispatch_float_types(x.scalar_type(), "layer_norm_fwd_reference", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    T* yp = y.mutable_data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * C;
      // Two-pass statistics, as the kernel computes them from the row in registers.
      float sum = 0.0f;
      for (int64_t i = 0; i < C; ++i) sum += ld(xp, o + i);
      const float m = sum / static_cast<float>(C);
      float sq = 0.0f;
      for (int64_t i = 0; i < C; ++i) {
        const float d = ld(xp, o + i) - m;
        sq += d * d;
      }
      const float rs = math::inv_std(sq / static_cast<float>(C), static_cast<float>(eps));
      for (int64_t i = 0; i < C; ++i)
        yp[o + i] = static_cast<T>(math::layer_norm_apply(ld(xp, o + i), m, rs, w ? w[i] : 1.0f, b ? b[i] : 0.0f));
      mp[r] = m;
      rp[r] = rs;
    }
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_reference(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight) {
  const auto [rows, C] = check_layer_norm_bwd(dy, x, mean, rstd, weight, c10::DeviceType::CPU, INT64_MAX);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dw = at::zeros({C}, x.options().dtype(at::kFloat));
  at::Tensor db = at::zeros({C}, x.options().dtype(at::kFloat));
  const float* w = opt_f32(weight);
  const float *mp = mean.const_data_ptr<float>(), *rp = rstd.const_data_ptr<float>();
  float *dwp = dw.mutable_data_ptr<float>(), *dbp = db.mutable_data_ptr<float>();
  dispatch_float_types(x.scalar_type(), "layer_norm_bwd_reference", [&](auto tag) {
    using T = decltype(tag);
    const T *xp = x.const_data_ptr<T>(), *dyp = dy.const_data_ptr<T>();
    T* dxp = dx.mutable_data_ptr<T>();
    std::vector<float> xhat(C), g(C);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * C;
      float sum_g = 0.0f, sum_gx = 0.0f;
      for (int64_t i = 0; i < C; ++i) {
        const float d = ld(dyp, o + i);
        xhat[i] = (ld(xp, o + i) - mp[r]) * rp[r];
        g[i] = d * (w ? w[i] : 1.0f);
        dwp[i] += d * xhat[i];
        dbp[i] += d;
        sum_g += g[i];
        sum_gx += g[i] * xhat[i];
      }
      const float mg = sum_g / static_cast<float>(C), mgx = sum_gx / static_cast<float>(C);
      for (int64_t i = 0; i < C; ++i)
        dxp[o + i] = static_cast<T>(math::layer_norm_grad_input(g[i], xhat[i], rp[r], mg, mgx));
    }
  });
  return {dx, dw, db};
}

}  // namespace
}  // namespace cpu
}  // namespace ascan

TORCH_LIBRARY_FRAGMENT(ascan_C, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_bwd(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_fwd_reference(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_bwd_reference(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) {
  m.impl("layer_norm_fwd_reference", &ascan::cpu::layer_norm_fwd_reference);
  m.impl("layer_norm_bwd_reference", &ascan::cpu::layer_norm_bwd_reference);
}
