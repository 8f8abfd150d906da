// ascan_C::group_norm_silu_reference: the CUDA kernel's math (Welford statistics shifted
// by the group's first element, per-(n, c) coefficients, the affine + SiLU pass) as CPU
// loops, for tests; and the input checks it shares with the CUDA binding.
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

#include "ascan/cpu_reference.h"
#include "group_norm_silu.h"

namespace ascan {

ActLayout check_group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps,
                                const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                c10::DeviceType device) {
  const char* op = "group_norm_silu";
  const ActLayout l = check_activation(op, "x", x, device);
  TORCH_CHECK(num_groups > 0 && l.C % num_groups == 0, "ascan ", op, ": num_groups must be positive and divide C=",
              l.C, ", got ", num_groups);
  checks::optional_f32_vector(op, "weight", weight, l.C, x);
  checks::optional_f32_vector(op, "bias", bias, l.C, x);
  for (const auto& [name, t] : {std::make_pair("scale", &scale), std::make_pair("shift", &shift)}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const at::Tensor& s = **t;
    checks::device(op, name, s, device, &x);
    TORCH_CHECK(s.scalar_type() == at::kFloat, "ascan ", op, ": ", name, " must be float32, got ", s.scalar_type());
    TORCH_CHECK(s.dim() == 2 && s.size(0) == l.N && s.size(1) == l.C, "ascan ", op, ": ", name,
                " must have shape (", l.N, ", ", l.C, "), got ", s.sizes());
    TORCH_CHECK(s.is_contiguous(), "ascan ", op, ": ", name, " must be contiguous");
  }
  checks::eps(op, eps);
  return l;
}

namespace cpu {
namespace {

using ref::affine_act_loop;
using ref::dispatch_float_types;
using ref::ld;
using ref::opt_f32;

at::Tensor group_norm_silu_reference(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift) {
  const ActLayout l = check_group_norm_silu(x, num_groups, weight, bias, eps, scale, shift, c10::DeviceType::CPU);
  at::Tensor out = at::empty_like(x);  // keeps x's memory format
  const int64_t G = num_groups, Cg = l.C / G, group_numel = Cg * l.HW;
  const float *w = opt_f32(weight), *b = opt_f32(bias), *sc = opt_f32(scale), *sh = opt_f32(shift);
  std::vector<float> a(l.N * l.C), c(l.N * l.C);
  dispatch_float_types(x.scalar_type(), "group_norm_silu_reference", [&](auto tag) {
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

}  // namespace
}  // namespace cpu
}  // namespace ascan

TORCH_LIBRARY_FRAGMENT(ascan_C, m) {
  m.def("group_norm_silu_reference(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, "
        "Tensor? scale, Tensor? shift) -> Tensor");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("group_norm_silu_reference", &ascan::cpu::group_norm_silu_reference); }
