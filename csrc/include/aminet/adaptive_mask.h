// Shared math of the adaptive mask, for the C++ CPU kernel (g++) and the CUDA kernel (nvcc).
//
// The truth is aminet_edge/ops/reference.py::adaptive_mask; every function here is one of its steps:
//   R(t, c) = sqrt(max(sum (t - c)^2, EPS^2)) * sum (t / max(||t||, EPS) - c / max(||c||, EPS))^2 / 2
//   (the second factor is 1 - cos(t, c), computed without cancellation: see reference.cluster_distance),
//   argmin over centres (ties -> lowest index), per image and cluster p with n_p members:
//   bound_p = mean + lam * std (std unbiased, n_p - 1, clamped at 1), masked = R > bound_p and n_p > 1.
// All arithmetic is float32 whatever the input dtype (fp16 is widened on load).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

#ifndef AMINET_HD
#if defined(__CUDACC__)
#define AMINET_HD __host__ __device__ __forceinline__
#else
#define AMINET_HD inline
#endif
#endif

namespace aminet {

constexpr float kEps = 1e-8f;    // reference.EPS: norm clamp of the cosine
constexpr float kEps2 = 1e-16f;  // reference EPS * EPS: clamp of the squared euclidean distance

// IEEE half (as raw bits) -> float, exact for every value (subnormals, inf, nan). The host path is
// branch-free so g++ can vectorise loops that widen fp16 numpy arrays on load.
AMINET_HD float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t shifted_exp = 0x7c00u << 13;
  const uint32_t magic_bits = 113u << 23;
  uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (uint32_t)(127 - 15) << 23;
  const uint32_t o_inf = o + ((uint32_t)(128 - 16) << 23);  // inf / nan keep their payload
  const uint32_t o_sub_raw = o + (1u << 23);                 // zero / subnormal: renormalise via float
  float f_sub, magic;
  memcpy(&f_sub, &o_sub_raw, 4);
  memcpy(&magic, &magic_bits, 4);
  f_sub -= magic;
  uint32_t o_sub;
  memcpy(&o_sub, &f_sub, 4);
  const uint32_t is_inf = 0u - (uint32_t)(exp == shifted_exp);  // all-ones masks, no branches
  const uint32_t is_sub = 0u - (uint32_t)(exp == 0);
  uint32_t bits = (o_inf & is_inf) | (o_sub & is_sub) | (o & ~(is_inf | is_sub));
  bits |= (uint32_t)(h & 0x8000u) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

// Raw fp16 storage on the host (numpy float16 / torch.float16 buffers); float32 loads as itself.
struct half_t {
  uint16_t bits;
};
AMINET_HD float to_float(float x) { return x; }
AMINET_HD float to_float(half_t x) { return half_bits_to_float(x.bits); }
#if defined(__CUDACC__)
AMINET_HD float to_float(__half x) { return __half2float(x); }
#endif

// cos(a, b) from the three sums a.b, a.a, b.b with each norm clamped at EPS (reference.cosine).
AMINET_HD float cosine_from_sums(float dot, float aa, float bb) {
  return dot / (fmaxf(sqrtf(aa), kEps) * fmaxf(sqrtf(bb), kEps));
}

// Reciprocal of a norm clamped at EPS, from the sum of squares (reference: x / max(||x||, EPS)).
AMINET_HD float inv_norm(float sq) { return 1.0f / fmaxf(sqrtf(sq), kEps); }

// One element of the fused token/centre accumulation, given the reciprocal norms it and ic: the squared
// difference (summed directly, not expanded as tt + cc - 2tc, so a token on a centre gives exactly 0 like
// the reference) and the squared difference of the unit vectors (1 - cos = half of its sum: no
// cancellation when t and c are nearly parallel, as trained tokens are).
AMINET_HD void pair_accumulate(float& d2, float& u2, float t, float c, float it, float ic) {
  const float diff = t - c;
  const float unit = t * it - c * ic;
  d2 += diff * diff;
  u2 += unit * unit;
}

// R(t, c) = ||t - c|| * (1 - cos) from the accumulated d2 = sum (t - c)^2 and u2 = sum (t/|t| - c/|c|)^2.
AMINET_HD float pair_distance(float d2, float u2) { return sqrtf(fmaxf(d2, kEps2)) * (0.5f * u2); }

// Argmin update over centres visited in increasing index: strict < keeps the lowest index on ties.
AMINET_HD void argmin_update(float& best, int64_t& best_idx, float dist, int64_t idx) {
  if (idx == 0 || dist < best) {
    best = dist;
    best_idx = idx;
  }
}

// Cluster statistics, two-pass like the reference: mean first, then the squared deviations.
AMINET_HD float cluster_mean(float sum, float count) { return sum / fmaxf(count, 1.0f); }

AMINET_HD float cluster_bound(float mean, float sq_dev, float count, float lam) {
  const float std_dev = sqrtf(sq_dev / fmaxf(count - 1.0f, 1.0f));
  return mean + lam * std_dev;
}

// A token is masked when it lies beyond its cluster's boundary; clusters of <= 1 token mask nothing.
AMINET_HD bool token_masked(float dist, float bound, float count) { return dist > bound && count > 1.5f; }

#if defined(__CUDACC__)
// Warp and block reductions of the CUDA kernels (adaptive_mask.cu, score_map.cu). Fixed tree order, so a
// result does not depend on scheduling. Every lane of the warp (every thread of the block) gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// blockDim.x must be a multiple of 32 (<= 1024); `scratch` holds 33 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) scratch[32] = t;
  }
  __syncthreads();
  return scratch[32];
}
#endif

}  // namespace aminet
