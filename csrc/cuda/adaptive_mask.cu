// CUDA kernels of adaptive_mask (truth: aminet_edge/ops/reference.py::adaptive_mask; math:
// csrc/include/aminet/adaptive_mask.h; C API: aminet_cuda.h). Also the library-wide entry points
// (version, device count, error string).
//
// Kernel 1, one block per (image, tile of 16 tokens), 8 warps x 2 tokens: centres are visited in groups
// of 8 and D in tiles of 128; each group's centre tile is staged in shared memory (8 x 128 floats = 4 KB,
// whatever P and D), tokens are read straight from global memory (coalesced, lane = element) and every
// lane keeps its partial sums for 2 tokens x 8 centres in registers, reduced across the warp once per
// group. The token and centre norms come first, in their own warp-strided passes (the unit-vector
// difference of 1 - cos needs them inside the fused pass). Kernel 2, one block per image: cluster statistics by block reductions, then the mask.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "aminet/adaptive_mask.h"
#include "aminet_cuda.h"

namespace aminet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTokPerWarp = 2;
constexpr int kTokTile = kWarps * kTokPerWarp;  // tokens per block
constexpr int kCenGroup = 8;                    // centres per pass
constexpr int kDTile = 128;                     // elements of D per shared tile
constexpr int kPerLane = kDTile / 32;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    assign_kernel(const T* __restrict__ tokens, const T* __restrict__ centers, int64_t L, int64_t P, int64_t D,
                  float* __restrict__ min_dist, int64_t* __restrict__ assign) {
  __shared__ float cen_tile[kCenGroup][kDTile];
  const int64_t b = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t l0 = (int64_t)blockIdx.x * kTokTile + warp * kTokPerWarp;
  const T* tok = tokens + (b * L) * D;
  const T* cen = centers + (b * P) * D;

  float best[kTokPerWarp];
  int64_t best_idx[kTokPerWarp];
#pragma unroll
  for (int j = 0; j < kTokPerWarp; ++j) {
    best[j] = 0.0f;
    best_idx[j] = 0;
  }

  // reciprocal token norms first (the unit-vector difference needs them in the fused pass)
  float it[kTokPerWarp];
#pragma unroll
  for (int j = 0; j < kTokPerWarp; ++j) {
    const int64_t l = l0 + j;
    float tt = 0.0f;
    if (l < L) {  // warp-uniform
      for (int64_t d = lane; d < D; d += 32) {
        const float t = to_float(tok[l * D + d]);
        tt += t * t;
      }
    }
    it[j] = inv_norm(warp_sum(tt));
  }

  for (int64_t p0 = 0; p0 < P; p0 += kCenGroup) {
    // reciprocal norms of this group's centres, warp-wide (every warp computes the same values)
    float ic[kCenGroup];
#pragma unroll
    for (int g = 0; g < kCenGroup; ++g) {
      float cc = 0.0f;
      if (p0 + g < P) {
        for (int64_t d = lane; d < D; d += 32) {
          const float c = to_float(cen[(p0 + g) * D + d]);
          cc += c * c;
        }
      }
      ic[g] = inv_norm(warp_sum(cc));
    }
    float d2[kTokPerWarp][kCenGroup], u2[kTokPerWarp][kCenGroup];
#pragma unroll
    for (int j = 0; j < kTokPerWarp; ++j) {
#pragma unroll
      for (int g = 0; g < kCenGroup; ++g) d2[j][g] = u2[j][g] = 0.0f;
    }

    for (int64_t d0 = 0; d0 < D; d0 += kDTile) {
      __syncthreads();  // the previous tile is consumed
      for (int i = threadIdx.x; i < kCenGroup * kDTile; i += kThreads) {
        const int g = i / kDTile, dd = i % kDTile;
        const int64_t p = p0 + g, d = d0 + dd;
        // zero padding contributes nothing to either sum (token padding is zero too)
        cen_tile[g][dd] = (p < P && d < D) ? to_float(cen[p * D + d]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kTokPerWarp; ++j) {
        const int64_t l = l0 + j;
        if (l >= L) break;  // warp-uniform
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int dd = lane + 32 * k;
          const int64_t d = d0 + dd;
          const float t = d < D ? to_float(tok[l * D + d]) : 0.0f;
#pragma unroll
          for (int g = 0; g < kCenGroup; ++g) pair_accumulate(d2[j][g], u2[j][g], t, cen_tile[g][dd], it[j], ic[g]);
        }
      }
    }

#pragma unroll
    for (int j = 0; j < kTokPerWarp; ++j) {
#pragma unroll
      for (int g = 0; g < kCenGroup; ++g) {
        const float dist = pair_distance(warp_sum(d2[j][g]), warp_sum(u2[j][g]));
        if (p0 + g < P) argmin_update(best[j], best_idx[j], dist, p0 + g);
      }
    }
  }

  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kTokPerWarp; ++j) {
      const int64_t l = l0 + j;
      if (l < L) {
        min_dist[b * L + l] = best[j];
        assign[b * L + l] = best_idx[j];
      }
    }
  }
}

