// LayerNorm forward and backward over the last dim of a contiguous (rows, C) tensor,
// C <= 1280 (the T-block widths): one warp per row, the whole row held in registers, so
// x is read once, y written once, and both statistics come from registers (two-pass
// mean/variance, no cancellation). Each lane holds kItems elements: for 16-byte vectors
// lane l owns vectors l, l + 32, ... (coalesced), otherwise single elements likewise.
//
// Backward: dx per row the same way; dweight/dbias accumulate per warp in shared memory
// across the rows the warp visits, are summed over the block's warps and written as one
// partial row per block, which the binding sums (deterministic, no atomics).
#include "ascan/cuda_common.cuh"

namespace ascan::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * kWarp;

struct FwdParams {
  void* y;
  float* mean;
  float* rstd;
  const void* x;
  const float* weight;
  const float* bias;
  int64_t rows;
  int C;
  float eps;
};

struct BwdParams {
  void* dx;
  float* dweight_partial;
  float* dbias_partial;
  const void* dy;
  const void* x;
  const float* mean;
  const float* rstd;
  const float* weight;
  int64_t rows;
  int C;
};

// Column of element j of a lane's k-th vector.
template <int V>
__device__ __forceinline__ int column(int k, int lane, int j) {
  return (k * kWarp + lane) * V + j;
}

template <typename T, int V, int kItems>
__global__ void __launch_bounds__(kThreads) layer_norm_fwd_kernel(FwdParams p) {
  constexpr int kVecs = kItems / V;
  static_assert(kVecs * V == kItems, "kItems must be a multiple of the vector width");
  const int lane = threadIdx.x % kWarp;
  const int C = p.C;
  // One row per warp, no grid-stride loop: with a loop ptxas hoists the per-item column
  // predicates out of it and spills them (seen with -Xptxas -v for the scalar variants).
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= p.rows) return;
  {
    const T* xr = static_cast<const T*>(p.x) + row * C;
    T* yr = static_cast<T*>(p.y) + row * C;
    float v[kItems];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      float t[V];
      if (column<V>(k, lane, 0) < C) {
        load_vec<T, V>(xr + column<V>(k, lane, 0), t);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) t[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        v[k * V + j] = t[j];
        sum += t[j];
      }
    }
    const float mean = warp_sum(sum) / C;
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      if (column<V>(k, lane, 0) < C) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float d = v[k * V + j] - mean;
          sq += d * d;
        }
      }
    }
    const float rstd = math::inv_std(warp_sum(sq) / C, p.eps);
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int col0 = column<V>(k, lane, 0);
      if (col0 < C) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float w = p.weight != nullptr ? __ldg(p.weight + col0 + j) : 1.0f;
          const float b = p.bias != nullptr ? __ldg(p.bias + col0 + j) : 0.0f;
          o[j] = math::layer_norm_apply(v[k * V + j], mean, rstd, w, b);
        }
        store_vec<T, V>(yr + col0, o);
      }
    }
    if (lane == 0) {
      p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
  }
}

// out[col] = sum over the block's warps of part[warp][col], in a fixed warp order.
template <int kItems>
__device__ __forceinline__ void block_column_sum(const float (&part)[kWarpsPerBlock][kItems * kWarp], float* out,
                                                 int C) {
  for (int col = threadIdx.x; col < C; col += kThreads) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) s += part[w][col];
    out[col] = s;
  }
}

