/* C API of libaminet_cuda.so: AMI-Net's fused ops on NVIDIA GPUs.
 *
 * Callers own all memory: every tensor argument is a raw device pointer (torch .data_ptr(), pycuda
 * DeviceAllocation, cuda-python CUdeviceptr), C-contiguous; `stream` is a cudaStream_t passed as void*
 * (torch.cuda.current_stream().cuda_stream, pycuda Stream.handle; NULL = legacy default stream).
 * Launches are asynchronous on `stream`; the return value is a cudaError_t as int (0 = success;
 * aminet_cuda_error_string names it). Semantics: aminet_edge/ops/reference.py; math shared with the CPU
 * kernels: csrc/include/aminet/{adaptive_mask,score_map,nearest_distance}.h. Built by CMakeLists.txt; loaded by
 * aminet_edge/ops/cuda.py through ctypes.
 */
#ifndef AMINET_CUDA_H_
#define AMINET_CUDA_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define AMINET_CUDA_EXPORT __declspec(dllexport)
#else
#define AMINET_CUDA_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* 2: aminet_score_map's optional token map, aminet_score_map_workspace_bytes' gw; 3: aminet_nearest_distance */
#define AMINET_CUDA_API_VERSION 3

/* input dtypes (tokens/centers, feat/recon); outputs are always float32 / uint8 (bool) / int64 */
#define AMINET_DTYPE_FLOAT32 0
#define AMINET_DTYPE_FLOAT16 1

#define AMINET_SCORE_STD 0 /* population std of the map (the authors' choice) */
#define AMINET_SCORE_MAX 1

AMINET_CUDA_EXPORT int aminet_cuda_api_version(void);

/* cudaGetDeviceCount; *count = 0 on failure (no driver / no GPU), the error is returned. */
AMINET_CUDA_EXPORT int aminet_cuda_device_count(int* count);

AMINET_CUDA_EXPORT const char* aminet_cuda_error_string(int error);

/* tokens (B, L, D), centers (B, P, D) of `dtype` -> mask (B, L) bool as uint8, min_dist (B, L) float32,
 * assign (B, L) int64. Two kernels: distances + argmin per (image, 16-token tile), then cluster
 * statistics and mask per image. */
AMINET_CUDA_EXPORT int aminet_adaptive_mask(const void* tokens, const void* centers, int dtype, int64_t B, int64_t L,
                                            int64_t P, int64_t D, float lam, uint8_t* mask, float* min_dist,
                                            int64_t* assign, void* stream);

/* Host function: the (out_size, in_size) row-major float32 smoothing matrix into host memory `out`
 * (reference.smoothing_matrix). Upload A_h = (H, h) and A_w = (W, w) (and A_hg = (H, gh), A_wg = (W, gw)
 * for a token map) once per (size, sigma) and reuse. */
AMINET_CUDA_EXPORT int aminet_smoothing_matrix(int64_t in_size, int64_t out_size, double sigma, float* out);

/* Device workspace aminet_score_map needs, in bytes; gw: the token map's width (0 without one). */
AMINET_CUDA_EXPORT size_t aminet_score_map_workspace_bytes(int64_t B, int64_t h, int64_t w, int64_t H, int64_t gw);

/* feat, recon (B, C, h, w) of `dtype`; a_h (H, h), a_w (W, w) float32 device smoothing matrices;
 * image_score AMINET_SCORE_STD or _MAX -> amap (B, H, W) float32, score (B,) float32.
 * token_map: NULL (no token term; gh, gw, a_hg, a_wg, token_weight unread) or a (B, gh, gw) float32 device
 * map, added as amap += token_weight * a_hg @ token_map[b] @ a_wg^T with a_hg (H, gh), a_wg (W, gw) the
 * device smoothing matrices at the token grid's sizes; token_weight finite and >= 0.
 * workspace: aminet_score_map_workspace_bytes(B, h, w, H, gw) bytes of device memory, 16-byte aligned. */
AMINET_CUDA_EXPORT int aminet_score_map(const void* feat, const void* recon, int dtype, int64_t B, int64_t C,
                                        int64_t h, int64_t w, const float* a_h, int64_t H, const float* a_w,
                                        int64_t W, int image_score, const float* token_map, int64_t gh, int64_t gw,
                                        const float* a_hg, const float* a_wg, float token_weight, float* amap,
                                        float* score, void* workspace, void* stream);

/* Device workspace aminet_nearest_distance needs for N queries against M bank rows, in bytes (0 when N or
 * M < 1); it grows with N (a partial result per query and bank chunk), never with N * M. */
AMINET_CUDA_EXPORT size_t aminet_nearest_distance_workspace_bytes(int64_t N, int64_t M);

/* queries (N, C) float32, bank (M, C) of `dtype` (1 <= M < 2^31) -> out (N,) float32: the distance of each
 * query to its nearest bank row (the row minimising ||b||^2 - 2 q.b, lowest index on ties, then the exact
 * ||q - b||), and, unless index is NULL, that row (N,) int64. The bank's squared norms are summed on the
 * fly: callers keep no per-bank state. workspace: aminet_nearest_distance_workspace_bytes(N, M) bytes of
 * device memory, 16-byte aligned. */
AMINET_CUDA_EXPORT int aminet_nearest_distance(const float* queries, const void* bank, int dtype, int64_t N, int64_t M,
                                               int64_t C, float* out, int64_t* index, void* workspace, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* AMINET_CUDA_H_ */
