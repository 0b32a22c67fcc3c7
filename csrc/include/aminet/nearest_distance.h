// Shared math of the nearest-bank search, for the C++ CPU kernel (g++) and the CUDA kernel (nvcc).
//
// The truth is aminet_edge/ops/reference.py::nearest_distance: for each query q (C,) and a bank (M, C),
// the row m minimising score(m) = ||b_m||^2 - 2 q.b_m (ties -> lowest m), then the exact ||q - b_m||.
// All arithmetic is float32 whatever the bank dtype (fp16 is widened on load). The bank's squared norms
// are summed by the kernels while a tile of the bank is loaded (M * C multiply-adds per pass against
// 2 * N * M * C for the products), so callers keep no per-bank state.
#pragma once

#include <math.h>
#include <stdint.h>

// AMINET_HD, half_t, to_float: defined once, there
#include "aminet/adaptive_mask.h"

namespace aminet {

// The score a row is ranked by: ||b||^2 - 2 q.b (= ||q - b||^2 - ||q||^2; q's norm is the same for all rows).
AMINET_HD float nearest_score(float bank_norm2, float dot) { return bank_norm2 - 2.0f * dot; }

// Fold candidate (score, index) into a running best: lower score wins, an equal score the lower index
// (candidates may come in any order, e.g. the lanes of a tile or partial results of bank chunks).
AMINET_HD void nearest_lane_reduce(float& best, int32_t& best_idx, float score, int32_t idx) {
  if (score < best || (score == best && idx < best_idx)) {
    best = score;
    best_idx = idx;
  }
}

// How the CPU kernel splits one call: `groups` blocks of `group` queries times `chunks` ranges of
// `chunk_rows` bank rows (a multiple of the strip width nr), at least 2 work items per thread when the
// bank is long enough, so that one image (256 queries, one group) still keeps every thread busy.
// Workspace per thread, in floats: strip (C, nr) + packed query group + lane state (score and index per
// query and lane); plus N * chunks (score, index) partial results. Nothing grows with N * M.
struct NearestPlan {
  int64_t groups, chunks, chunk_rows;
  int64_t strip_floats, group_floats, lane_floats;
};

inline NearestPlan nearest_plan(int64_t N, int64_t M, int64_t C, int threads, int mr, int nr, int64_t group) {
  NearestPlan p;
  p.groups = (N + group - 1) / group;
  const int64_t strips = (M + nr - 1) / nr;
  const int64_t want = 2 * (int64_t)(threads > 0 ? threads : 1);
  int64_t chunks = (want + p.groups - 1) / p.groups;
  if (chunks > strips) chunks = strips;
  if (chunks < 1) chunks = 1;
  const int64_t strips_per_chunk = (strips + chunks - 1) / chunks;
  p.chunks = (strips + strips_per_chunk - 1) / strips_per_chunk;  // no empty chunk
  p.chunk_rows = strips_per_chunk * nr;
  const int64_t group_rows = ((group < N ? group : N) + mr - 1) / mr * mr;
  p.strip_floats = C * nr;
  p.group_floats = group_rows * C;
  p.lane_floats = group_rows * nr;
  return p;
}

// Bytes the CPU kernel allocates for one call with `threads` threads (the plan's buffers; see above).
inline int64_t nearest_workspace_bytes(const NearestPlan& p, int64_t N, int threads) {
  const int64_t per_thread = (p.strip_floats + p.group_floats + 2 * p.lane_floats) * 4;
  return per_thread * threads + N * p.chunks * 8;
}

}  // namespace aminet
