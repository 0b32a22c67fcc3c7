// CUDA kernels of score_map (truth: aminet_edge/ops/reference.py::score_map; math:
// csrc/include/aminet/score_map.h; C API: aminet_cuda.h).
//
// 1. cell_kernel: per-cell mse and 1 - cos; block = 32 cells x 8 channel groups (coalesced 128-byte rows
//    of one channel per warp), partial sums combined in 4 KB of shared memory. Memory-bound: it reads
//    feat and recon once, which is nearly all the op's traffic.
// 2. smooth_kernel (twice): the separable upsample + blur as A_h @ M, then (U_mse @ A_w^T) * (U_cos @ A_w^T),
//    32 x 32 output tiles with 32-deep shared tiles (17 KB for the fused product). With a token map D, twice
//    more: U_g = A_hg @ D, then amap += token_weight * U_g @ A_wg^T.
// 3. image_score_kernel: one block per image, two-pass std (or max) by block reductions.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "aminet/score_map.h"
#include "aminet_cuda.h"

namespace aminet {
namespace {

constexpr int kCells = 32;        // cells per block (one warp row)
constexpr int kChanGroups = 8;    // channel groups per block
constexpr int kTile = 32;         // output tile and K depth of smooth_kernel
constexpr int kThreads = 256;

// What smooth_kernel writes: Y = L @ R, Y = (L0 @ R0) * (L1 @ R1), or Y += alpha * (L @ R) (add_token_term).
enum class Epilogue { kStore, kProduct, kAddScaled };

template <typename T>
__global__ void __launch_bounds__(kCells* kChanGroups)
    cell_kernel(const T* __restrict__ feat, const T* __restrict__ recon, int64_t C, int64_t hw,
                float* __restrict__ maps) {
  __shared__ float part[4][kChanGroups][kCells];
  const int64_t b = blockIdx.y;
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t cell = (int64_t)blockIdx.x * kCells + x;
  float d2 = 0.0f, ff = 0.0f, rr = 0.0f, fr = 0.0f;
  if (cell < hw) {
    const T* f = feat + b * C * hw + cell;
    const T* r = recon + b * C * hw + cell;
#pragma unroll 4
    for (int64_t ch = y; ch < C; ch += kChanGroups)
      cell_accumulate(d2, ff, rr, fr, to_float(f[ch * hw]), to_float(r[ch * hw]));
  }
  part[0][y][x] = d2;
  part[1][y][x] = ff;
  part[2][y][x] = rr;
  part[3][y][x] = fr;
  __syncthreads();
  if (y == 0 && cell < hw) {
    for (int g = 1; g < kChanGroups; ++g) {
      d2 += part[0][g][x];
      ff += part[1][g][x];
      rr += part[2][g][x];
      fr += part[3][g][x];
    }
    maps[(b * 2) * hw + cell] = cell_mse(d2, C);
    maps[(b * 2 + 1) * hw + cell] = cell_cos_distance(fr, ff, rr);
  }
}

// Y[z] = Lm[z] @ Rm[z] (M x K times K x N), row-major Lm (row stride ld_l) and, for kRTrans == false,
// row-major Rm (K x N, row stride ld_r), else Rm read as the transpose of a row-major (N x K) matrix.
// Batch z starts at z * bs_*; with Epilogue::kProduct, Y[z] = (L0 @ R0) * (L1 @ R1) where L1 / R1 start
// pair_l / pair_r elements after L0 / R0; with kAddScaled, Y[z] += alpha * (L @ R). Block (32 x 8) computes a
// 32 x 32 tile, 4 rows per thread; both tiles are loaded along their contiguous axis, so global reads are
// coalesced.
template <Epilogue kEpilogue, bool kRTrans>
__global__ void __launch_bounds__(kThreads)
    smooth_kernel(const float* __restrict__ lm, int64_t bs_l, int64_t pair_l, int64_t ld_l,
                  const float* __restrict__ rm, int64_t bs_r, int64_t pair_r, int64_t ld_r, int M, int N, int K,
                  float alpha, float* __restrict__ y, int64_t bs_y) {
  constexpr int kPairs = kEpilogue == Epilogue::kProduct ? 2 : 1;
  __shared__ float sl[kPairs][kTile][kTile + 1];
  __shared__ float sr[kPairs][kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t z = blockIdx.z;
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  float acc[kPairs][4];
#pragma unroll
  for (int s = 0; s < kPairs; ++s)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[s][q] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kTile) {
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kPairs; ++s) {
      const float* l = lm + z * bs_l + s * pair_l;
      const float* r = rm + z * bs_r + s * pair_r;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int a = ty + 8 * q;  // tile row; tx runs along the contiguous axis
        const int lm_r = m0 + a, lm_k = k0 + tx;
        sl[s][a][tx] = (lm_r < M && lm_k < K) ? l[(int64_t)lm_r * ld_l + lm_k] : 0.0f;
        if (kRTrans) {  // element (k, n) = r[n * ld_r + k]: contiguous along k
          const int rn = n0 + a, rk = k0 + tx;
          sr[s][tx][a] = (rk < K && rn < N) ? r[(int64_t)rn * ld_r + rk] : 0.0f;
        } else {  // element (k, n) = r[k * ld_r + n]: contiguous along n
          const int rk = k0 + a, rn = n0 + tx;
          sr[s][a][tx] = (rk < K && rn < N) ? r[(int64_t)rk * ld_r + rn] : 0.0f;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kPairs; ++s) {
#pragma unroll 8
      for (int k = 0; k < kTile; ++k) {
        const float rv = sr[s][k][tx];
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[s][q] += sl[s][ty + 8 * q][k] * rv;
      }
    }
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int m = m0 + ty + 8 * q, n = n0 + tx;
    if (m >= M || n >= N) continue;
    float* out = y + z * bs_y + (int64_t)m * N + n;
    if (kEpilogue == Epilogue::kAddScaled)
      *out = add_token_term(*out, alpha, acc[0][q]);
    else
      *out = kEpilogue == Epilogue::kProduct ? acc[0][q] * acc[kPairs - 1][q] : acc[0][q];
  }
}

__global__ void __launch_bounds__(kThreads)
    image_score_kernel(const float* __restrict__ amap, int64_t n, int use_max, float* __restrict__ score) {
  __shared__ float scratch[33];
  const float* m = amap + (int64_t)blockIdx.x * n;
  if (use_max) {
    float best = -INFINITY;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) best = (m[k] > best || m[k] != m[k]) ? m[k] : best;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, best, offset);
      best = (o > best || o != o) ? o : best;
    }
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = scratch[0];
      for (int w = 1; w < (int)(blockDim.x >> 5); ++w) total = (scratch[w] > total || scratch[w] != scratch[w]) ? scratch[w] : total;
      score[blockIdx.x] = total;
    }
    return;
  }
  float sum = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sum += m[k];
  const float mean = block_sum(sum, scratch) / (float)n;
  float sq = 0.0f;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const float dev = m[k] - mean;
    sq += dev * dev;
  }
  sq = block_sum(sq, scratch);
  if (threadIdx.x == 0) score[blockIdx.x] = population_std(sq, n);
}

