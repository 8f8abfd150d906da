// CPU reference implementations of the ops whose CUDA kernels live in csrc/cuda: the same
// per-element math (ascan/elementwise_math.h: activations, epilogue, normalisation,
// Welford statistics, layout index math) in plain serial loops, registered as the ops'
// CPU kernels. The CPU tests compare them with eager PyTorch, so the formulas and the
// NCHW / channels-last addressing the GPU kernels use are checked on a machine without
// a GPU. Not tuned for speed: the registry never picks these for real work.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <vector>

#include "ascan/elementwise_math.h"
#include "ascan/norm_act_ops.h"

namespace ascan::cpu {
namespace {

// Like the kernels: load as float, compute in float, round once on store.
template <typename T>
float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

template <typename F>
void dispatch_float_types(at::ScalarType dt, const char* op, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "ascan ", op, ": unsupported dtype ", dt);
  }
}

const float* opt_f32(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<float>() : nullptr;
}

// out[i] = act(x[i] * a[k] + b[k] + res[i]) with k = math::coeff_index(i, ...).
template <typename T>
void affine_act_loop(T* out, const T* x, const T* res, const float* a, const float* b, const ActLayout& l,
                     bool per_sample, int act) {
  const int64_t numel = l.N * l.C * l.HW;
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t k = math::coeff_index<int64_t>(i, l.C, l.HW, l.channels_last, per_sample);
    const float r = res != nullptr ? ld(res, i) : 0.0f;
    out[i] = static_cast<T>(math::affine_act(ld(x, i), a != nullptr ? a[k] : 1.0f, b[k], r, act));
  }
}

}  // namespace

void bias_act_epilogue_(const at::Tensor& y, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                        int64_t act) {
  const ActLayout l = check_bias_act_epilogue(y, bias, residual, act, c10::DeviceType::CPU);
  const bool has_res = residual.has_value() && residual->defined();
  dispatch_float_types(y.scalar_type(), "bias_act_epilogue_", [&](auto tag) {
    using T = decltype(tag);
    T* p = y.mutable_data_ptr<T>();
    // The conv epilogue is the affine pass with a = 1 (BN's scale is in the conv weight);
    // affine_act(v, 1, b, r) is bias_act(v, b, r) by definition.
    affine_act_loop<T>(p, p, has_res ? residual->const_data_ptr<T>() : nullptr, nullptr,
                       bias.const_data_ptr<float>(), l, /*per_sample=*/false, static_cast<int>(act));
  });
}

at::Tensor group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift) {
  const ActLayout l = check_group_norm_silu(x, num_groups, weight, bias, eps, scale, shift, c10::DeviceType::CPU);
  at::Tensor out = at::empty_like(x);  // keeps x's memory format
  const int64_t G = num_groups, Cg = l.C / G, group_numel = Cg * l.HW;
  const float *w = opt_f32(weight), *b = opt_f32(bias), *sc = opt_f32(scale), *sh = opt_f32(shift);
  std::vector<float> a(l.N * l.C), c(l.N * l.C);
  dispatch_float_types(x.scalar_type(), "group_norm_silu", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    for (int64_t n = 0; n < l.N; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        // Shifted by the group's first element, as the kernel does (see math::Welford).
        const auto offset = [&](int64_t j) { return math::group_offset<int64_t>(n, g, j, l.C, l.HW, Cg, l.channels_last); };
        const float pivot = ld(xp, offset(0));
        math::Welford st = math::welford_init();
        for (int64_t j = 0; j < group_numel; ++j) math::welford_push(st, ld(xp, offset(j)) - pivot);
        st.mean += pivot;
        const float rstd = math::inv_std(math::welford_var(st), static_cast<float>(eps));
        for (int64_t ch = g * Cg; ch < (g + 1) * Cg; ++ch) {
          const int64_t i = n * l.C + ch;
          const math::Affine k = math::group_norm_coeffs(st.mean, rstd, w ? w[ch] : 1.0f, b ? b[ch] : 0.0f,
                                                         sc ? sc[i] : 0.0f, sh ? sh[i] : 0.0f);
          a[i] = k.a;
          c[i] = k.c;
        }
      }
    }
    affine_act_loop<T>(out.mutable_data_ptr<T>(), xp, nullptr, a.data(), c.data(), l, /*per_sample=*/true,
                       math::kActSilu);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias, double eps) {
  const auto [rows, C] = check_layer_norm_fwd(x, weight, bias, eps, c10::DeviceType::CPU, INT64_MAX);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  const float *w = opt_f32(weight), *b = opt_f32(bias);
  float *mp = mean.mutable_data_ptr<float>(), *rp = rstd.mutable_data_ptr<float>();
  dispatch_float_types(x.scalar_type(), "layer_norm_fwd", [&](auto tag) {
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& mean, const at::Tensor& rstd,
                                                              const std::optional<at::Tensor>& weight) {
  const auto [rows, C] = check_layer_norm_bwd(dy, x, mean, rstd, weight, c10::DeviceType::CPU, INT64_MAX);
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor dw = at::zeros({C}, x.options().dtype(at::kFloat));
  at::Tensor db = at::zeros({C}, x.options().dtype(at::kFloat));
  const float* w = opt_f32(weight);
  const float *mp = mean.const_data_ptr<float>(), *rp = rstd.const_data_ptr<float>();
  float *dwp = dw.mutable_data_ptr<float>(), *dbp = db.mutable_data_ptr<float>();
  dispatch_float_types(x.scalar_type(), "layer_norm_bwd", [&](auto tag) {
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

}  // namespace ascan::cpu
