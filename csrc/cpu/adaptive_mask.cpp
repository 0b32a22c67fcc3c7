// CPU kernel of adaptive_mask (truth: aminet_edge/ops/reference.py::adaptive_mask; math:
// csrc/include/aminet/adaptive_mask.h). OpenMP over (image, token), then over images for the cluster
// statistics. The reference's (B, L, P, D) temporaries become per-pair sums; nothing is allocated per
// call beyond grow-only per-thread buffers for widening fp16 inputs.
#include <omp.h>
#include <stdint.h>

#include <vector>

#include "aminet/adaptive_mask.h"

namespace aminet {
namespace cpu {
namespace {

// Independent partial sums per lane: the fixed-size inner loop is vectorised by g++ (SLP) without
// -ffast-math, and the result does not depend on the thread count.
constexpr int kLanes = 16;

template <class T>
inline float sum_squares(const T* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float v = to_float(x[d + k]);
      acc[k] += v * v;
    }
  }
  for (int k = 0; d + k < n; ++k) {
    const float v = to_float(x[d + k]);
    acc[k] += v * v;
  }
  float total = 0.0f;
  for (int k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

// sum (t - c)^2 and sum (t * it - c * ic)^2 over D for one token/centre pair (it, ic: reciprocal norms).
template <class T>
inline void pair_sums(const T* t, const T* c, int64_t n, float it, float ic, float& d2, float& u2) {
  float a[kLanes] = {}, b[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) pair_accumulate(a[k], b[k], to_float(t[d + k]), to_float(c[d + k]), it, ic);
  }
  for (int k = 0; d + k < n; ++k) pair_accumulate(a[k], b[k], to_float(t[d + k]), to_float(c[d + k]), it, ic);
  d2 = u2 = 0.0f;
  for (int k = 0; k < kLanes; ++k) {
    d2 += a[k];
    u2 += b[k];
  }
}

// Nearest centre of one token: min_dist and assign.
template <class T>
inline void nearest_centre(const T* t, const T* cen, int64_t P, int64_t D, float* min_dist, int64_t* assign) {
  const float it = inv_norm(sum_squares(t, D));
  float best = 0.0f;
  int64_t best_idx = 0;
  for (int64_t p = 0; p < P; ++p) {
    const T* c = cen + p * D;
    float d2, u2;
    pair_sums(t, c, D, it, inv_norm(sum_squares(c, D)), d2, u2);
    argmin_update(best, best_idx, pair_distance(d2, u2), p);
  }
  *min_dist = best;
  *assign = best_idx;
}

// Cluster statistics and mask of one image: P passes of 3 sweeps over L tokens (P, L small) instead of
// a (P,) buffer of sums.
inline void cluster_mask(const float* dist, const int64_t* asg, int64_t L, int64_t P, float lam, bool* msk) {
  for (int64_t p = 0; p < P; ++p) {
    float sum = 0.0f, count = 0.0f;
    for (int64_t l = 0; l < L; ++l) {
      if (asg[l] == p) {
        sum += dist[l];
        count += 1.0f;
      }
    }
    if (count == 0.0f) continue;
    const float mean = cluster_mean(sum, count);
    float sq_dev = 0.0f;
    for (int64_t l = 0; l < L; ++l) {
      if (asg[l] == p) {
        const float dev = dist[l] - mean;
        sq_dev += dev * dev;
      }
    }
    const float bound = cluster_bound(mean, sq_dev, count, lam);
    for (int64_t l = 0; l < L; ++l) {
      if (asg[l] == p) msk[l] = token_masked(dist[l], bound, count);
    }
  }
}

// Grow-only float32 buffers (no allocation per call once warm). fp16 inputs are widened once into them,
// not once per token/centre pair: the centres of the whole batch by the calling thread, each token row
// by the OpenMP worker that owns it.
std::vector<float>& centre_buffer() {
  static thread_local std::vector<float> buf;
  return buf;
}
std::vector<float>& row_buffer() {
  static thread_local std::vector<float> buf;
  return buf;
}

void widen(const half_t* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(x[i]);
}

template <class T>
void adaptive_mask_impl(const T* tokens, const T* centers, int64_t B, int64_t L, int64_t P, int64_t D, float lam,
                        bool* mask, float* min_dist, int64_t* assign) {
  constexpr bool kHalf = sizeof(T) == 2;
  const float* cen32 = nullptr;
  if (kHalf) {
    std::vector<float>& buf = centre_buffer();
    if (buf.size() < (size_t)(B * P * D)) buf.resize(B * P * D);
    widen(reinterpret_cast<const half_t*>(centers), B * P * D, buf.data());
    cen32 = buf.data();
  }
#pragma omp parallel
  {
    float* row = nullptr;
    if (kHalf) {
      std::vector<float>& buf = row_buffer();
      if (buf.size() < (size_t)D) buf.resize(D);
      row = buf.data();
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < B * L; ++n) {
      if (kHalf) {
        widen(reinterpret_cast<const half_t*>(tokens) + n * D, D, row);
        nearest_centre(row, cen32 + (n / L) * P * D, P, D, min_dist + n, assign + n);
      } else {
        nearest_centre(reinterpret_cast<const float*>(tokens) + n * D,
                       reinterpret_cast<const float*>(centers) + (n / L) * P * D, P, D, min_dist + n, assign + n);
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) cluster_mask(min_dist + b * L, assign + b * L, L, P, lam, mask + b * L);
  }
}

}  // namespace

// tokens (B, L, D), centers (B, P, D): C-contiguous float32, or IEEE fp16 when `half` (widened on load).
// Writes mask (B, L), min_dist (B, L), assign (B, L).
void adaptive_mask(const void* tokens, const void* centers, bool half, int64_t B, int64_t L, int64_t P, int64_t D,
                   float lam, bool* mask, float* min_dist, int64_t* assign) {
  if (half) {
    adaptive_mask_impl(static_cast<const half_t*>(tokens), static_cast<const half_t*>(centers), B, L, P, D, lam, mask,
                       min_dist, assign);
  } else {
    adaptive_mask_impl(static_cast<const float*>(tokens), static_cast<const float*>(centers), B, L, P, D, lam, mask,
                       min_dist, assign);
  }
}

}  // namespace cpu
}  // namespace aminet
