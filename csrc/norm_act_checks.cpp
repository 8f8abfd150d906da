// Input checks of the norm/activation ops, shared by their CPU reference and CUDA bindings
// (see ascan/norm_act_ops.h). Every message starts with "ascan <op>: " and names the input.
#include <c10/util/Exception.h>

#include <cmath>

#include "ascan/elementwise_math.h"
#include "ascan/norm_act_ops.h"

namespace ascan {
namespace {

bool float_dtype(at::ScalarType dt) { return dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf; }

void check_device(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device,
                  const at::Tensor* like) {
  TORCH_CHECK(t.defined(), "ascan ", op, ": ", name, " is undefined");
  TORCH_CHECK(t.device().type() == device, "ascan ", op, ": ", name, " must be a ", c10::DeviceTypeName(device),
              " tensor, got device ", t.device());
  if (like != nullptr) {
    TORCH_CHECK(t.device() == like->device(), "ascan ", op, ": ", name, " is on ", t.device(),
                " but the input is on ", like->device());
  }
}

// A (n,) float32 contiguous parameter next to `x`.
void check_f32_vector(const char* op, const char* name, const at::Tensor& t, int64_t n, const at::Tensor& x) {
  check_device(op, name, t, x.device().type(), &x);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "ascan ", op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "ascan ", op, ": ", name, " must have shape (", n, "), got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "ascan ", op, ": ", name, " must be contiguous");
}

void check_optional_f32_vector(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t n,
                               const at::Tensor& x) {
  if (t.has_value() && t->defined()) check_f32_vector(op, name, *t, n, x);
}

void check_eps(const char* op, double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "ascan ", op, ": eps must be finite and >= 0, got ", eps);
}

}  // namespace

ActLayout check_activation(const char* op, const char* name, const at::Tensor& x, c10::DeviceType device) {
  check_device(op, name, x, device, nullptr);
  TORCH_CHECK(float_dtype(x.scalar_type()), "ascan ", op, ": ", name,
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

ActLayout check_bias_act_epilogue(const at::Tensor& y, const at::Tensor& bias,
                                  const std::optional<at::Tensor>& residual, int64_t act, c10::DeviceType device) {
  const char* op = "bias_act_epilogue_";
  const ActLayout l = check_activation(op, "y", y, device);
  check_f32_vector(op, "bias", bias, l.C, y);
  TORCH_CHECK(math::act_valid(static_cast<int>(act)), "ascan ", op,
              ": act must be 0 (none), 1 (gelu), 2 (gelu tanh) or 3 (silu), got ", act);
  if (residual.has_value() && residual->defined()) {
    const at::Tensor& r = *residual;
    check_device(op, "residual", r, device, &y);
    TORCH_CHECK(r.scalar_type() == y.scalar_type(), "ascan ", op, ": residual dtype ", r.scalar_type(),
                " differs from y dtype ", y.scalar_type());
    TORCH_CHECK(r.sizes() == y.sizes(), "ascan ", op, ": residual shape ", r.sizes(), " differs from y shape ",
                y.sizes());
    // Same element order as y: the kernel walks both with one linear index.
    TORCH_CHECK(r.strides() == y.strides(), "ascan ", op, ": residual strides ", r.strides(),
                " differ from y strides ", y.strides(), " (give it y's memory format)");
  }
  return l;
}

ActLayout check_group_norm_silu(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps,
                                const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                                c10::DeviceType device) {
  const char* op = "group_norm_silu";
  const ActLayout l = check_activation(op, "x", x, device);
  TORCH_CHECK(num_groups > 0 && l.C % num_groups == 0, "ascan ", op, ": num_groups must be positive and divide C=",
              l.C, ", got ", num_groups);
  check_optional_f32_vector(op, "weight", weight, l.C, x);
  check_optional_f32_vector(op, "bias", bias, l.C, x);
  for (const auto& [name, t] : {std::make_pair("scale", &scale), std::make_pair("shift", &shift)}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const at::Tensor& s = **t;
    check_device(op, name, s, device, &x);
    TORCH_CHECK(s.scalar_type() == at::kFloat, "ascan ", op, ": ", name, " must be float32, got ", s.scalar_type());
    TORCH_CHECK(s.dim() == 2 && s.size(0) == l.N && s.size(1) == l.C, "ascan ", op, ": ", name,
                " must have shape (", l.N, ", ", l.C, "), got ", s.sizes());
    TORCH_CHECK(s.is_contiguous(), "ascan ", op, ": ", name, " must be contiguous");
  }
  check_eps(op, eps);
  return l;
}

namespace {
std::pair<int64_t, int64_t> check_layer_norm_input(const char* op, const at::Tensor& x,
                                                   const std::optional<at::Tensor>& weight,
                                                   const std::optional<at::Tensor>& bias, double eps,
                                                   c10::DeviceType device, int64_t max_C) {
  check_device(op, "x", x, device, nullptr);
  TORCH_CHECK(float_dtype(x.scalar_type()), "ascan ", op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "ascan ", op, ": x must have at least 1 dim, got a 0-dim tensor");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0, "ascan ", op, ": the normalised (last) dim of x is empty, shape ", x.sizes());
  TORCH_CHECK(C <= max_C, "ascan ", op, ": the last dim of x is ", C, ", this kernel holds a row in one warp's ",
              "registers and takes at most ", max_C);
  TORCH_CHECK(x.is_contiguous(), "ascan ", op, ": x must be contiguous, got strides ", x.strides());
  check_optional_f32_vector(op, "weight", weight, C, x);
  check_optional_f32_vector(op, "bias", bias, C, x);
  check_eps(op, eps);
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
  check_device(op, "dy", dy, device, &x);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "ascan ", op, ": dy dtype ", dy.scalar_type(),
              " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(dy.sizes() == x.sizes(), "ascan ", op, ": dy shape ", dy.sizes(), " differs from x shape ", x.sizes());
  TORCH_CHECK(dy.is_contiguous(), "ascan ", op, ": dy must be contiguous");
  check_f32_vector(op, "mean", mean, rows, x);
  check_f32_vector(op, "rstd", rstd, rows, x);
  return {rows, C};
}

}  // namespace ascan