// One block per image; P cluster passes of three block reductions each (P and L are small).
__global__ void __launch_bounds__(kThreads)
    mask_kernel(const float* __restrict__ min_dist, const int64_t* __restrict__ assign, int64_t L, int64_t P,
                float lam, uint8_t* __restrict__ mask) {
  __shared__ float scratch[33];
  const int64_t b = blockIdx.x;
  const float* dist = min_dist + b * L;
  const int64_t* asg = assign + b * L;
  uint8_t* msk = mask + b * L;
  for (int64_t p = 0; p < P; ++p) {
    float sum = 0.0f, count = 0.0f;
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
      if (asg[l] == p) {
        sum += dist[l];
        count += 1.0f;
      }
    }
    sum = block_sum(sum, scratch);
    count = block_sum(count, scratch);
    if (count == 0.0f) continue;  // block-uniform
    const float mean = cluster_mean(sum, count);
    float sq_dev = 0.0f;
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
      if (asg[l] == p) {
        const float dev = dist[l] - mean;
        sq_dev += dev * dev;
      }
    }
    sq_dev = block_sum(sq_dev, scratch);
    const float bound = cluster_bound(mean, sq_dev, count, lam);
    for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
      if (asg[l] == p) msk[l] = token_masked(dist[l], bound, count) ? 1 : 0;
    }
  }
}

template <typename T>
cudaError_t launch(const void* tokens, const void* centers, int64_t B, int64_t L, int64_t P, int64_t D, float lam,
                   uint8_t* mask, float* min_dist, int64_t* assign, cudaStream_t stream) {
  const dim3 grid((unsigned)((L + kTokTile - 1) / kTokTile), (unsigned)B);
  assign_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(tokens), static_cast<const T*>(centers), L,
                                                   P, D, min_dist, assign);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  mask_kernel<<<(unsigned)B, kThreads, 0, stream>>>(min_dist, assign, L, P, lam, mask);
  return cudaGetLastError();
}

}  // namespace
}  // namespace aminet

extern "C" {

int aminet_cuda_api_version(void) { return AMINET_CUDA_API_VERSION; }

int aminet_cuda_device_count(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) *count = 0;
  return (int)err;
}

const char* aminet_cuda_error_string(int error) { return cudaGetErrorString((cudaError_t)error); }

int aminet_adaptive_mask(const void* tokens, const void* centers, int dtype, int64_t B, int64_t L, int64_t P,
                         int64_t D, float lam, uint8_t* mask, float* min_dist, int64_t* assign, void* stream) {
  if (B < 0 || L < 0 || P < 1 || D < 1 || B > 65535 || (L + aminet::kTokTile - 1) / aminet::kTokTile > 0x7fffffff)
    return (int)cudaErrorInvalidValue;
  if (B == 0 || L == 0) return (int)cudaSuccess;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case AMINET_DTYPE_FLOAT32:
      return (int)aminet::launch<float>(tokens, centers, B, L, P, D, lam, mask, min_dist, assign, s);
    case AMINET_DTYPE_FLOAT16:
      return (int)aminet::launch<__half>(tokens, centers, B, L, P, D, lam, mask, min_dist, assign, s);
    default:
      return (int)cudaErrorInvalidValue;
  }
}

}  // extern "C"
