// The conv_bn ops' epilogue: its schema, its input checks and its CPU reference loop.
#include "bias_act_epilogue.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ascan/cpu_reference.h"

namespace ascan {

ActLayout check_bias_act_epilogue(const at::Tensor& y, const at::Tensor& bias,
                                  const std::optional<at::Tensor>& residual, int64_t act, c10::DeviceType device) {
  const char* op = "bias_act_epilogue_";
  const ActLayout l = check_activation(op, "y", y, device);
  checks::f32_vector(op, "bias", bias, l.C, y);
  TORCH_CHECK(math::act_valid(static_cast<int>(act)), "ascan ", op,
              ": act must be 0 (none), 1 (gelu), 2 (gelu tanh) or 3 (silu), got ", act);
  if (residual.has_value() && residual->defined()) {
    const at::Tensor& r = *residual;
    checks::device(op, "residual", r, device, &y);
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

namespace cpu {
namespace {

using ref::affine_act_loop;
using ref::dispatch_float_types;

void bias_act_epilogue_reference_(const at::Tensor& y, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
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

}  // namespace
}  // namespace cpu
}  // namespace ascan

TORCH_LIBRARY_FRAGMENT(ascan_C, m) {
  m.def("bias_act_epilogue_(Tensor(a!) y, Tensor bias, Tensor? residual, int act) -> ()");
  m.def("bias_act_epilogue_reference_(Tensor(a!) y, Tensor bias, Tensor? residual, int act) -> ()");
}

TORCH_LIBRARY_IMPL(ascan_C, CPU, m) { m.impl("bias_act_epilogue_reference_", &ascan::cpu::bias_act_epilogue_reference_); }
