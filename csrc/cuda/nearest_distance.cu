// CUDA kernels of nearest_distance (truth: aminet_edge/ops/reference.py::nearest_distance; math:
// csrc/include/aminet/nearest_distance.h; C API: aminet_cuda.h).
//
// Kernel 1, one block per (tile of 64 queries, chunk of the bank), 256 threads as 16 x 16, each owning
// 4 queries x 4 bank rows (queries ty + 16 i, rows tx + 16 j): the bank chunk is visited in tiles of 64
// rows and C in slices of 16; each slice of queries and rows is staged transposed in shared memory
// (2 x 16 x 68 floats = 8.5 KB), every thread accumulates its 4 x 4 dot products and its 4 rows' squared
// norms as FMA chains in registers (so a score does not depend on the tiling or the number of chunks),
// then keeps a running (score, row) per query over its rows (strict <: lowest row on ties). The 16
// threads sharing a query reduce by shuffles (lower row on equal scores) and write one partial per chunk.
// Kernel 2, one warp per query: the chunks' partials reduced in bank order, then the exact ||q - b|| of
// the picked row (lanes over C). Never the (N, M) matrix; the bank is read as stored (fp16 widened).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "aminet/nearest_distance.h"
#include "aminet_cuda.h"

namespace aminet {
namespace {

constexpr int kThreads = 256;
constexpr int kTileQ = 64;  // queries per block
constexpr int kTileM = 64;  // bank rows per tile
constexpr int kSlice = 16;  // elements of C per shared slice
constexpr int kPad = 4;     // row padding of the shared slices (bank conflicts of the transposed stores)
constexpr int kPer = 4;     // queries and rows per thread
// Blocks to aim for per call: about two waves on the largest GPUs (132 SMs); the bank is split into as
// many chunks as needed to reach it, so one image's tokens (256 queries, 4 tiles) still fill the GPU.
constexpr int64_t kTargetBlocks = 256;
constexpr int kFinishWarps = 8;

struct Plan {
  int64_t tiles, chunks, chunk_rows;
};

Plan plan(int64_t N, int64_t M) {
  Plan p;
  p.tiles = (N + kTileQ - 1) / kTileQ;
  const int64_t bank_tiles = (M + kTileM - 1) / kTileM;
  int64_t chunks = (kTargetBlocks + p.tiles - 1) / p.tiles;
  chunks = chunks < 1 ? 1 : (chunks > bank_tiles ? bank_tiles : chunks);
  const int64_t tiles_per_chunk = (bank_tiles + chunks - 1) / chunks;
  p.chunk_rows = tiles_per_chunk * kTileM;
  p.chunks = (M + p.chunk_rows - 1) / p.chunk_rows;  // no empty chunk
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    search_kernel(const float* __restrict__ queries, const T* __restrict__ bank, int64_t N, int64_t M, int64_t C,
                  int64_t chunk_rows, float* __restrict__ part_score, int32_t* __restrict__ part_index) {
  __shared__ float qs[kSlice][kTileQ + kPad];
  __shared__ float bs[kSlice][kTileM + kPad];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t q0 = (int64_t)blockIdx.x * kTileQ;
  const int64_t chunk = blockIdx.y;
  const int64_t row_begin = chunk * chunk_rows;
  const int64_t row_end = row_begin + chunk_rows < M ? row_begin + chunk_rows : M;

  float best[kPer];
  int32_t best_idx[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    best[i] = INFINITY;
    best_idx[i] = (int32_t)row_begin;
  }

  for (int64_t m0 = row_begin; m0 < row_end; m0 += kTileM) {
    float acc[kPer][kPer], norm[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      norm[j] = 0.0f;
#pragma unroll
      for (int i = 0; i < kPer; ++i) acc[i][j] = 0.0f;
    }
    for (int64_t c0 = 0; c0 < C; c0 += kSlice) {
      __syncthreads();  // the previous slice is consumed
      // 64 x 16 elements of each, 4 per thread; a half-warp reads 16 consecutive elements of one row
#pragma unroll
      for (int r = 0; r < (kTileQ * kSlice) / kThreads; ++r) {
        const int e = threadIdx.x + r * kThreads;
        const int row = e / kSlice, k = e % kSlice;
        const int64_t c = c0 + k, q = q0 + row, m = m0 + row;
        qs[k][row] = (q < N && c < C) ? queries[q * C + c] : 0.0f;  // zero padding adds nothing
        bs[k][row] = (m < row_end && c < C) ? to_float(bank[m * C + c]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kSlice; ++k) {
        float a[kPer], b[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) a[i] = qs[k][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          b[j] = bs[k][tx + 16 * j];
          norm[j] = fmaf(b[j], b[j], norm[j]);
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
#pragma unroll
          for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
      }
    }
    // this thread's rows in increasing order, tiles in increasing order: strict < keeps the lowest row
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t m = m0 + tx + 16 * j;
      if (m >= row_end) break;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const float s = nearest_score(norm[j], acc[i][j]);
        if (s < best[i]) {
          best[i] = s;
          best_idx[i] = (int32_t)m;
        }
      }
    }
  }
  // the 16 threads of a query (consecutive lanes tx = 0..15): lower score, then lower row
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
      const float s = __shfl_xor_sync(0xffffffffu, best[i], offset, 16);
      const int32_t m = __shfl_xor_sync(0xffffffffu, best_idx[i], offset, 16);
      nearest_lane_reduce(best[i], best_idx[i], s, m);
    }
    const int64_t q = q0 + ty + 16 * i;
    if (tx == 0 && q < N) {
      part_score[chunk * N + q] = best[i];
      part_index[chunk * N + q] = best_idx[i];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kFinishWarps * 32)
    finish_kernel(const float* __restrict__ queries, const T* __restrict__ bank, int64_t N, int64_t C,
                  int64_t chunks, const float* __restrict__ part_score, const int32_t* __restrict__ part_index,
                  float* __restrict__ out, int64_t* __restrict__ index) {
  const int lane = threadIdx.x & 31;
  const int64_t q = (int64_t)blockIdx.x * kFinishWarps + (threadIdx.x >> 5);
  if (q >= N) return;  // warp-uniform
  float best = part_score[q];
  int32_t row = part_index[q];
  for (int64_t s = 1; s < chunks; ++s) {
    const float score = part_score[s * N + q];
    if (score < best) {  // chunks in bank order: strict < keeps the lowest row on ties
      best = score;
      row = part_index[s * N + q];
    }
  }
  const float* qr = queries + q * C;
  const T* br = bank + (int64_t)row * C;
  float d2 = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float d = qr[c] - to_float(br[c]);
    d2 = fmaf(d, d, d2);
  }
  d2 = warp_sum(d2);
  if (lane == 0) {
    out[q] = sqrtf(d2);
    if (index) index[q] = row;
  }
}

size_t workspace_bytes(const Plan& p, int64_t N) {
  return (size_t)(p.chunks * N) * (sizeof(float) + sizeof(int32_t));
}

template <typename T>
cudaError_t launch(const float* queries, const void* bank, int64_t N, int64_t M, int64_t C, float* out,
                   int64_t* index, void* workspace, cudaStream_t stream) {
  const Plan p = plan(N, M);
  float* part_score = static_cast<float*>(workspace);
  int32_t* part_index = reinterpret_cast<int32_t*>(part_score + p.chunks * N);
  const T* b = static_cast<const T*>(bank);
  search_kernel<T><<<dim3((unsigned)p.tiles, (unsigned)p.chunks), kThreads, 0, stream>>>(
      queries, b, N, M, C, p.chunk_rows, part_score, part_index);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const unsigned blocks = (unsigned)((N + kFinishWarps - 1) / kFinishWarps);
  finish_kernel<T><<<blocks, kFinishWarps * 32, 0, stream>>>(queries, b, N, C, p.chunks, part_score, part_index,
                                                             out, index);
  return cudaGetLastError();
}

}  // namespace
}  // namespace aminet

extern "C" {

size_t aminet_nearest_distance_workspace_bytes(int64_t N, int64_t M) {
  if (N < 1 || M < 1) return 0;
  return aminet::workspace_bytes(aminet::plan(N, M), N);
}

int aminet_nearest_distance(const float* queries, const void* bank, int dtype, int64_t N, int64_t M, int64_t C,
                            float* out, int64_t* index, void* workspace, void* stream) {
  if (N < 0 || M < 1 || C < 1 || M > 0x7fffffff) return (int)cudaErrorInvalidValue;
  if (N == 0) return (int)cudaSuccess;
  const aminet::Plan p = aminet::plan(N, M);
  if (p.tiles > 0x7fffffff || p.chunks > 65535) return (int)cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case AMINET_DTYPE_FLOAT32:
      return (int)aminet::launch<float>(queries, bank, N, M, C, out, index, workspace, s);
    case AMINET_DTYPE_FLOAT16:
      return (int)aminet::launch<__half>(queries, bank, N, M, C, out, index, workspace, s);
    default:
      return (int)cudaErrorInvalidValue;
  }
}

}  // extern "C"
