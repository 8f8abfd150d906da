// Host-side launchers of the CUDA kernels in csrc/cuda/*.cu.
//
// This header is the only thing the torch binding (csrc/cuda/cuda_ops.cpp, compiled by g++)
// and the device code (compiled by nvcc) share: raw pointers, sizes and a cudaStream_t, no
// torch types, so nvcc never parses a torch header. Each launcher returns the
// cudaGetLastError() of its launches; the binding turns a failure into a TORCH_CHECK that
// names the op. Inputs are assumed already checked by the binding (dtype, device, layout,
// sizes); the launchers only check what the kernels themselves rely on.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace ascan::cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[i] = act(x[i] * a[k] + b[k] + residual[i]) over an (N, C, *spatial) activation with
// HW = prod(spatial) elements per plane, stored contiguous NCHW or channels-last (NHWC).
// k is the channel c (per_sample = false) or n * C + c (per_sample = true). a == nullptr
// means a = 1 everywhere; residual == nullptr means no residual. out may equal x (in place);
// residual must have x's layout. a, b: float32.
struct AffineActArgs {
  void* out = nullptr;
  const void* x = nullptr;
  const void* residual = nullptr;
  const float* a = nullptr;
  const float* b = nullptr;
  int64_t N = 0, C = 0, HW = 0;
  bool channels_last = false;
  bool per_sample = false;
  int act = 0;  // ascan::math::Act
  DType dtype = DType::kFloat32;
};
cudaError_t launch_affine_act(const AffineActArgs& args, int sm_count, cudaStream_t stream);

// GroupNorm + FiLM + SiLU forward: out = silu(group_norm(x) * (1 + scale) + shift).
// x, out: (N, C, HW) NCHW-contiguous or channels-last, x's dtype. weight, bias: (C,) float32
// or nullptr (1 / 0); scale, shift: (N, C) float32 or nullptr (0). Workspaces (float32):
// partial_stats: N * groups * max_splits * 3, coeffs: 2 * N * C.
struct GroupNormSiluArgs {
  void* out = nullptr;
  const void* x = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  float* partial_stats = nullptr;
  float* coeffs = nullptr;
  int64_t N = 0, C = 0, HW = 0, groups = 1;
  float eps = 1e-5f;
  bool channels_last = false;
  DType dtype = DType::kFloat32;
};
// How many blocks split one group's statistics (the workspace size depends on it).
int group_norm_splits(int64_t N, int64_t groups, int64_t group_numel, int sm_count);
cudaError_t launch_group_norm_silu(const GroupNormSiluArgs& args, int sm_count, cudaStream_t stream);

// LayerNorm over the last dim of a contiguous (rows, C) tensor, one warp per row with the
// row held in registers: C <= kLayerNormMaxC. weight, bias: (C,) float32 or nullptr.
// mean, rstd: (rows,) float32, written for the backward.
constexpr int64_t kLayerNormMaxC = 1280;
struct LayerNormFwdArgs {
  void* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
  const void* x = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t rows = 0, C = 0;
  float eps = 1e-5f;
  DType dtype = DType::kFloat32;
};
cudaError_t launch_layer_norm_fwd(const LayerNormFwdArgs& args, int sm_count, cudaStream_t stream);

// LayerNorm backward: dx (rows, C) in x's dtype, and per-block partial sums of dweight and
// dbias, (layer_norm_bwd_blocks(...), C) float32 each, which the caller sums over dim 0
// (a deterministic two-level reduction, no atomics).
struct LayerNormBwdArgs {
  void* dx = nullptr;
  float* dweight_partial = nullptr;
  float* dbias_partial = nullptr;
  const void* dy = nullptr;
  const void* x = nullptr;
  const float* mean = nullptr;
  const float* rstd = nullptr;
  const float* weight = nullptr;
  int64_t rows = 0, C = 0;
  DType dtype = DType::kFloat32;
};
int layer_norm_bwd_blocks(int64_t rows, int sm_count);
cudaError_t launch_layer_norm_bwd(const LayerNormBwdArgs& args, int sm_count, cudaStream_t stream);

}  // namespace ascan::cuda
