// CPU kernel of nearest_distance (truth: aminet_edge/ops/reference.py::nearest_distance; math:
// csrc/include/aminet/nearest_distance.h).
//
// Fused and blocked, never the (N, M) score matrix. Work items are (group of kGroup queries, chunk of
// the bank), scheduled by OpenMP; the bank is split into chunks only as far as needed to give every
// thread work (B * L = 256 queries are one group). Per item, the bank is visited in strips of NR rows:
// a strip is widened to float32 (fp16 banks), transposed to (C, NR) and its squared norms summed
// (11-22 KB, stays in L1), then every MR-query panel of the group runs against it: an MR x NR block of
// dot products in registers, each a sequential FMA chain over C (so a score does not depend on the
// blocking or the thread count), and each query keeps a running (score, index) per lane of the strip.
// Items reduce their lanes per query (lowest index on ties); a final pass reduces the chunks in bank
// order and computes the exact distance to the picked row.
//
// Workspace (documented in nearest_distance.h, nearest_workspace_bytes): per thread one packed strip,
// one packed query group and its lane state; plus (N, chunks) partial results. Nothing scales with M * N.
//
// ISA: on x86-64 the work item is compiled three times (AVX-512, AVX2 + FMA, baseline SSE2) and the CPU
// picks at run time (__builtin_cpu_supports), so one build runs anywhere and uses the widest vectors
// present; elsewhere (aarch64 NEON) the baseline build is the vector build. AMINET_NEAREST_ISA=avx2 or
// baseline caps the choice (read once per process; for tests and comparisons). Measured on 1 Zen 4 core
// (C = 176): AVX-512 ~98 GFLOP/s, AVX2 ~90, SSE2 ~10 (bench/kernels.py has the op's timings).
#include <omp.h>
#include <stdint.h>

#include <string.h>

#include <algorithm>
#include <limits>
#include <cstdlib>
#include <string>
#include <vector>

#include "aminet/adaptive_mask.h"  // half_t, to_float
#include "aminet/nearest_distance.h"

#if defined(__GNUC__) && !defined(__clang__)
// The vector helpers are always inlined into the ISA-specific item functions: no vector crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"
// a * b + c as one FMA where the target has it (pybind11 builds in ISO C++ mode, where g++ defaults to
// -ffp-contract=off)
#pragma GCC optimize("fp-contract=fast")
#endif

