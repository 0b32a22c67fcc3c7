// Shared math of the score map, for the C++ CPU kernel (g++) and the CUDA kernel (nvcc).
//
// The truth is aminet_edge/ops/reference.py::score_map. Per cell over channels: mse = mean (f - r)^2 and
// cosd = 1 - cos(f, r); each map M is upsampled and smoothed as A_h @ M @ A_w^T with the (out, in)
// matrices of `smoothing_matrix` (reference.smoothing_matrix); amap = smooth(up(mse)) * smooth(up(cosd)),
// plus, with a token map D (B, gh, gw), token_weight * A_hg @ D @ A_wg^T (`add_token_term`, A_hg (H, gh)
// and A_wg (W, gw) the same matrices at the token grid's sizes); image score = population std (or max) of
// amap. Float32 accumulation whatever the input dtype.
#pragma once

#include <math.h>
#include <stdint.h>

#include <vector>

// The cosine convention (norms clamped at EPS), AMINET_HD and fp16 widening are defined once, there.
#include "aminet/adaptive_mask.h"

namespace aminet {

// One channel of one cell: the four sums behind mse and cos.
AMINET_HD void cell_accumulate(float& d2, float& ff, float& rr, float& fr, float f, float r) {
  const float diff = f - r;
  d2 += diff * diff;
  ff += f * f;
  rr += r * r;
  fr += f * r;
}

AMINET_HD float cell_mse(float d2, int64_t channels) { return d2 / (float)channels; }

AMINET_HD float cell_cos_distance(float fr, float ff, float rr) { return 1.0f - cosine_from_sums(fr, ff, rr); }

// amap = mse * cosd (already in `amap`) + token_weight * the upsampled, smoothed token map at that pixel.
AMINET_HD float add_token_term(float amap, float token_weight, float token) { return amap + token_weight * token; }

// Population standard deviation from the sum of squared deviations about the mean of n values.
AMINET_HD float population_std(float sq_dev, int64_t n) { return sqrtf(sq_dev / (float)n); }

// Gaussian radius as reference.gaussian_taps (scipy's truncate = 4): int(4 * sigma + 0.5).
AMINET_HD int gaussian_radius(double sigma) { return (int)(4.0 * sigma + 0.5); }

// Index of sample u (any integer) of a length-n line extended by scipy.ndimage's default "reflect"
// border: d c b a | a b c d | d c b a (edge repeated), periodic with period 2n (reference.reflect_index).
AMINET_HD int64_t reflect_index(int64_t u, int64_t n) {
  u %= 2 * n;
  if (u < 0) u += 2 * n;
  return u < n ? u : 2 * n - 1 - u;
}

// Host only: the (out_size, in_size) row-major float32 matrix A with A @ m = blur(upsample(m)), i.e.
// bilinear upsampling with align_corners=True followed by the 1-D Gaussian blur (scipy's default
// "reflect" border, edge sample repeated: reflect_index); sigma <= 0 means no blur. Mirrors
// reference.smoothing_matrix: float32 upsampling coordinates and float32 taps as torch uses, entries
// accumulated in double and rounded once. Returns 0, or -1 when the sizes are < 1.
inline int smoothing_matrix(int64_t in_size, int64_t out_size, double sigma, float* a) {
  if (in_size < 1 || out_size < 1) return -1;
  const int radius = sigma > 0 ? gaussian_radius(sigma) : 0;
  std::vector<float> taps(2 * radius + 1, 1.0f);
  if (sigma > 0) {
    std::vector<double> raw(2 * radius + 1);
    double total = 0.0;
    for (int k = -radius; k <= radius; ++k) {
      raw[k + radius] = exp(-0.5 * ((double)k / sigma) * ((double)k / sigma));
      total += raw[k + radius];
    }
    for (int k = 0; k <= 2 * radius; ++k) taps[k] = (float)(raw[k] / total);
  }
  // align_corners=True source coordinate, computed in float as torch does for float32 maps
  const float scale = out_size > 1 ? (float)(in_size - 1) / (float)(out_size - 1) : 0.0f;
  std::vector<double> row(in_size);
  for (int64_t o = 0; o < out_size; ++o) {
    for (int64_t j = 0; j < in_size; ++j) row[j] = 0.0;
    for (int k = -radius; k <= radius; ++k) {
      const int64_t u = reflect_index(o + k, out_size);  // upsampled sample read by tap k
      const float src = scale * (float)u;
      int64_t i0 = (int64_t)src;
      if (i0 > in_size - 1) i0 = in_size - 1;
      const int64_t i1 = i0 < in_size - 1 ? i0 + 1 : i0;
      float lam1 = src - (float)i0;
      lam1 = lam1 < 0.0f ? 0.0f : (lam1 > 1.0f ? 1.0f : lam1);
      const float lam0 = 1.0f - lam1;
      row[i0] += (double)taps[k + radius] * lam0;
      row[i1] += (double)taps[k + radius] * lam1;
    }
    for (int64_t j = 0; j < in_size; ++j) a[o * in_size + j] = (float)row[j];
  }
  return 0;
}

}  // namespace aminet