unsigned ceil_div(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

template <typename T>
cudaError_t launch(const void* feat, const void* recon, int64_t B, int64_t C, int64_t h, int64_t w, const float* a_h,
                   int64_t H, const float* a_w, int64_t W, const float* token_map, int64_t gh, int64_t gw,
                   const float* a_hg, const float* a_wg, float token_weight, int image_score, float* amap,
                   float* score, float* ws, cudaStream_t stream) {
  const int64_t hw = h * w;
  float* maps = ws;                          // (B, 2, h, w): mse, cosd
  float* rows = ws + B * 2 * hw;             // (B, 2, H, w): A_h @ M
  float* token_rows = rows + B * 2 * H * w;  // (B, H, gw): A_hg @ D
  const dim3 tile(kTile, 8);
  cell_kernel<T><<<dim3(ceil_div(hw, kCells), (unsigned)B), dim3(kCells, kChanGroups), 0, stream>>>(
      static_cast<const T*>(feat), static_cast<const T*>(recon), C, hw, maps);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // U[z] = A_h (H x h) @ M[z] (h x w), z = (b, map)
  smooth_kernel<Epilogue::kStore, false><<<dim3(ceil_div(w, kTile), ceil_div(H, kTile), (unsigned)(B * 2)), tile, 0,
                                           stream>>>(a_h, 0, 0, h, maps, hw, 0, w, (int)H, (int)w, (int)h, 0.0f, rows,
                                                     H * w);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // amap[b] = (U[b, mse] @ A_w^T) * (U[b, cos] @ A_w^T); A_w^T is A_w (W x w) read transposed
  smooth_kernel<Epilogue::kProduct, true><<<dim3(ceil_div(W, kTile), ceil_div(H, kTile), (unsigned)B), tile, 0,
                                            stream>>>(rows, 2 * H * w, H * w, w, a_w, 0, 0, w, (int)H, (int)W, (int)w,
                                                      0.0f, amap, H * W);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (token_map != nullptr) {
    // U_g[b] = A_hg (H x gh) @ D[b] (gh x gw), then amap[b] += token_weight * U_g[b] @ A_wg^T
    smooth_kernel<Epilogue::kStore, false><<<dim3(ceil_div(gw, kTile), ceil_div(H, kTile), (unsigned)B), tile, 0,
                                             stream>>>(a_hg, 0, 0, gh, token_map, gh * gw, 0, gw, (int)H, (int)gw,
                                                       (int)gh, 0.0f, token_rows, H * gw);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    smooth_kernel<Epilogue::kAddScaled, true><<<dim3(ceil_div(W, kTile), ceil_div(H, kTile), (unsigned)B), tile, 0,
                                                stream>>>(token_rows, H * gw, 0, gw, a_wg, 0, 0, gw, (int)H, (int)W,
                                                          (int)gw, token_weight, amap, H * W);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  image_score_kernel<<<(unsigned)B, kThreads, 0, stream>>>(amap, H * W, image_score == AMINET_SCORE_MAX, score);
  return cudaGetLastError();
}

}  // namespace
}  // namespace aminet