namespace aminet {
namespace cpu {
namespace {

constexpr int64_t kGroup = 256;  // queries per work item: their packed copy (C = 176) is 176 KB, in L2

#if defined(__GNUC__)
#define AMINET_INLINE inline __attribute__((always_inline))
#else
#define AMINET_INLINE inline
#endif

// Strip `r0` of the bank -> pk (C, NR) float32, norms (NR,) (rows past M: zeros and +inf norm, so they
// never win).
template <int NR, class T>
AMINET_INLINE void pack_strip(const T* bank, int64_t M, int64_t C, int64_t r0, float* pk, float* norms) {
  const int64_t rows = std::min<int64_t>(NR, M - r0);
  for (int64_t j = 0; j < rows; ++j) {
    const T* row = bank + (r0 + j) * C;
    for (int64_t c = 0; c < C; ++c) pk[c * NR + j] = to_float(row[c]);
  }
  for (int64_t j = rows; j < NR; ++j)
    for (int64_t c = 0; c < C; ++c) pk[c * NR + j] = 0.0f;
  float acc[NR] = {};
  for (int64_t c = 0; c < C; ++c)
    for (int j = 0; j < NR; ++j) acc[j] += pk[c * NR + j] * pk[c * NR + j];
  for (int j = 0; j < NR; ++j) norms[j] = j < rows ? acc[j] : std::numeric_limits<float>::infinity();
}

// Queries q0 .. q0 + n of (N, C) -> qp, panels of MR queries each stored (C, MR) (missing queries: zeros).
template <int MR>
AMINET_INLINE void pack_queries(const float* queries, int64_t C, int64_t q0, int64_t n, float* qp) {
  const int64_t panels = (n + MR - 1) / MR;
  for (int64_t p = 0; p < panels; ++p) {
    float* dst = qp + p * C * MR;
    for (int i = 0; i < MR; ++i) {
      const int64_t q = p * MR + i;
      if (q < n) {
        const float* src = queries + (q0 + q) * C;
        for (int64_t c = 0; c < C; ++c) dst[c * MR + i] = src[c];
      } else {
        for (int64_t c = 0; c < C; ++c) dst[c * MR + i] = 0.0f;
      }
    }
  }
}

// GCC / Clang vector extensions: VW floats (int32s) in one register of the target (vector_size bytes), so
// the MR x NR accumulators are registers whatever the auto-vectoriser would decide.
template <int VW>
struct Vec {
  typedef float f __attribute__((vector_size(VW * 4)));
  typedef int32_t i __attribute__((vector_size(VW * 4)));
};

template <class V, class S>
AMINET_INLINE V load(const S* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class S>
AMINET_INLINE void store(S* p, const V& v) {
  memcpy(p, &v, sizeof(V));
}

// One MR-query panel against one packed strip: scores norm - 2 q.b, folded into the lanes' running
// minima (best, idx: (MR, NR)); strips come in increasing row order and `<` is strict, so each lane keeps
// its lowest row on ties. NR = NV vectors of VW lanes.
template <int MR, int NR, int VW>
AMINET_INLINE void panel_strip(const float* qp, const float* pk, const float* norms, int64_t C, int32_t r0,
                               float* best, int32_t* idx) {
  typedef typename Vec<VW>::f vf;
  typedef typename Vec<VW>::i vi;
  constexpr int NV = NR / VW;
  static_assert(NV * VW == NR, "NR must be a multiple of the vector width");
  vf acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = vf{};
  for (int64_t c = 0; c < C; ++c) {
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load<vf>(pk + c * NR + v * VW);
    const float* q = qp + c * MR;
    for (int i = 0; i < MR; ++i) {
      const float qi = q[i];
      for (int v = 0; v < NV; ++v) acc[i][v] += qi * b[v];
    }
  }
  vi lane;
  for (int k = 0; k < VW; ++k) lane[k] = r0 + k;
  for (int v = 0; v < NV; ++v) {
    const vf norm = load<vf>(norms + v * VW);
    const vi row = lane + v * VW;
    for (int i = 0; i < MR; ++i) {
      float* bp = best + i * NR + v * VW;
      int32_t* ip = idx + i * NR + v * VW;
      const vf sc = norm - 2.0f * acc[i][v];  // nearest_score, VW lanes at once
      const vf old = load<vf>(bp);
      const vi take = sc < old;
      store(bp, take ? sc : old);
      store(ip, take ? row : load<vi>(ip));
    }
  }
}

struct Partial {
  float score;
  int32_t index;
};

// One work item: queries [q0, q0 + n) against bank rows [r_begin, r_end) (r_begin a multiple of NR);
// writes each query's best (score, index) over that range to out[q * stride].
template <int MR, int NR, int VW, class T>
AMINET_INLINE void run_item(const float* queries, const T* bank, int64_t M, int64_t C, int64_t q0, int64_t n,
                            int64_t r_begin, int64_t r_end, float* pk, float* qp, float* best, int32_t* idx,
                            Partial* out, int64_t stride) {
  float norms[NR];
  pack_queries<MR>(queries, C, q0, n, qp);
  const int64_t panels = (n + MR - 1) / MR;
  std::fill(best, best + panels * MR * NR, std::numeric_limits<float>::infinity());
  std::fill(idx, idx + panels * MR * NR, (int32_t)r_begin);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += NR) {
    pack_strip<NR>(bank, std::min(M, r_end), C, r0, pk, norms);
    for (int64_t p = 0; p < panels; ++p)
      panel_strip<MR, NR, VW>(qp + p * C * MR, pk, norms, C, (int32_t)r0, best + p * MR * NR, idx + p * MR * NR);
  }
  for (int64_t q = 0; q < n; ++q) {
    Partial r{std::numeric_limits<float>::infinity(), (int32_t)r_begin};
    for (int j = 0; j < NR; ++j) nearest_lane_reduce(r.score, r.index, best[q * NR + j], idx[q * NR + j]);
    out[(q0 + q) * stride] = r;
  }
}

// Grow-only per-thread buffers, reused across calls.
std::vector<float>& thread_buffer() {
  thread_local std::vector<float> buf;
  return buf;
}

// The per-ISA part: MR x NR blocking and a work-item function compiled for that instruction set.
template <class T>
using ItemFn = void (*)(const float*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*,
                        float*, float*, int32_t*, Partial*, int64_t);
template <class T>
struct Kernel {
  int mr, nr;
  ItemFn<T> item;
};

#define AMINET_ITEM_ARGS                                                                                         \
  const float *queries, const T *bank, int64_t M, int64_t C, int64_t q0, int64_t n, int64_t r_begin,             \
      int64_t r_end, float *pk, float *qp, float *best, int32_t *idx, Partial *out, int64_t stride
#define AMINET_ITEM_CALL queries, bank, M, C, q0, n, r_begin, r_end, pk, qp, best, idx, out, stride

// Blocking per instruction set: MR x NR accumulators in about half the vector registers (AVX-512: 8 x 2 zmm
// of 32; AVX2: 6 x 2 ymm of 16; baseline SSE2 / NEON: 4 x 2 xmm of 16 / 32).
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define AMINET_MULTI_ISA 1
template <class T>
__attribute__((target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512"))) void item_avx512(AMINET_ITEM_ARGS) {
  run_item<8, 32, 16>(AMINET_ITEM_CALL);
}
template <class T>
__attribute__((target("avx2,fma"))) void item_avx2(AMINET_ITEM_ARGS) {
  run_item<6, 16, 8>(AMINET_ITEM_CALL);
}
#endif
template <class T>
void item_baseline(AMINET_ITEM_ARGS) {
  run_item<4, 8, 4>(AMINET_ITEM_CALL);
}

template <class T>
Kernel<T> pick_kernel() {
#if defined(AMINET_MULTI_ISA)
  const char* env = getenv("AMINET_NEAREST_ISA");
  const std::string want = env ? env : "";
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  if (avx512 && (want.empty() || want == "avx512")) return {8, 32, item_avx512<T>};
  if (avx2 && (want.empty() || want == "avx512" || want == "avx2")) return {6, 16, item_avx2<T>};
#endif
  return {4, 8, item_baseline<T>};
}

// The work item's blocking on this CPU (one answer per process: the CPU does not change).
template <class T>
const Kernel<T>& kernel() {
  static const Kernel<T> k = pick_kernel<T>();
  return k;
}

template <class T>
void nearest_impl(const float* queries, const T* bank, int64_t N, int64_t M, int64_t C, float* out, int64_t* index) {
  const Kernel<T>& k = kernel<T>();
  const NearestPlan plan = nearest_plan(N, M, C, omp_get_max_threads(), k.mr, k.nr, kGroup);
  std::vector<Partial> partial((size_t)(N * plan.chunks));
#pragma omp parallel
  {
    std::vector<float>& buf = thread_buffer();
    const size_t need = (size_t)(plan.strip_floats + plan.group_floats + 2 * plan.lane_floats);
    if (buf.size() < need) buf.resize(need);
    float* pk = buf.data();
    float* qp = pk + plan.strip_floats;
    float* best = qp + plan.group_floats;
    int32_t* idx = reinterpret_cast<int32_t*>(best + plan.lane_floats);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < plan.groups * plan.chunks; ++item) {
      const int64_t g = item / plan.chunks, s = item % plan.chunks;
      const int64_t q0 = g * kGroup, n = std::min(kGroup, N - q0);
      const int64_t r_begin = s * plan.chunk_rows, r_end = std::min(M, r_begin + plan.chunk_rows);
      k.item(queries, bank, M, C, q0, n, r_begin, r_end, pk, qp, best, idx, partial.data() + s, plan.chunks);
    }
#pragma omp for schedule(static)
    for (int64_t q = 0; q < N; ++q) {
      Partial r = partial[q * plan.chunks];
      for (int64_t s = 1; s < plan.chunks; ++s) {
        const Partial& p = partial[q * plan.chunks + s];
        if (p.score < r.score) r = p;  // chunks in bank order: strict < keeps the lowest index on ties
      }
      const T* row = bank + (int64_t)r.index * C;
      const float* qr = queries + q * C;
      float d2 = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        const float d = qr[c] - to_float(row[c]);
        d2 += d * d;
      }
      out[q] = sqrtf(d2);
      if (index) index[q] = r.index;
    }
  }
}

}  // namespace

// queries (N, C) float32, bank (M, C) float32 or IEEE fp16 when `half`, both C-contiguous; N, M, C >= 1,
// M < 2^31. Writes out (N,) float32 and, unless null, index (N,) (the picked rows).
void nearest_distance(const float* queries, const void* bank, bool half, int64_t N, int64_t M, int64_t C,
                      float* out, int64_t* index) {
  if (half) {
    nearest_impl(queries, static_cast<const half_t*>(bank), N, M, C, out, index);
  } else {
    nearest_impl(queries, static_cast<const float*>(bank), N, M, C, out, index);
  }
}

// The MR x NR blocking this CPU runs (*mr, *nr) and the query group size (returned): what
// nearest_plan needs to state the workspace of a call.
int nearest_blocking(int* mr, int* nr) {
  const Kernel<float>& k = kernel<float>();
  *mr = k.mr;
  *nr = k.nr;
  return (int)kGroup;
}

}  // namespace cpu
}  // namespace aminet