template <typename T, int V, int kItems>
__global__ void __launch_bounds__(kThreads) layer_norm_bwd_kernel(BwdParams p) {
  constexpr int kVecs = kItems / V;
  static_assert(kVecs * V == kItems, "kItems must be a multiple of the vector width");
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int C = p.C;
  // Per-warp dweight/dbias accumulators, one column per element a lane owns. In shared
  // memory rather than registers: with the row's xhat and g already in registers, two more
  // kItems arrays took the widest variant to ~250 registers (2 blocks per SM). Only the
  // owning lane touches a column until the final __syncthreads.
  __shared__ float sdw[kWarpsPerBlock][kItems * kWarp];
  __shared__ float sdb[kWarpsPerBlock][kItems * kWarp];
  for (int i = lane; i < kItems * kWarp; i += kWarp) sdw[warp][i] = sdb[warp][i] = 0.0f;
  __syncwarp();

  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; row < p.rows; row += step) {
    const T* xr = static_cast<const T*>(p.x) + row * C;
    const T* dyr = static_cast<const T*>(p.dy) + row * C;
    T* dxr = static_cast<T*>(p.dx) + row * C;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float xhat[kItems], g[kItems];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int col0 = column<V>(k, lane, 0);
      if (col0 < C) {
        float tx[V], td[V];
        load_vec<T, V>(xr + col0, tx);
        load_vec<T, V>(dyr + col0, td);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const int i = k * V + j;
          const float w = p.weight != nullptr ? __ldg(p.weight + col0 + j) : 1.0f;
          xhat[i] = (tx[j] - mean) * rstd;
          g[i] = td[j] * w;
          sdw[warp][col0 + j] += td[j] * xhat[i];
          sdb[warp][col0 + j] += td[j];
          sum_g += g[i];
          sum_gx += g[i] * xhat[i];
        }
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) xhat[k * V + j] = g[k * V + j] = 0.0f;
      }
    }
    const float mean_g = warp_sum(sum_g) / C;
    const float mean_gx = warp_sum(sum_gx) / C;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int col0 = column<V>(k, lane, 0);
      if (col0 < C) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = math::layer_norm_grad_input(g[k * V + j], xhat[k * V + j], rstd, mean_g, mean_gx);
        store_vec<T, V>(dxr + col0, o);
      }
    }
  }
  __syncthreads();
  block_column_sum<kItems>(sdw, p.dweight_partial + static_cast<int64_t>(blockIdx.x) * C, C);
  block_column_sum<kItems>(sdb, p.dbias_partial + static_cast<int64_t>(blockIdx.x) * C, C);
}

// Calls f(std::integral_constant<int, kItems>) for the smallest register bucket >= C / 32.
template <typename F>
cudaError_t dispatch_items(int64_t C, F&& f) {
  const int64_t per_lane = ceil_div(C, kWarp);
  if (per_lane <= 8) return f(std::integral_constant<int, 8>{});
  if (per_lane <= 16) return f(std::integral_constant<int, 16>{});
  if (per_lane <= 24) return f(std::integral_constant<int, 24>{});
  if (per_lane <= 40) return f(std::integral_constant<int, 40>{});
  return cudaErrorInvalidValue;  // C > kLayerNormMaxC: the binding rejects it first
}

}  // namespace

cudaError_t launch_layer_norm_fwd(const LayerNormFwdArgs& a, int sm_count, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (a.C <= 0 || a.C > kLayerNormMaxC) return cudaErrorInvalidValue;
  const FwdParams p{a.y, a.mean, a.rstd, a.x, a.weight, a.bias, a.rows, static_cast<int>(a.C), a.eps};
  if (ceil_div(a.rows, kWarpsPerBlock) > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const unsigned blocks = static_cast<unsigned>(ceil_div(a.rows, kWarpsPerBlock));
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVecBytes / sizeof(T);
    const bool vec = a.C % V == 0 && aligned16(a.x) && aligned16(a.y);
    return dispatch_items(a.C, [&](auto items) {
      constexpr int kItems = decltype(items)::value;
      if (vec) {
        layer_norm_fwd_kernel<T, V, kItems><<<blocks, kThreads, 0, stream>>>(p);
      } else {
        layer_norm_fwd_kernel<T, 1, kItems><<<blocks, kThreads, 0, stream>>>(p);
      }
      return cudaGetLastError();
    });
  });
}

int layer_norm_bwd_blocks(int64_t rows, int sm_count) {
  // Few blocks: each writes a (C,) partial row per output; 4 per SM keeps the loads in flight.
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(rows, kWarpsPerBlock), int64_t{sm_count} * 4)));
}

cudaError_t launch_layer_norm_bwd(const LayerNormBwdArgs& a, int sm_count, cudaStream_t stream) {
  if (a.C <= 0 || a.C > kLayerNormMaxC) return cudaErrorInvalidValue;
  const BwdParams p{a.dx, a.dweight_partial, a.dbias_partial, a.dy, a.x, a.mean, a.rstd, a.weight, a.rows,
                    static_cast<int>(a.C)};
  // Launched even for rows == 0: the partial rows must still be written (as zeros).
  const unsigned blocks = static_cast<unsigned>(layer_norm_bwd_blocks(a.rows, sm_count));
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = kVecBytes / sizeof(T);
    const bool vec = a.C % V == 0 && aligned16(a.x) && aligned16(a.dy) && aligned16(a.dx);
    return dispatch_items(a.C, [&](auto items) {
      constexpr int kItems = decltype(items)::value;
      if (vec) {
        layer_norm_bwd_kernel<T, V, kItems><<<blocks, kThreads, 0, stream>>>(p);
      } else {
        layer_norm_bwd_kernel<T, 1, kItems><<<blocks, kThreads, 0, stream>>>(p);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace ascan::cuda
