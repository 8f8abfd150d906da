// Per-element math shared by the CUDA kernels (csrc/cuda/*.cu) and their CPU reference
// entry points (csrc/cpu/reference_ops.cpp): GELU (erf / tanh), SiLU, the conv epilogue,
// LayerNorm / GroupNorm normalisation and LayerNorm's input gradient, and the Welford
// statistics both norms reduce with.
//
// Why one header: the CPU build has no GPU to run the kernels on, so the CPU tests check
// the reference entry points against eager PyTorch; because both sides call these exact
// functions, a formula bug shows on the CPU. Everything here is float32 in, float32 out
// (loads/stores of half/bfloat16 are the callers' business) and uses only <cmath>-level
// functions that exist on host and device, so nvcc never needs a torch header.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define ASCAN_HD __host__ __device__ __forceinline__
#else
#define ASCAN_HD inline
#endif

namespace ascan::math {

// Activation applied by the epilogues; the integer values are part of the op schemas
// (ascan_C::bias_act_epilogue_ takes `int act`), keep them stable.
enum Act : int { kActNone = 0, kActGeluErf = 1, kActGeluTanh = 2, kActSilu = 3 };

ASCAN_HD bool act_valid(int act) { return act >= kActNone && act <= kActSilu; }

// gelu(v) = v/2 * (1 + erf(v / sqrt(2))), torch's approximate="none".
ASCAN_HD float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

// torch's approximate="tanh": v/2 * (1 + tanh(sqrt(2/pi) * (v + 0.044715 v^3))).
ASCAN_HD float gelu_tanh(float v) {
  const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
  return 0.5f * v * (1.0f + tanhf(inner));
}

// silu(v) = v * sigmoid(v). expf overflows to inf for v < -88, giving v / inf = -0, which
// is the right limit; no special case needed.
ASCAN_HD float silu(float v) { return v / (1.0f + expf(-v)); }

ASCAN_HD float apply_act(float v, int act) {
  switch (act) {
    case kActGeluErf: return gelu_erf(v);
    case kActGeluTanh: return gelu_tanh(v);
    case kActSilu: return silu(v);
    default: return v;
  }
}

// The per-channel affine + residual + activation every epilogue here reduces to:
// act(v * a + b + r). The conv epilogue uses a = 1 (BN's scale is folded into the conv
// weight), b = the folded bias; GroupNorm+FiLM+SiLU uses a, b from group_norm_coeffs.
// Order follows the eager reference: BN, then the residual add, then the activation.
ASCAN_HD float affine_act(float v, float a, float b, float r, int act) { return apply_act(v * a + b + r, act); }

// Conv epilogue (BN folded into the conv): act(conv_out + folded_bias[c] + residual).
ASCAN_HD float bias_act(float v, float bias, float r, int act) { return apply_act(v + bias + r, act); }

// 1 / sqrt(var + eps), written the same way on host and device (not rsqrtf, which has no
// host version and rounds differently) so the CPU reference matches the kernel's stats.
ASCAN_HD float inv_std(float var, float eps) { return 1.0f / sqrtf(var + eps); }

// LayerNorm of one element given its row's mean and inverse std.
ASCAN_HD float layer_norm_apply(float v, float mean, float rstd, float w, float b) {
  return (v - mean) * rstd * w + b;
}

// LayerNorm's input gradient for one element: with xhat = (x - mean) * rstd and
// g = dy * w, dx = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat)).
ASCAN_HD float layer_norm_grad_input(float g, float xhat, float rstd, float mean_g, float mean_gxhat) {
  return rstd * (g - mean_g - xhat * mean_gxhat);
}

// GroupNorm + FiLM folded into one affine per (sample, channel):
// silu(((v - mean) * rstd * w + b) * (1 + scale) + shift) == silu(v * a + c) with
// a = rstd * w * (1 + scale) and c = (b - mean * rstd * w) * (1 + scale) + shift.
struct Affine {
  float a;
  float c;
};

ASCAN_HD Affine group_norm_coeffs(float mean, float rstd, float w, float b, float scale, float shift) {
  const float film = 1.0f + scale;
  const float wr = rstd * w;
  return Affine{wr * film, (b - mean * wr) * film + shift};
}

ASCAN_HD float group_norm_silu_apply(float v, Affine k) { return silu(v * k.a + k.c); }

// Welford running statistics (count, mean, sum of squared deviations), mergeable across
// threads (Chan et al.). Callers push values minus a pivot (the group's first element):
// each mean update rounds to an ulp of the running mean, so with a mean of 1e4 and a
// spread of 1 the unshifted mean drifts by many ulps of the spread; shifted, it does not.
struct Welford {
  float count;
  float mean;
  float m2;
};

ASCAN_HD Welford welford_init() { return Welford{0.0f, 0.0f, 0.0f}; }

ASCAN_HD void welford_push(Welford& w, float v) {
  w.count += 1.0f;
  const float d = v - w.mean;
  w.mean += d / w.count;
  w.m2 += d * (v - w.mean);
}

ASCAN_HD Welford welford_merge(Welford a, Welford b) {
  const float n = a.count + b.count;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean;
  const float fb = b.count / n;
  return Welford{n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.count * fb};
}

// Biased variance (what LayerNorm/GroupNorm normalise with); 0 for an empty set.
// Rounding's negative variances clamp to 0, but a NaN stays NaN (an inf in the data gives
// inf - inf): fmaxf(NaN, 0) would return 0 and turn the normalised outputs into inf.
ASCAN_HD float welford_var(Welford w) {
  if (!(w.count > 0.0f)) return 0.0f;
  const float v = w.m2 / w.count;
  return v < 0.0f ? 0.0f : v;
}

// ---------------------------------------------------------------------------------------
// Index math of the (N, C, *spatial) layouts, shared for the same reason: the CPU tests
// then cover the kernels' channel/group addressing for both memory formats.
// ---------------------------------------------------------------------------------------

// Index of the per-channel coefficient of linear element i of an (N, C, HW) activation:
// the channel c, or n * C + c with per_sample. channels_last: stored (N, HW, C).
template <typename I>
ASCAN_HD I coeff_index(I i, I C, I HW, bool channels_last, bool per_sample) {
  if (channels_last) {
    const I c = i % C;
    return per_sample ? (i / (HW * C)) * C + c : c;
  }
  const I plane = i / HW;  // n * C + c
  return per_sample ? plane : plane % C;
}

// Linear offset of the j-th element (in memory order) of group g of sample n, with Cg
// channels per group. NCHW: the group is Cg whole planes, one contiguous run of Cg * HW.
// channels_last: HW pixels, each holding the group's Cg contiguous channels.
template <typename I>
ASCAN_HD I group_offset(I n, I g, I j, I C, I HW, I Cg, bool channels_last) {
  if (channels_last) {
    const I hw = j / Cg;
    return (n * HW + hw) * C + g * Cg + (j - hw * Cg);
  }
  return (n * C + g * Cg) * HW + j;
}

}  // namespace ascan::math