extern "C" {

int aminet_smoothing_matrix(int64_t in_size, int64_t out_size, double sigma, float* out) {
  return aminet::smoothing_matrix(in_size, out_size, sigma, out) == 0 ? (int)cudaSuccess : (int)cudaErrorInvalidValue;
}

size_t aminet_score_map_workspace_bytes(int64_t B, int64_t h, int64_t w, int64_t H, int64_t gw) {
  return (size_t)(B * 2 * h * w + B * 2 * H * w + B * H * gw) * sizeof(float);
}

int aminet_score_map(const void* feat, const void* recon, int dtype, int64_t B, int64_t C, int64_t h, int64_t w,
                     const float* a_h, int64_t H, const float* a_w, int64_t W, int image_score, const float* token_map,
                     int64_t gh, int64_t gw, const float* a_hg, const float* a_wg, float token_weight, float* amap,
                     float* score, void* workspace, void* stream) {
  if (B < 1 || C < 1 || h < 1 || w < 1 || H < 1 || W < 1 || B > 32767 || workspace == nullptr ||
      h > 0x7fffffff || w > 0x7fffffff || H > 0x7fffffff || W > 0x7fffffff)
    return (int)cudaErrorInvalidValue;
  if (image_score != AMINET_SCORE_STD && image_score != AMINET_SCORE_MAX) return (int)cudaErrorInvalidValue;
  if (token_map != nullptr && (gh < 1 || gw < 1 || gh > 0x7fffffff || gw > 0x7fffffff || a_hg == nullptr ||
                               a_wg == nullptr || !isfinite(token_weight) || token_weight < 0.0f))
    return (int)cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  float* ws = static_cast<float*>(workspace);
  switch (dtype) {
    case AMINET_DTYPE_FLOAT32:
      return (int)aminet::launch<float>(feat, recon, B, C, h, w, a_h, H, a_w, W, token_map, gh, gw, a_hg, a_wg,
                                        token_weight, image_score, amap, score, ws, s);
    case AMINET_DTYPE_FLOAT16:
      return (int)aminet::launch<__half>(feat, recon, B, C, h, w, a_h, H, a_w, W, token_map, gh, gw, a_hg, a_wg,
                                         token_weight, image_score, amap, score, ws, s);
    default:
      return (int)cudaErrorInvalidValue;
  }
}

}  // extern "C"
