"""Triton kernels of nearest_distance (truth: aminet_edge/ops/reference.py::nearest_distance).

Kernel 1, one program per (block of BLOCK_N queries, chunk of the bank): bank tiles of BLOCK_M rows in
increasing order; per tile the BLOCK_N x BLOCK_M products q.b by tl.dot over C in slices of BLOCK_C (fp32
in IEEE precision: TF32 would move scores by ~1e-3 relative and change picks), the tile's squared norms
summed from the same slices, scores ||b||^2 - 2 q.b, the tile's minimum (lowest column on ties) and a
running (score, row) per query (strict <: lowest row on ties). It writes one partial result per chunk.
Kernel 2, one program per BLOCK_N queries: the chunks' partials reduced in bank order, then the exact
||q - b|| of the picked row. Never the (N, M) matrix; the bank is read as stored (fp16 widened on load).
The bank is split into chunks so that a single image's tokens still fill the GPU.
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

from typing import Any

import triton
import triton.language as tl

BLOCK_N, BLOCK_M, BLOCK_C = 64, 64, 16  # 16 KB of shared memory (test_cuda_build bounds it)


@triton.jit
def _search_kernel(q_ptr, b_ptr, score_ptr, index_ptr, N, M, C, rows_per_chunk,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_n = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_c = tl.arange(0, BLOCK_C)
    q_rows = q_ptr + offs_n.to(tl.int64)[:, None] * C
    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    row_begin = chunk * rows_per_chunk
    row_end = tl.minimum(row_begin + rows_per_chunk, M)
    for m0 in range(row_begin, row_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < row_end
        b_rows = b_ptr + offs_m.to(tl.int64)[:, None] * C
        dots = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        norms = tl.zeros([BLOCK_M], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c_ok = (c0 + offs_c) < C
            q = tl.load(q_rows + (c0 + offs_c)[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(b_rows + (c0 + offs_c)[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            b = b.to(tl.float32)
            dots = tl.dot(q, tl.trans(b), dots, input_precision="ieee")
            norms += tl.sum(b * b, axis=1)
        # rows past the chunk score +inf: never picked
        scores = tl.where(m_ok[None, :], norms[None, :] - 2.0 * dots, float("inf"))
        tile_best, tile_col = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
        take = tile_best < best
        best = tl.where(take, tile_best, best)
        best_idx = tl.where(take, m0 + tile_col, best_idx)
    best_idx = tl.where(best == float("inf"), row_begin, best_idx)  # a chunk of non-finite scores: its first row
    out = chunk.to(tl.int64) * N + offs_n
    tl.store(score_ptr + out, best, mask=n_ok)
    tl.store(index_ptr + out, best_idx, mask=n_ok)


@triton.jit
def _finish_kernel(q_ptr, b_ptr, score_ptr, index_ptr, dist_ptr, row_ptr, N, C, chunks,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    best = tl.load(score_ptr + offs_n, mask=n_ok, other=0.0)
    best_idx = tl.load(index_ptr + offs_n, mask=n_ok, other=0)
    for s in range(1, chunks):
        score = tl.load(score_ptr + s * N + offs_n, mask=n_ok, other=0.0)
        idx = tl.load(index_ptr + s * N + offs_n, mask=n_ok, other=0)
        take = score < best  # chunks in bank order: strict < keeps the lowest row on ties
        best = tl.where(take, score, best)
        best_idx = tl.where(take, idx, best_idx)
    offs_c = tl.arange(0, BLOCK_C)
    q_rows = q_ptr + offs_n.to(tl.int64)[:, None] * C
    b_rows = b_ptr + best_idx.to(tl.int64)[:, None] * C
    d2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ok = n_ok[:, None] & ((c0 + offs_c) < C)[None, :]
        q = tl.load(q_rows + (c0 + offs_c)[None, :], mask=ok, other=0.0)
        b = tl.load(b_rows + (c0 + offs_c)[None, :], mask=ok, other=0.0).to(tl.float32)
        diff = q - b
        d2 += tl.sum(diff * diff, axis=1)
    tl.store(dist_ptr + offs_n, tl.sqrt(d2), mask=n_ok)
    tl.store(row_ptr + offs_n, best_idx.to(tl.int64), mask=n_ok)


def _chunks(N: int, M: int, device: Any) -> int:
    """Bank chunks per call: enough programs for about two waves of the GPU's SMs (4 on the CPU
    interpreter), at least BLOCK_M rows each."""
    import torch

    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    blocks = triton.cdiv(N, BLOCK_N)
    return max(1, min(triton.cdiv(programs, blocks), triton.cdiv(M, BLOCK_M)))


def nearest_distance(queries: Any, bank: Any, return_index: bool = False) -> Any:
    """reference.nearest_distance in Triton.

    queries: (..., C) floating point (used as float32), bank: (M, C) float32 or float16; torch tensors
    (CUDA; CPU only under TRITON_INTERPRET=1) on one device. Returns (...) float32 distances, and with
    return_index also the picked rows (...) int64. Not differentiable.
    """
    import torch

    if bank.dim() != 2 or queries.dim() < 1 or queries.shape[-1] != bank.shape[1] or bank.shape[0] < 1:
        raise ValueError(f"queries must be (..., C) and bank (M >= 1, C), got {tuple(queries.shape)}, "
                         f"{tuple(bank.shape)}")
    lead = queries.shape[:-1]
    C = bank.shape[1]
    q = queries.detach().float().reshape(-1, C).contiguous()
    b = bank.detach().contiguous()
    if b.dtype not in (torch.float16, torch.float32):
        b = b.float()
    N, M = q.shape[0], b.shape[0]
    dev = q.device
    dist = torch.empty((N,), dtype=torch.float32, device=dev)
    rows = torch.empty((N,), dtype=torch.int64, device=dev)
    if N:
        chunks = _chunks(N, M, dev)
        rows_per_chunk = triton.cdiv(triton.cdiv(M, chunks), BLOCK_M) * BLOCK_M
        chunks = triton.cdiv(M, rows_per_chunk)  # no empty chunk
        scores = torch.empty((chunks, N), dtype=torch.float32, device=dev)
        index = torch.empty((chunks, N), dtype=torch.int32, device=dev)
        _search_kernel[(triton.cdiv(N, BLOCK_N), chunks)](
            q, b, scores, index, N, M, C, rows_per_chunk, BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
            num_warps=4)
        _finish_kernel[(triton.cdiv(N, BLOCK_N),)](q, b, scores, index, dist, rows, N, C, chunks,
                                                   BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, num_warps=4)
    dist, rows = dist.reshape(lead), rows.reshape(lead)
    return (dist, rows) if return_index else dist
