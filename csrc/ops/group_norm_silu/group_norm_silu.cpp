// ascan_C::group_norm_silu on the CPU: its schema, input checks, output allocation, the choice of vector
// kernels for this CPU, the merging of block statistics into group statistics and the
// parallel loops. The vector arithmetic is in group_norm_silu_kernel.h.
//
// Why fused: eager PyTorch runs group_norm (statistics + normalise), then `* (1 + scale)`,
// `+ shift` and silu: four passes over the activation and three temporaries. Here the
// statistics read x once, weight/bias/scale/shift and the group's rstd fold into one
// affine per (n, c), y = silu((x - mean) * a + b), and the apply pass reads x and writes y
// once. (The mean stays out of the fold so that a large common offset cancels exactly;
// see group_norm_silu.h.)
//
// NCHW: a group of sample n is Cg consecutive planes, one contiguous run. One parallel
// loop over (n, g) computes the group's statistics and applies it right away, while the
// run is still in L2.
// channels_last: a group is strided (Cg channels out of every row of C), so the
// statistics are per channel over blocks of rows (vectorised across channels), merged
// per group, and the apply walks rows of C contiguous channels: three parallel loops.
#include "group_norm_silu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ascan/isa.h"
#include "ascan/math.h"
#include "kernels.h"

namespace ascan::cpu {
namespace {

constexpr const char* kOp = "ascan group_norm_silu";

// Work per task: about this many elements, so that small inputs stay on one thread (a
// parallel region costs a few microseconds) and large ones use every core. Also the
// size of a channels_last statistics block (rows x C), which must stay in L2 between
// its two passes.
constexpr int64_t kGrainElements = 16384;

struct Kernels {
  gn::PlaneStatsFn plane_stats;
  gn::PlaneApplyFn plane_apply;
  gn::RowsStatsFn rows_stats;
  gn::RowsApplyFn rows_apply;
};

Kernels pick_kernels(bool bf16) {
#define ASCAN_GN_PICK(ns)                                                                                   \
  return bf16 ? Kernels{&gn::ns::plane_stats_bf16, &gn::ns::plane_apply_bf16, &gn::ns::rows_stats_bf16,    \
                        &gn::ns::rows_apply_bf16}                                                          \
              : Kernels{&gn::ns::plane_stats_f32, &gn::ns::plane_apply_f32, &gn::ns::rows_stats_f32,       \
                        &gn::ns::rows_apply_f32};
  // The same instruction set as add_layer_norm (ascan/isa.h).
  switch (isa()) {
#if ASCAN_X86_KERNELS
    case Isa::kAvx512: ASCAN_GN_PICK(avx512)
    case Isa::kAvx2: ASCAN_GN_PICK(avx2)
#endif
    default: ASCAN_GN_PICK(base)
  }
#undef ASCAN_GN_PICK
}

// The optional small vectors as float32 contiguous tensors (undefined when absent).
at::Tensor as_f32(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(at::kFloat).contiguous();
}

const float* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

void check_vector(const char* name, const std::optional<at::Tensor>& t, at::IntArrayRef shape) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got device ", t->device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), kOp, ": ", name, " must be a floating tensor, got ",
              t->scalar_type());
  TORCH_CHECK(t->sizes() == shape, kOp, ": ", name, " must have shape ", shape, ", got ", t->sizes());
}

// Returns whether x is channels_last (rather than NCHW-contiguous).
bool check_inputs(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
                  const std::optional<at::Tensor>& shift) {
  TORCH_CHECK(x.defined(), kOp, ": x is undefined (None)");
  TORCH_CHECK(x.device().is_cpu(), kOp, ": x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, kOp,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, kOp, ": x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(num_groups > 0 && C % num_groups == 0, kOp, ": num_groups must be positive and divide C=", C,
              ", got ", num_groups);
  check_vector("weight", weight, {C});
  check_vector("bias", bias, {C});
  check_vector("scale", scale, {N, C});
  check_vector("shift", shift, {N, C});
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, kOp, ": eps must be finite and >= 0, got ", eps);
  // A tensor that is both (C == 1, or H == W == 1) is walked as NCHW; the output gets the
  // same strides, so either reading would be right.
  if (x.is_contiguous()) return false;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), kOp,
              ": x must be contiguous (NCHW) or channels_last, got strides ", x.strides());
  return true;
}

