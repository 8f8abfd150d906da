// GroupNorm + FiLM + SiLU forward in three launches:
//   1. stats:    (splits, N * groups) blocks; each reduces one slice of one group with
//                Welford and writes (count, mean, m2). Splitting keeps every SM busy when
//                N * groups is small (batch 1-2 at 32 groups is 32-64 groups).
//   2. coeffs:   one thread per (n, c) merges its group's slices in a fixed order
//                (deterministic) and folds mean, rstd, weight, bias, scale and shift into
//                one affine (a, c) per (n, c) (ascan::math::group_norm_coeffs).
//   3. apply:    the shared affine+activation pass (affine_act.cu) with SiLU.
// x is read twice (stats, apply) and out written once; eager PyTorch makes four or five
// passes (group_norm, * (1 + scale), + shift, silu).
#include "ascan/cuda_common.cuh"

namespace ascan::cuda {
namespace {

constexpr int kStatsThreads = 256;
constexpr int kMaxSplits = 64;

struct StatsParams {
  const void* x;
  float* partial;  // (N * groups, splits, 3)
  int64_t C, HW, groups, Cg;
  int64_t group_vecs;  // vectors of V elements per group
  int64_t vecs_per_split;
  int splits;
  bool channels_last;
};

template <typename T, int V>
__global__ void __launch_bounds__(kStatsThreads) group_norm_stats_kernel(StatsParams p) {
  const T* x = static_cast<const T*>(p.x);
  const int64_t ng = blockIdx.y;
  const int64_t n = ng / p.groups, g = ng % p.groups;
  const int64_t begin = blockIdx.x * p.vecs_per_split;
  const int64_t end = begin + p.vecs_per_split < p.group_vecs ? begin + p.vecs_per_split : p.group_vecs;

  // Every split of a group shifts by the same pivot, the group's first element.
  const float pivot = to_float(x[math::group_offset<int64_t>(n, g, 0, p.C, p.HW, p.Cg, p.channels_last)]);
  math::Welford w = math::welford_init();
  for (int64_t v = begin + threadIdx.x; v < end; v += kStatsThreads) {
    float xv[V];
    load_vec<T, V>(x + math::group_offset<int64_t>(n, g, v * V, p.C, p.HW, p.Cg, p.channels_last), xv);
#pragma unroll
    for (int j = 0; j < V; ++j) math::welford_push(w, xv[j] - pivot);
  }
  // Block reduction: warps, then the warps' results through shared memory.
  w = warp_welford(w);
  __shared__ float sm[3][kStatsThreads / kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sm[0][warp] = w.count;
    sm[1][warp] = w.mean;
    sm[2][warp] = w.m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    math::Welford t = math::welford_init();
    for (int i = 0; i < kStatsThreads / kWarp; ++i) t = math::welford_merge(t, math::Welford{sm[0][i], sm[1][i], sm[2][i]});
    float* out = p.partial + (ng * p.splits + blockIdx.x) * 3;
    out[0] = t.count;
    out[1] = t.count > 0.0f ? pivot + t.mean : pivot;  // absolute mean: splits merge in the coeffs kernel
    out[2] = t.m2;
  }
}

__global__ void group_norm_coeffs_kernel(const float* partial, const float* weight, const float* bias,
                                         const float* scale, const float* shift, float* a_out, float* c_out,
                                         int64_t N, int64_t C, int64_t groups, int splits, float eps) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // n * C + c
  if (i >= N * C) return;
  const int64_t n = i / C, c = i % C;
  const int64_t g = c / (C / groups);
  const float* part = partial + (n * groups + g) * splits * 3;
  math::Welford w = math::welford_init();
  for (int s = 0; s < splits; ++s) w = math::welford_merge(w, math::Welford{part[3 * s], part[3 * s + 1], part[3 * s + 2]});
  const float rstd = math::inv_std(math::welford_var(w), eps);
  const math::Affine k = math::group_norm_coeffs(w.mean, rstd, weight ? weight[c] : 1.0f, bias ? bias[c] : 0.0f,
                                                 scale ? scale[i] : 0.0f, shift ? shift[i] : 0.0f);
  a_out[i] = k.a;
  c_out[i] = k.c;
}

}  // namespace

int group_norm_splits(int64_t N, int64_t groups, int64_t group_numel, int sm_count) {
  // Enough blocks for ~4 per SM, but each block at least 2048 elements (a block's fixed
  // cost is its reduction), at most kMaxSplits (the coeffs kernel merges them serially).
  const int64_t want = ceil_div(int64_t{4} * sm_count, std::max<int64_t>(N * groups, 1));
  const int64_t cap = std::max<int64_t>(ceil_div(group_numel, 2048), 1);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, cap, kMaxSplits})));
}

cudaError_t launch_group_norm_silu(const GroupNormSiluArgs& args, int sm_count, cudaStream_t stream) {
  const int64_t N = args.N, C = args.C, HW = args.HW, G = args.groups;
  if (N * C * HW == 0) return cudaSuccess;
  if (G <= 0 || C % G != 0 || HW <= 0) return cudaErrorInvalidValue;
  const int64_t Cg = C / G, group_numel = Cg * HW;
  const int splits = group_norm_splits(N, G, group_numel, sm_count);

  cudaError_t err = dispatch_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVecBytes / sizeof(T);
    // A vector must stay inside the group's contiguous run (a plane run for NCHW, the
    // group's Cg channels of one pixel for channels-last).
    const int64_t run = args.channels_last ? Cg : group_numel;
    const bool vec = run % V == 0 && aligned16(args.x);
    const int vw = vec ? V : 1;
    StatsParams p{args.x, args.partial_stats, C, HW, G, Cg, group_numel / vw, 0, splits, args.channels_last};
    p.vecs_per_split = ceil_div(p.group_vecs, splits);
    // gridDim.y is limited to 65535 (N * groups; the binding rejects more).
    if (N * G > 65535) return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(N * G));
    if (vec) {
      group_norm_stats_kernel<T, V><<<grid, kStatsThreads, 0, stream>>>(p);
    } else {
      group_norm_stats_kernel<T, 1><<<grid, kStatsThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;

  float* a = args.coeffs;
  float* c = args.coeffs + N * C;
  const int threads = 256;
  group_norm_coeffs_kernel<<<static_cast<unsigned>(ceil_div(N * C, threads)), threads, 0, stream>>>(
      args.partial_stats, args.weight, args.bias, args.scale, args.shift, a, c, N, C, G, splits, args.eps);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  AffineActArgs apply;
  apply.out = args.out;
  apply.x = args.x;
  apply.a = a;
  apply.b = c;
  apply.N = N;
  apply.C = C;
  apply.HW = HW;
  apply.channels_last = args.channels_last;
  apply.per_sample = true;
  apply.act = math::kActSilu;
  apply.dtype = args.dtype;
  return launch_affine_act(apply, sm_count, stream);
}

}  // namespace ascan::cuda
