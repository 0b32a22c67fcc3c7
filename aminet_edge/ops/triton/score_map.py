"""Triton kernels of score_map (truth: aminet_edge/ops/reference.py::score_map).

1. _cell_kernel, one program per (image, BLOCK_N cells): mse and 1 - cos over channels in BLOCK_C x BLOCK_N
   tiles, coalesced along the cells of each channel (NCHW). Reads feat and recon once: the op's traffic.
2. _smooth_kernel, twice: upsample + blur as the separable product with the cached smoothing matrices,
   U = A_h @ M, then amap = (U_mse @ A_w^T) * (U_cos @ A_w^T); tl.dot in IEEE fp32 (no TF32). With a token
   map D, twice more: U_g = A_hg @ D, then amap += token_weight * U_g @ A_wg^T.
3. _score_kernel, one program per image: population std (two-pass) or max of the map.
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

from typing import Any

import triton
import triton.language as tl


@triton.jit
def _cell_kernel(f_ptr, r_ptr, maps_ptr, C, HW, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < HW
    offs_c = tl.arange(0, BLOCK_C)
    base = b * C * HW
    d2 = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    ff = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    rr = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    fr = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + offs_c
        ok = (ch < C)[:, None] & n_ok[None, :]
        off = base + ch.to(tl.int64)[:, None] * HW + offs_n[None, :]
        f = tl.load(f_ptr + off, mask=ok, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + off, mask=ok, other=0.0).to(tl.float32)
        diff = f - r
        d2 += diff * diff
        ff += f * f
        rr += r * r
        fr += f * r
    mse = tl.sum(d2, axis=0) / C
    # reference.cosine: norms clamped at EPS = 1e-8
    cos = tl.sum(fr, axis=0) / (tl.maximum(tl.sqrt(tl.sum(ff, axis=0)), 1e-8) * tl.maximum(tl.sqrt(tl.sum(rr, axis=0)), 1e-8))
    tl.store(maps_ptr + b * 2 * HW + offs_n, mse, mask=n_ok)
    tl.store(maps_ptr + (b * 2 + 1) * HW + offs_n, 1.0 - cos, mask=n_ok)


@triton.jit
def _smooth_kernel(l_ptr, r_ptr, y_ptr, M, N, K, l_bs, l_pair, l_rs, l_cs, r_bs, r_pair, r_rs, r_cs, y_bs, alpha,
                   PRODUCT: tl.constexpr, ADD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # Y[z] = L[z] @ R[z]; with PRODUCT, Y[z] = (L[z] @ R[z]) * (L'[z] @ R'[z]), the primed views offset by
    # l_pair / r_pair elements; with ADD (not PRODUCT), Y[z] += alpha * (L[z] @ R[z]).
    # Element (i, j) of a view of batch z: ptr[z * bs + i * rs + j * cs].
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    z = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc0 = tl.zeros([BM, BN], dtype=tl.float32)
    acc1 = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + offs_k
        k_ok = k < K
        l_off = z * l_bs + offs_m[:, None] * l_rs + k[None, :] * l_cs
        r_off = z * r_bs + k[:, None] * r_rs + offs_n[None, :] * r_cs
        l_mask = m_ok[:, None] & k_ok[None, :]
        r_mask = k_ok[:, None] & n_ok[None, :]
        lt = tl.load(l_ptr + l_off, mask=l_mask, other=0.0)
        rt = tl.load(r_ptr + r_off, mask=r_mask, other=0.0)
        acc0 += tl.dot(lt, rt, input_precision="ieee")
        if PRODUCT:
            lt1 = tl.load(l_ptr + l_pair + l_off, mask=l_mask, other=0.0)
            rt1 = tl.load(r_ptr + r_pair + r_off, mask=r_mask, other=0.0)
            acc1 += tl.dot(lt1, rt1, input_precision="ieee")
    if PRODUCT:
        acc0 = acc0 * acc1
    y_off = z * y_bs + offs_m[:, None] * N + offs_n[None, :]
    y_mask = m_ok[:, None] & n_ok[None, :]
    if ADD:
        acc0 = tl.load(y_ptr + y_off, mask=y_mask, other=0.0) + alpha * acc0
    tl.store(y_ptr + y_off, acc0, mask=y_mask)


@triton.jit
def _score_kernel(amap_ptr, score_ptr, n, USE_MAX: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    base = b * n
    offs = tl.arange(0, BLOCK)
    if USE_MAX:
        best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        for k0 in range(0, n, BLOCK):
            ok = (k0 + offs) < n
            v = tl.load(amap_ptr + base + k0 + offs, mask=ok, other=float("-inf"))
            best = tl.maximum(best, v)
        tl.store(score_ptr + b, tl.max(best, axis=0))
    else:
        s_vec = tl.zeros([BLOCK], dtype=tl.float32)
        for k0 in range(0, n, BLOCK):
            ok = (k0 + offs) < n
            s_vec += tl.load(amap_ptr + base + k0 + offs, mask=ok, other=0.0)
        mean = tl.sum(s_vec, axis=0) / n
        q_vec = tl.zeros([BLOCK], dtype=tl.float32)
        for k0 in range(0, n, BLOCK):
            ok = (k0 + offs) < n
            v = tl.load(amap_ptr + base + k0 + offs, mask=ok, other=0.0)
            q_vec += tl.where(ok, (v - mean) * (v - mean), 0.0)
        tl.store(score_ptr + b, tl.sqrt(tl.sum(q_vec, axis=0) / n))


_MATRICES: dict[tuple[int, int, float, str], Any] = {}


def _smoothing_matrix(in_size: int, out_size: int, sigma: float, device: Any) -> Any:
    """reference.smoothing_matrix on `device`, cached per (in, out, sigma, device)."""
    key = (in_size, out_size, float(sigma), str(device))
    if key not in _MATRICES:
        from aminet_edge.ops.reference import smoothing_matrix

        _MATRICES[key] = smoothing_matrix(in_size, out_size, sigma).to(device)
    return _MATRICES[key]


def score_map(
    feat: Any,
    recon: Any,
    out_hw: tuple[int, int],
    sigma: float = 4.0,
    image_score: str = "std",
    token_map: Any = None,
    token_weight: float = 0.0,
) -> tuple[Any, Any]:
    """reference.score_map in Triton.

    feat, recon: (B, C, h, w) torch tensors (CUDA; CPU only under TRITON_INTERPRET=1), float32, float16 or
    bfloat16; out_hw (H, W) output pixels; sigma in output pixels; token_map: None or a (B, gh, gw) tensor
    on the same device (used as float32), added as token_weight * its upsampled, smoothed map. Returns
    amap (B, H, W) float32 and score (B,) float32 on the tensors' device. Not differentiable.
    """
    import torch

    if image_score not in ("std", "max"):
        raise ValueError(f"image_score must be 'std' or 'max', got {image_score!r}")
    if feat.dim() != 4 or feat.shape != recon.shape:
        raise ValueError(f"feat and recon must both be (B, C, h, w), got {tuple(feat.shape)}, {tuple(recon.shape)}")
    if token_map is not None and (token_map.dim() != 3 or token_map.shape[0] != feat.shape[0]):
        raise ValueError(f"token_map must be (B, gh, gw) with feat's B, got {tuple(token_map.shape)}")
    feat, recon = feat.detach().contiguous(), recon.detach().contiguous()
    if recon.dtype != feat.dtype:
        recon = recon.to(feat.dtype)
    B, C, h, w = feat.shape
    H, W = int(out_hw[0]), int(out_hw[1])
    dev = feat.device
    a_h = _smoothing_matrix(h, H, sigma, dev)  # (H, h)
    a_w = _smoothing_matrix(w, W, sigma, dev)  # (W, w)
    maps = torch.empty((B, 2, h, w), dtype=torch.float32, device=dev)
    rows = torch.empty((B, 2, H, w), dtype=torch.float32, device=dev)
    amap = torch.empty((B, H, W), dtype=torch.float32, device=dev)
    score = torch.empty((B,), dtype=torch.float32, device=dev)
    hw = h * w
    block_n = 128
    _cell_kernel[(triton.cdiv(hw, block_n), B)](feat, recon, maps, C, hw, BLOCK_C=8, BLOCK_N=block_n, num_warps=4)
    bm, bn, bk = 32, 32, 16  # 16-deep K tiles: 16 KB of shared memory for the fused product
    tiles = dict(BM=bm, BN=bn, BK=bk, num_warps=4)
    # U[b, map] = A_h (H x h) @ M[b, map] (h x w)
    _smooth_kernel[(triton.cdiv(w, bn), triton.cdiv(H, bm), B * 2)](
        a_h, maps, rows, H, w, h, 0, 0, h, 1, hw, 0, w, 1, H * w, 0.0, PRODUCT=False, ADD=False, **tiles,
    )
    # amap[b] = (U[b, mse] @ A_w^T) * (U[b, cos] @ A_w^T); A_w^T is A_w (W x w) read transposed
    _smooth_kernel[(triton.cdiv(W, bn), triton.cdiv(H, bm), B)](
        rows, a_w, amap, H, W, w, 2 * H * w, H * w, w, 1, 0, 0, 1, w, H * W, 0.0, PRODUCT=True, ADD=False, **tiles,
    )
    if token_map is not None:
        d = token_map.detach().float().contiguous()
        gh, gw = int(d.shape[1]), int(d.shape[2])
        a_hg = _smoothing_matrix(gh, H, sigma, dev)  # (H, gh)
        a_wg = _smoothing_matrix(gw, W, sigma, dev)  # (W, gw)
        token_rows = torch.empty((B, H, gw), dtype=torch.float32, device=dev)
        # U_g[b] = A_hg (H x gh) @ D[b] (gh x gw), then amap[b] += token_weight * U_g[b] @ A_wg^T
        _smooth_kernel[(triton.cdiv(gw, bn), triton.cdiv(H, bm), B)](
            a_hg, d, token_rows, H, gw, gh, 0, 0, gh, 1, gh * gw, 0, gw, 1, H * gw, 0.0, PRODUCT=False, ADD=False,
            **tiles,
        )
        _smooth_kernel[(triton.cdiv(W, bn), triton.cdiv(H, bm), B)](
            token_rows, a_wg, amap, H, W, gw, H * gw, 0, gw, 1, 0, 0, 1, gw, H * W, float(token_weight), PRODUCT=False,
            ADD=True, **tiles,
        )
    _score_kernel[(B,)](amap, score, H * W, USE_MAX=image_score == "max", BLOCK=1024, num_warps=4)
    return amap, score
