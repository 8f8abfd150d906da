// Residual add + LayerNorm in one pass over memory.
//
// Eager PyTorch reads x and residual, writes s, then LayerNorm reads s again and
// writes out: 3 reads + 2 writes of the activation. Here each row is loaded once,
// kept in a float32 scratch row (C <= a few thousand: it stays in L1/L2), and both
// outputs are written from it: 2 reads + 2 writes, and one pass of thread dispatch.
//
// For reduced-precision inputs s is rounded to the input dtype *before* it is
// normalised, so `out` is layer_norm of exactly the `s` we return (what eager
// computes), with float32 accumulation throughout.
#include "ascan/add_layer_norm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/irange.h>

#include <cmath>
#include <vector>

namespace ascan::cpu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();

float row_sum(const float* p, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) acc += Vec::loadu(p + i);
  float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) s += p[i];
  return s;
}

float row_sq_dev_sum(const float* p, int64_t n, float mean) {
  const Vec m(mean);
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    Vec d = Vec::loadu(p + i) - m;
    acc = at::vec::fmadd(d, d, acc);
  }
  float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) s += (p[i] - mean) * (p[i] - mean);
  return s;
}

// out[i] = (s[i] - mean) * rstd * w[i] + b[i], written to a float32 row.
void row_normalize(const float* s, const float* w, const float* b, float* out, int64_t n, float mean,
                   float rstd) {
  const Vec m(mean), r(rstd);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    Vec y = (Vec::loadu(s + i) - m) * r;
    at::vec::fmadd(y, Vec::loadu(w + i), Vec::loadu(b + i)).store(out + i);
  }
  for (; i < n; ++i) out[i] = (s[i] - mean) * rstd * w[i] + b[i];
}

void row_add(const float* a, const float* b, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) (Vec::loadu(a + i) + Vec::loadu(b + i)).store(out + i);
  for (; i < n; ++i) out[i] = a[i] + b[i];
}

std::vector<float> to_float_vector(const at::Tensor& t) {
  auto f = t.to(at::kFloat).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

template <typename T>
void add_layer_norm_kernel(const T* x, const T* res, const float* w, const float* b, T* s_out, T* out,
                           int64_t rows, int64_t C, float eps) {
  const int64_t grain = std::max<int64_t>(1, 16384 / C);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> sbuf(C), tmp(C);
    for (const auto r : c10::irange(begin, end)) {
      const int64_t off = r * C;
      if constexpr (std::is_same_v<T, float>) {
        row_add(x + off, res + off, s_out + off, C);
        const float* s = s_out + off;
        const float mean = row_sum(s, C) / C;
        const float rstd = 1.f / std::sqrt(row_sq_dev_sum(s, C, mean) / C + eps);
        row_normalize(s, w, b, out + off, C, mean, rstd);
      } else {
        // Widen, add, round to T (the returned s), widen the rounded s again.
        at::vec::convert(x + off, sbuf.data(), C);
        at::vec::convert(res + off, tmp.data(), C);
        row_add(sbuf.data(), tmp.data(), sbuf.data(), C);
        at::vec::convert(sbuf.data(), s_out + off, C);
        at::vec::convert(s_out + off, sbuf.data(), C);
        const float mean = row_sum(sbuf.data(), C) / C;
        const float rstd = 1.f / std::sqrt(row_sq_dev_sum(sbuf.data(), C, mean) / C + eps);
        row_normalize(sbuf.data(), w, b, tmp.data(), C, mean, rstd);
        at::vec::convert(tmp.data(), out + off, C);
      }
    }
  });
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
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "ascan add_layer_norm: x must be float32, bfloat16 or float16, got ", dt);
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
  const auto w = to_float_vector(weight);
  const auto b = to_float_vector(bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ascan_add_layer_norm", [&] {
    add_layer_norm_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), residual.const_data_ptr<scalar_t>(), w.data(),
                                    b.data(), s.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                    rows, C, static_cast<float>(eps));
  });
  return {s, out};
}

}  // namespace ascan::cpu
