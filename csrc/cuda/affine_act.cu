// The elementwise epilogue pass: out = act(x * a[k] + b[k] + residual) over an NCHW or
// channels-last activation, in place when out == x.
//
// Used twice: after the cuDNN convolution of conv_bn_gelu / conv_bn_add / conv_bn (a = 1,
// b = the folded BN bias, optional residual, GELU or none: one read-modify-write pass
// instead of eager's separate BN, add and GELU passes), and as GroupNorm+SiLU's
// normalising pass (a, b per (sample, channel) from the statistics, SiLU).
//
// Memory bound: 16-byte vector loads/stores when a vector never crosses a coefficient
// change within a plane (NCHW: HW % V == 0, one coefficient per vector; channels-last:
// C % V == 0, V consecutive channels), scalar accesses otherwise. Grid-stride loop.
#include "ascan/cuda_common.cuh"

namespace ascan::cuda {
namespace {

struct AffineActParams {
  void* out;
  const void* x;
  const void* residual;
  const float* a;
  const float* b;
  int64_t numel, C, HW;
  bool channels_last, per_sample;
  int act;
};

constexpr int kThreads = 256;

template <typename T, int V, typename Index>
__global__ void __launch_bounds__(kThreads) affine_act_kernel(AffineActParams p) {
  T* out = static_cast<T*>(p.out);
  const T* x = static_cast<const T*>(p.x);  // may alias out: no __restrict__
  const T* res = static_cast<const T*>(p.residual);
  const Index nvec = static_cast<Index>(p.numel / V);
  const Index C = static_cast<Index>(p.C), HW = static_cast<Index>(p.HW);
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index v = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; v < nvec; v += stride) {
    const Index i = v * V;
    // For channels-last the vector's j-th element uses k + j: a vector stays in one pixel.
    const Index k = math::coeff_index<Index>(i, C, HW, p.channels_last, p.per_sample);
    float xv[V], rv[V];
    load_vec<T, V>(x + i, xv);
    if (res != nullptr) {
      load_vec<T, V>(res + i, rv);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) rv[j] = 0.0f;
    }
    float ov[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const Index kj = p.channels_last ? k + j : k;
      const float a = p.a != nullptr ? __ldg(p.a + kj) : 1.0f;
      ov[j] = math::affine_act(xv[j], a, __ldg(p.b + kj), rv[j], p.act);
    }
    store_vec<T, V>(out + i, ov);
  }
}

template <typename T, int V>
cudaError_t launch_typed(const AffineActParams& p, int sm_count, cudaStream_t stream) {
  const int64_t nvec = p.numel / V;
  const int64_t blocks = std::min<int64_t>(ceil_div(nvec, kThreads), int64_t{sm_count} * 8);
  // 32-bit index math when every index fits: 64-bit division is several times slower.
  if (p.numel < (int64_t{1} << 31)) {
    affine_act_kernel<T, V, uint32_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  } else {
    affine_act_kernel<T, V, int64_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_affine_act(const AffineActArgs& args, int sm_count, cudaStream_t stream) {
  AffineActParams p{args.out, args.x, args.residual, args.a, args.b, args.N * args.C * args.HW,
                    args.C, args.HW, args.channels_last, args.per_sample, args.act};
  if (p.numel == 0) return cudaSuccess;
  if (p.C <= 0 || p.HW <= 0 || p.b == nullptr || !math::act_valid(p.act)) return cudaErrorInvalidValue;
  return dispatch_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVecBytes / sizeof(T);
    const int64_t run = p.channels_last ? p.C : p.HW;  // elements that share one coefficient run
    const bool vec_ok = run % V == 0 && aligned16(p.out) && aligned16(p.x) && aligned16(p.residual);
    return vec_ok ? launch_typed<T, V>(p, sm_count, stream) : launch_typed<T, 1>(p, sm_count, stream);
  });
}

}  // namespace ascan::cuda
