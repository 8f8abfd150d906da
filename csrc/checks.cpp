// The input checks the ops with a CUDA kernel and a CPU reference share (ascan/checks.h).
#include "ascan/checks.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace ascan {
namespace checks {

bool float_dtype(at::ScalarType dt) { return dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf; }

void device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType dev,
            const at::Tensor* like) {
  TORCH_CHECK(t.defined(), "ascan ", op, ": ", name, " is undefined");
  TORCH_CHECK(t.device().type() == dev, "ascan ", op, ": ", name, " must be a ", c10::DeviceTypeName(dev),
              " tensor, got device ", t.device());
  if (like != nullptr) {
    TORCH_CHECK(t.device() == like->device(), "ascan ", op, ": ", name, " is on ", t.device(),
                " but the input is on ", like->device());
  }
}

// A (n,) float32 contiguous parameter next to `x`.
void f32_vector(const char* op, const char* name, const at::Tensor& t, int64_t n, const at::Tensor& x) {
  device(op, name, t, x.device().type(), &x);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "ascan ", op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "ascan ", op, ": ", name, " must have shape (", n, "), got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "ascan ", op, ": ", name, " must be contiguous");
}

void optional_f32_vector(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t n,
                               const at::Tensor& x) {
  if (t.has_value() && t->defined()) f32_vector(op, name, *t, n, x);
}

void eps(const char* op, double value) {
  TORCH_CHECK(std::isfinite(value) && value >= 0, "ascan ", op, ": eps must be finite and >= 0, got ", value);
}

}  // namespace checks

ActLayout check_activation(const char* op, const char* name, const at::Tensor& x, c10::DeviceType device) {
  checks::device(op, name, x, device, nullptr);
  TORCH_CHECK(checks::float_dtype(x.scalar_type()), "ascan ", op, ": ", name,
              " must be float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 3, "ascan ", op, ": ", name, " must be (N, C, *spatial) with at least 3 dims, got ",
              x.sizes());
  ActLayout l;
  l.N = x.size(0);
  l.C = x.size(1);
  l.HW = 1;
  for (int64_t d = 2; d < x.dim(); ++d) l.HW *= x.size(d);
  if (x.is_contiguous()) return l;
  const bool cl = (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
                  (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
  TORCH_CHECK(cl, "ascan ", op, ": ", name, " must be contiguous (NCHW) or channels_last, got sizes ", x.sizes(),
              " strides ", x.strides());
  l.channels_last = true;
  return l;
}

}  // namespace ascan