// The float32 inputs of the per-(n, c) coefficients; null pointers for absent ones.
struct Affines {
  const float* weight;  // (C,)
  const float* bias;    // (C,)
  const float* scale;   // (N, C)
  const float* shift;   // (N, C)
};

// a, b of channels [c0, c0 + count) of sample n given their group's rstd, for inputs
// already centred on the group mean; written to a[i], b[i] for i = 0 .. count - 1.
void fold_coeffs(const Affines& f, int64_t n, int64_t C, int64_t c0, int64_t count, float rstd, float* a,
                 float* b) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t c = c0 + i, nc = n * C + c;
    // The shared formula (the CUDA kernel's) with a zero mean: the input is centred.
    const math::Affine k = math::group_norm_coeffs(0.f, rstd, f.weight ? f.weight[c] : 1.f,
                                                   f.bias ? f.bias[c] : 0.f, f.scale ? f.scale[nc] : 0.f,
                                                   f.shift ? f.shift[nc] : 0.f);
    a[i] = k.a;
    b[i] = k.c;
  }
}

struct Layout {
  int64_t N, C, HW, G, Cg;
  size_t elem;  // bytes per element
};

void run_nchw(const Kernels& k, const Layout& l, const Affines& f, float eps, const char* x, char* out) {
  const int64_t group_numel = l.Cg * l.HW;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / group_numel);
  at::parallel_for(0, l.N * l.G, grain, [&](int64_t begin, int64_t end) {
    // mean, m2 per plane, then a, b per channel of the group.
    std::vector<float> buf(4 * l.Cg);
    float *mean = buf.data(), *m2 = mean + l.Cg, *a = m2 + l.Cg, *b = a + l.Cg;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / l.G, c0 = (t % l.G) * l.Cg;
      const size_t off = static_cast<size_t>((n * l.C + c0) * l.HW) * l.elem;
      k.plane_stats(x + off, l.HW, l.Cg, mean, m2);
      // Merge the planes (equal counts HW): the group mean is their mean, and the group's
      // squared deviations are the planes' own plus HW * (plane mean - group mean)^2.
      double mu = 0.0;
      for (int64_t i = 0; i < l.Cg; ++i) mu += mean[i];
      mu /= static_cast<double>(l.Cg);
      double ss = 0.0, between = 0.0;
      for (int64_t i = 0; i < l.Cg; ++i) {
        const double d = mean[i] - mu;
        ss += m2[i];
        between += d * d;
      }
      const double var = (ss + between * static_cast<double>(l.HW)) / static_cast<double>(group_numel);
      const float rstd = math::inv_std(static_cast<float>(var), eps);
      fold_coeffs(f, n, l.C, c0, l.Cg, rstd, a, b);
      k.plane_apply(x + off, out + off, l.HW, l.Cg, static_cast<float>(mu), a, b);
    }
  });
}

