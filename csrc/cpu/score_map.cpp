// CPU kernel of score_map (truth: aminet_edge/ops/reference.py::score_map; math:
// csrc/include/aminet/score_map.h). Upsampling + blur is the separable product A_h @ M @ A_w^T with the
// host-cached smoothing matrices (A_hg @ D @ A_wg^T for the optional token map D); only the non-zero band
// of each row of A is visited.
#include <omp.h>
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "aminet/score_map.h"

namespace aminet {
namespace cpu {
namespace {

constexpr int64_t kCellChunk = 256;  // cells per task: 4 sums x 256 floats = 4 KB of accumulators in L1

// Grow-only workspace of the calling thread: no allocation per call once warm, and two Python threads
// calling at once (the GIL is released) never share it.
std::vector<float>& workspace() {
  static thread_local std::vector<float> buf;
  return buf;
}
std::vector<int64_t>& band_workspace() {
  static thread_local std::vector<int64_t> buf;
  return buf;
}

// [lo, hi) of the non-zero entries of each row of a (rows, cols) matrix (lo = hi = 0 for a zero row).
void row_bands(const float* a, int64_t rows, int64_t cols, int64_t* lo, int64_t* hi) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t first = cols, last = -1;
    for (int64_t c = 0; c < cols; ++c) {
      if (a[r * cols + c] != 0.0f) {
        first = std::min(first, c);
        last = c;
      }
    }
    lo[r] = last < 0 ? 0 : first;
    hi[r] = last < 0 ? 0 : last + 1;
  }
}

// t (W) = m (w) @ A_w^T, with at = A_w^T (w, W) row-major and [lo[j], hi[j]) the band of its row j.
void row_times(const float* m, int64_t w, const float* at, const int64_t* lo, const int64_t* hi, int64_t W, float* t) {
  for (int64_t q = 0; q < W; ++q) t[q] = 0.0f;
  for (int64_t j = 0; j < w; ++j) {
    const float mj = m[j];
    const float* arow = at + j * W;
    for (int64_t q = lo[j]; q < hi[j]; ++q) t[q] += mj * arow[q];
  }
}

// A_w^T (w, W) from A_w (W, w), and the band of each of its rows.
void transpose_with_bands(const float* a_w, int64_t W, int64_t w, float* at, int64_t* lo, int64_t* hi) {
  for (int64_t q = 0; q < W; ++q)
    for (int64_t j = 0; j < w; ++j) at[j * W + q] = a_w[q * w + j];
  row_bands(at, w, W, lo, hi);
}

template <class T>
void score_map_impl(const T* feat, const T* recon, int64_t B, int64_t C, int64_t h, int64_t w, const float* a_h,
                    int64_t H, const float* a_w, int64_t W, const float* token_map, int64_t gh, int64_t gw,
                    const float* a_hg, const float* a_wg, float token_weight, bool use_max, float* amap,
                    float* score) {
  const int64_t hw = h * w;
  const int nthreads = omp_get_max_threads();
  if (token_map == nullptr) gh = gw = 0;
  // workspace: M (B, 2, h, w) | T (B, 2, h, W) | A_w^T (w, W) | two rows per thread (W each): S1 and the
  // token term | T_g = D @ A_wg^T (B, gh, W) | A_wg^T (gw, W)
  std::vector<float>& ws = workspace();
  const size_t need =
      (size_t)(B * 2 * hw + B * 2 * h * W + w * W + (int64_t)nthreads * 2 * W + B * gh * W + gw * W);
  if (ws.size() < need) ws.resize(need);
  float* maps = ws.data();
  float* rows = maps + B * 2 * hw;
  float* a_wt = rows + B * 2 * h * W;
  float* thread_rows = a_wt + w * W;
  float* token_rows = thread_rows + (int64_t)nthreads * 2 * W;
  float* a_wgt = token_rows + B * gh * W;
  std::vector<int64_t>& bw = band_workspace();
  if (bw.size() < (size_t)(2 * (2 * H + w + gw))) bw.resize(2 * (2 * H + w + gw));
  int64_t* h_lo = bw.data();
  int64_t* h_hi = h_lo + H;
  int64_t* wt_lo = h_hi + H;
  int64_t* wt_hi = wt_lo + w;
  int64_t* hg_lo = wt_hi + w;
  int64_t* hg_hi = hg_lo + H;
  int64_t* wgt_lo = hg_hi + H;
  int64_t* wgt_hi = wgt_lo + gw;
  row_bands(a_h, H, h, h_lo, h_hi);
  transpose_with_bands(a_w, W, w, a_wt, wt_lo, wt_hi);
  if (token_map != nullptr) {
    row_bands(a_hg, H, gh, hg_lo, hg_hi);
    transpose_with_bands(a_wg, W, gw, a_wgt, wgt_lo, wgt_hi);
  }

  const int64_t chunks = (hw + kCellChunk - 1) / kCellChunk;
#pragma omp parallel num_threads(nthreads)
  {
    // 1. per-cell mse and 1 - cos over channels; NCHW, so the cells of one channel are contiguous
#pragma omp for schedule(static)
    for (int64_t n = 0; n < B * chunks; ++n) {
      const int64_t b = n / chunks, c0 = (n % chunks) * kCellChunk;
      const int64_t len = std::min(kCellChunk, hw - c0);
      float d2[kCellChunk] = {}, ff[kCellChunk] = {}, rr[kCellChunk] = {}, fr[kCellChunk] = {};
      for (int64_t ch = 0; ch < C; ++ch) {
        const T* f = feat + (b * C + ch) * hw + c0;
        const T* r = recon + (b * C + ch) * hw + c0;
        for (int64_t k = 0; k < len; ++k) cell_accumulate(d2[k], ff[k], rr[k], fr[k], to_float(f[k]), to_float(r[k]));
      }
      float* mse = maps + (b * 2) * hw + c0;
      float* cosd = maps + (b * 2 + 1) * hw + c0;
      for (int64_t k = 0; k < len; ++k) {
        mse[k] = cell_mse(d2[k], C);
        cosd[k] = cell_cos_distance(fr[k], ff[k], rr[k]);
      }
    }
    // 2. T = M @ A_w^T and T_g = D @ A_wg^T, row by row (rows n >= m_rows are D's)
    const int64_t m_rows = B * 2 * h;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < m_rows + B * gh; ++n) {
      if (n < m_rows)
        row_times(maps + n * w, w, a_wt, wt_lo, wt_hi, W, rows + n * W);
      else
        row_times(token_map + (n - m_rows) * gw, gw, a_wgt, wgt_lo, wgt_hi, W, token_rows + (n - m_rows) * W);
    }
    // 3. amap row o = (A_h[o] @ T_mse) * (A_h[o] @ T_cos) [+ token_weight * A_hg[o] @ T_g], over the bands
    float* s1 = thread_rows + (int64_t)omp_get_thread_num() * 2 * W;
    float* sg = s1 + W;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < B * H; ++n) {
      const int64_t b = n / H, o = n % H;
      const float* t0 = rows + (b * 2) * h * W;
      const float* t1 = rows + (b * 2 + 1) * h * W;
      float* s0 = amap + n * W;
      for (int64_t q = 0; q < W; ++q) s0[q] = s1[q] = 0.0f;
      for (int64_t i = h_lo[o]; i < h_hi[o]; ++i) {
        const float a = a_h[o * h + i];
        const float* r0 = t0 + i * W;
        const float* r1 = t1 + i * W;
        for (int64_t q = 0; q < W; ++q) {
          s0[q] += a * r0[q];
          s1[q] += a * r1[q];
        }
      }
      for (int64_t q = 0; q < W; ++q) s0[q] *= s1[q];
      if (token_map == nullptr) continue;
      const float* tg = token_rows + b * gh * W;
      for (int64_t q = 0; q < W; ++q) sg[q] = 0.0f;
      for (int64_t i = hg_lo[o]; i < hg_hi[o]; ++i) {
        const float a = a_hg[o * gh + i];
        const float* rg = tg + i * W;
        for (int64_t q = 0; q < W; ++q) sg[q] += a * rg[q];
      }
      for (int64_t q = 0; q < W; ++q) s0[q] = add_token_term(s0[q], token_weight, sg[q]);
    }
    // 4. image score; the map-wide reduction runs in double (fp32 over 10^5 terms would drift)
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const float* m = amap + b * H * W;
      const int64_t n = H * W;
      if (use_max) {
        float best = m[0];
        for (int64_t k = 1; k < n; ++k) best = (m[k] > best || m[k] != m[k]) ? m[k] : best;
        score[b] = best;
      } else {
        double sum = 0.0;
        for (int64_t k = 0; k < n; ++k) sum += m[k];
        const double mean = sum / (double)n;
        double sq = 0.0;
        for (int64_t k = 0; k < n; ++k) sq += ((double)m[k] - mean) * ((double)m[k] - mean);
        score[b] = (float)sqrt(sq / (double)n);
      }
    }
  }
}

}  // namespace

