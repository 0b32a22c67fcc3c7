"""Triton kernels of adaptive_mask (truth: aminet_edge/ops/reference.py::adaptive_mask).

Kernel 1, one program per (image, tile of BLOCK_L tokens): token norms first; for each centre its norm,
then the fused sums sum (t - c)^2 and sum (t/|t| - c/|c|)^2 over D in tiles of BLOCK_D (a BLOCK_L x BLOCK_D register tile, no shared-memory
staging), then R and a running argmin (strict <: lowest index on ties). Kernel 2, one program per image:
per-cluster mean and unbiased std by masked reductions over the tokens, then the mask.
All arithmetic in float32 (fp16 / bf16 inputs are widened on load).
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

from typing import Any

import triton
import triton.language as tl


@triton.jit
def _assign_kernel(tok_ptr, cen_ptr, dist_ptr, asg_ptr, L, P, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_l = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    offs_d = tl.arange(0, BLOCK_D)
    tok_rows = tok_ptr + b * L * D + offs_l.to(tl.int64)[:, None] * D
    cen_base = cen_ptr + b * P * D

    tt = tl.zeros([BLOCK_L], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        t = tl.load(tok_rows + (d0 + offs_d)[None, :], mask=l_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        tt += tl.sum(t * t, axis=1)

    it = 1.0 / tl.maximum(tl.sqrt(tt), 1e-8)  # reciprocal norms, clamped at EPS = 1e-8 as the reference
    best = tl.zeros([BLOCK_L], dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_L], dtype=tl.int64)
    for p in range(0, P):
        cc_vec = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + offs_d) < D
            c = tl.load(cen_base + p * D + d0 + offs_d, mask=d_ok, other=0.0).to(tl.float32)
            cc_vec += c * c
        ic = 1.0 / tl.maximum(tl.sqrt(tl.sum(cc_vec, axis=0)), 1e-8)
        d2 = tl.zeros([BLOCK_L], dtype=tl.float32)
        u2 = tl.zeros([BLOCK_L], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + offs_d) < D
            t = tl.load(tok_rows + (d0 + offs_d)[None, :], mask=l_ok[:, None] & d_ok[None, :], other=0.0)
            t = t.to(tl.float32)
            c = tl.load(cen_base + p * D + d0 + offs_d, mask=d_ok, other=0.0).to(tl.float32)
            diff = t - c[None, :]
            unit = t * it[:, None] - (c * ic)[None, :]
            d2 += tl.sum(diff * diff, axis=1)
            u2 += tl.sum(unit * unit, axis=1)
        # reference.cluster_distance: sqrt(max(d2, EPS^2)) * ||t/|t| - c/|c|||^2 / 2
        dist = tl.sqrt(tl.maximum(d2, 1e-16)) * (0.5 * u2)
        take = (dist < best) | (p == 0)
        best = tl.where(take, dist, best)
        best_idx = tl.where(take, p, best_idx)
    out = b * L + offs_l
    tl.store(dist_ptr + out, best, mask=l_ok)
    tl.store(asg_ptr + out, best_idx, mask=l_ok)


@triton.jit
def _mask_kernel(dist_ptr, asg_ptr, mask_ptr, L, P, lam, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = b * L
    offs = tl.arange(0, BLOCK)
    for p in range(0, P):
        s_vec = tl.zeros([BLOCK], dtype=tl.float32)
        n_vec = tl.zeros([BLOCK], dtype=tl.float32)
        for l0 in range(0, L, BLOCK):
            ok = (l0 + offs) < L
            d = tl.load(dist_ptr + base + l0 + offs, mask=ok, other=0.0)
            a = tl.load(asg_ptr + base + l0 + offs, mask=ok, other=-1)
            sel = ok & (a == p)
            s_vec += tl.where(sel, d, 0.0)
            n_vec += tl.where(sel, 1.0, 0.0)
        count = tl.sum(n_vec, axis=0)
        mean = tl.sum(s_vec, axis=0) / tl.maximum(count, 1.0)
        q_vec = tl.zeros([BLOCK], dtype=tl.float32)
        for l0 in range(0, L, BLOCK):
            ok = (l0 + offs) < L
            d = tl.load(dist_ptr + base + l0 + offs, mask=ok, other=0.0)
            a = tl.load(asg_ptr + base + l0 + offs, mask=ok, other=-1)
            dev = d - mean
            q_vec += tl.where(ok & (a == p), dev * dev, 0.0)
        std = tl.sqrt(tl.sum(q_vec, axis=0) / tl.maximum(count - 1.0, 1.0))
        # clusters of <= 1 token mask nothing: an infinite bound (no token is > inf)
        bound = tl.where(count > 1.5, mean + lam * std, float("inf"))
        for l0 in range(0, L, BLOCK):
            ok = (l0 + offs) < L
            d = tl.load(dist_ptr + base + l0 + offs, mask=ok, other=0.0)
            a = tl.load(asg_ptr + base + l0 + offs, mask=ok, other=-1)
            tl.store(mask_ptr + base + l0 + offs, d > bound, mask=ok & (a == p))


def adaptive_mask(tokens: Any, centers: Any, lam: float) -> tuple[Any, Any, Any]:
    """reference.adaptive_mask in Triton.

    tokens: (B, L, D), centers: (B, P, D) torch tensors (CUDA; CPU only under TRITON_INTERPRET=1), float32,
    float16 or bfloat16. Returns mask (B, L) bool, min_dist (B, L) float32, assign (B, L) int64 on the
    tensors' device. Not differentiable.
    """
    import torch

    if tokens.dim() != 3 or centers.dim() != 3 or tokens.shape[0] != centers.shape[0] or tokens.shape[2] != centers.shape[2]:
        raise ValueError(f"tokens must be (B, L, D) and centers (B, P, D), got {tuple(tokens.shape)}, {tuple(centers.shape)}")
    tokens, centers = tokens.detach().contiguous(), centers.detach().contiguous()
    if centers.dtype != tokens.dtype:
        centers = centers.to(tokens.dtype)
    B, L, D = tokens.shape
    P = centers.shape[1]
    dev = tokens.device
    mask = torch.zeros((B, L), dtype=torch.bool, device=dev)
    min_dist = torch.empty((B, L), dtype=torch.float32, device=dev)
    assign = torch.empty((B, L), dtype=torch.int64, device=dev)
    if B == 0 or L == 0:
        return mask, min_dist, assign
    block_l, block_d = 16, 128
    _assign_kernel[(triton.cdiv(L, block_l), B)](
        tokens, centers, min_dist, assign, L, P, D, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4
    )
    _mask_kernel[(B,)](min_dist, assign, mask, L, P, float(lam), BLOCK=min(1024, triton.next_power_of_2(L)), num_warps=4)
    return mask, min_dist, assign