void run_channels_last(const Kernels& k, const Layout& l, const Affines& f, float eps, const char* x, char* out) {
  // 1. Per-channel mean / squared deviations over blocks of `block` rows of each sample.
  const int64_t block = std::clamp<int64_t>(kGrainElements / l.C, 1, l.HW);
  const int64_t nblocks = (l.HW + block - 1) / block;
  std::vector<float> bmean(l.N * nblocks * l.C), bm2(l.N * nblocks * l.C);
  // Small maps (block clamped to HW) take several samples per task.
  const int64_t block_grain = std::max<int64_t>(1, kGrainElements / (block * l.C));
  at::parallel_for(0, l.N * nblocks, block_grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nblocks, r0 = (t % nblocks) * block;
      const int64_t rows = std::min(block, l.HW - r0);
      const size_t off = static_cast<size_t>((n * l.HW + r0) * l.C) * l.elem;
      k.rows_stats(x + off, l.C, rows, bmean.data() + t * l.C, bm2.data() + t * l.C);
    }
  });

  // 2. Merge the (block, channel) cells of each group (Chan et al.: counts weight the
  // means; the spread of the cell means adds to the squared deviations), then fold.
  std::vector<float> center(l.N * l.C), a(l.N * l.C), b(l.N * l.C);
  const int64_t group_numel = l.Cg * l.HW;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (l.Cg * nblocks * 4));
  at::parallel_for(0, l.N * l.G, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / l.G, c0 = (t % l.G) * l.Cg;
      const auto rows_of = [&](int64_t j) { return static_cast<double>(std::min(block, l.HW - j * block)); };
      double mu = 0.0;
      for (int64_t j = 0; j < nblocks; ++j) {
        const float* m = bmean.data() + (n * nblocks + j) * l.C + c0;
        double s = 0.0;
        for (int64_t i = 0; i < l.Cg; ++i) s += m[i];
        mu += s * rows_of(j);
      }
      mu /= static_cast<double>(group_numel);
      double ss = 0.0;
      for (int64_t j = 0; j < nblocks; ++j) {
        const float* m = bmean.data() + (n * nblocks + j) * l.C + c0;
        const float* q = bm2.data() + (n * nblocks + j) * l.C + c0;
        double within = 0.0, between = 0.0;
        for (int64_t i = 0; i < l.Cg; ++i) {
          const double d = m[i] - mu;
          within += q[i];
          between += d * d;
        }
        ss += within + between * rows_of(j);
      }
      const float rstd = math::inv_std(static_cast<float>(ss / static_cast<double>(group_numel)), eps);
      std::fill_n(center.data() + n * l.C + c0, l.Cg, static_cast<float>(mu));
      fold_coeffs(f, n, l.C, c0, l.Cg, rstd, a.data() + n * l.C + c0, b.data() + n * l.C + c0);
    }
  });

  // 3. out = silu((x - center) * a + b) over rows of C channels; a range of rows may span samples.
  const int64_t row_grain = std::max<int64_t>(1, kGrainElements / l.C);
  at::parallel_for(0, l.N * l.HW, row_grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end;) {
      const int64_t n = r / l.HW;
      const int64_t stop = std::min(end, (n + 1) * l.HW);
      const size_t off = static_cast<size_t>(r * l.C) * l.elem;
      const int64_t nc = n * l.C;
      k.rows_apply(x + off, out + off, l.C, stop - r, center.data() + nc, a.data() + nc, b.data() + nc);
      r = stop;
    }
  });
}

}  // namespace

at::Tensor group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps,
                               const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  const bool channels_last = check_inputs(x, num_groups, weight, bias, eps, scale, shift);
  at::Tensor out = at::empty_like(x);  // x is dense: the same strides, so the same layout
  if (x.numel() == 0) return out;

  const at::Tensor w = as_f32(weight), bi = as_f32(bias), sc = as_f32(scale), sh = as_f32(shift);
  const Affines f{ptr_or_null(w), ptr_or_null(bi), ptr_or_null(sc), ptr_or_null(sh)};
  const Layout l{x.size(0), x.size(1), x.size(2) * x.size(3), num_groups, x.size(1) / num_groups,
                 static_cast<size_t>(x.element_size())};
  const Kernels k = pick_kernels(x.scalar_type() == at::kBFloat16);
  const char* xp = static_cast<const char*>(x.const_data_ptr());
  char* op = static_cast<char*>(out.mutable_data_ptr());
  if (channels_last) {
    run_channels_last(k, l, f, static_cast<float>(eps), xp, op);
  } else {
    run_nchw(k, l, f, static_cast<float>(eps), xp, op);
  }
  return out;
}

}  // namespace ascan::cpu

TORCH_LIBRARY_FRAGMENT(ascan_C, m) {
  m.def("group_norm_silu(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, Tensor? scale, "
        "Tensor? shift) -> Tensor");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("group_norm_silu", &ascan::cpu::group_norm_silu); }