// feat, recon (B, C, h, w) C-contiguous float32, or IEEE fp16 when `half`; a_h (H, h) and a_w (W, w) are
// smoothing_matrix(h, H, sigma) and smoothing_matrix(w, W, sigma). token_map (B, gh, gw) float32 or
// nullptr (no token term, gh, gw, a_hg, a_wg unread), with a_hg (H, gh) = smoothing_matrix(gh, H, sigma)
// and a_wg (W, gw) = smoothing_matrix(gw, W, sigma). Writes amap (B, H, W) and score (B,).
void score_map(const void* feat, const void* recon, bool half, int64_t B, int64_t C, int64_t h, int64_t w,
               const float* a_h, int64_t H, const float* a_w, int64_t W, const float* token_map, int64_t gh,
               int64_t gw, const float* a_hg, const float* a_wg, float token_weight, bool use_max, float* amap,
               float* score) {
  if (half) {
    score_map_impl(static_cast<const half_t*>(feat), static_cast<const half_t*>(recon), B, C, h, w, a_h, H, a_w, W,
                   token_map, gh, gw, a_hg, a_wg, token_weight, use_max, amap, score);
  } else {
    score_map_impl(static_cast<const float*>(feat), static_cast<const float*>(recon), B, C, h, w, a_h, H, a_w, W,
                   token_map, gh, gw, a_hg, a_wg, token_weight, use_max, amap, score);
  }
}

}  // namespace cpu
}  // namespace aminet
