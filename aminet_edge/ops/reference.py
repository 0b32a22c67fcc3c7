"""The pure-PyTorch truth for AMI-Net's two fused ops; training uses it, every fast path is tested against it.

Shared conventions (every backend follows them exactly):
- cosine: cos(a, b) = a.b / (max(||a||, EPS) * max(||b||, EPS)), EPS = 1e-8, so a zero vector has cos 0.
- the cluster distance's 1 - cos is ||a / max(||a||, EPS) - b / max(||b||, EPS)||^2 / 2 (`cluster_distance`).
- all arithmetic in float32, whatever the input dtype.
- no Python loops over data and no data-dependent shapes (one-hot reductions, no scatter), so the same
  code exports to ONNX and parses in TensorRT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cosine similarity along `dim` with each norm clamped at EPS (inputs broadcast)."""
    dot = (a * b).sum(dim)
    return dot / (a.norm(dim=dim).clamp_min(EPS) * b.norm(dim=dim).clamp_min(EPS))


def cluster_distance(tokens: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """R(t, c) = ||t - c|| * (1 - cos(t, c)) for every token/centre pair.

    1 - cos is computed as ||u - v||^2 / 2 with u = t / max(||t||, EPS), v = c / max(||c||, EPS) (equal
    for nonzero vectors; a zero vector gives ||v||^2 / 2 = 1/2). Not as 1 - t.c / (||t|| ||c||): trained
    tokens lie nearly parallel to their centre (1 - cos ~ 1e-4 at norms ~800 and ~20), where that
    difference cancels in float32 and ~0.6 % of a real set's mask decisions flip against float64; the
    difference of unit vectors keeps its relative precision.
    tokens: (B, L, D), centers: (B, P, D) -> (B, L, P) float32. Differentiable (training uses it).
    """
    t = tokens.float().unsqueeze(2)  # (B, L, 1, D)
    c = centers.float().unsqueeze(1)  # (B, 1, P, D)
    diff = t - c
    # sqrt of a clamped sum keeps the gradient finite when a token sits on a centre
    euclid = (diff * diff).sum(-1).clamp_min(EPS * EPS).sqrt()
    unit = t / t.norm(dim=-1, keepdim=True).clamp_min(EPS) - c / c.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return euclid * (0.5 * (unit * unit).sum(-1))


def adaptive_mask(
    tokens: torch.Tensor, centers: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign each token to its nearest centre and mask tokens beyond their cluster's boundary.

    tokens: (B, L, D) clustering tokens (with position embedding); centers: (B, P, D); lam: the boundary
    factor lambda. Per image and cluster p with n_p tokens: boundary r_p = mean + lam * std of the
    members' distances (std unbiased, n_p - 1); a token is masked when its distance > r_p of its cluster.
    Clusters with n_p <= 1 mask nothing. Ties between centres go to the lowest index.
    Returns mask (B, L) bool (True = masked, to be inpainted), min_dist (B, L) float32,
    assign (B, L) int64.
    """
    dist = cluster_distance(tokens, centers)  # (B, L, P)
    min_dist, assign = dist.min(dim=-1)  # torch.min returns the first minimum: lowest index on ties
    num_clusters = centers.shape[1]
    onehot = F.one_hot(assign, num_clusters).float()  # (B, L, P)
    count = onehot.sum(1)  # (B, P)
    mean = (onehot * min_dist.unsqueeze(-1)).sum(1) / count.clamp_min(1.0)
    sq = onehot * (min_dist.unsqueeze(-1) - mean.unsqueeze(1)) ** 2
    std = (sq.sum(1) / (count - 1.0).clamp_min(1.0)).sqrt()
    bound = mean + lam * std  # (B, P)
    token_bound = (onehot * bound.unsqueeze(1)).sum(-1)  # (B, L)
    token_count = (onehot * count.unsqueeze(1)).sum(-1)
    mask = (min_dist > token_bound) & (token_count > 1.5)
    return mask, min_dist, assign


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each query to its nearest bank row: (..., C), (M, C) -> (...) float32.

    The nearest row is the argmin of ||b||^2 - 2 q.b (one matrix product; ties to the lowest index);
    its distance is then computed directly as ||q - b|| (a gather and a norm), so the value has no
    cancellation: only between rows within float32 rounding of each other can the pick differ from an
    exact search. Memory: one (..., M) float32 block (callers chunk large query sets).
    Written so that an exported graph holds the bank once, (M, C) float32, plus its (M,) squared norms:
    the product is a 2-D mm (a Gemm reading the bank with transB, not a transposed copy), and the norms
    are a vector norm squared (folded to (M,) at export; a sum of b * b keeps a second (M, C) constant).
    """
    q, b = queries.float(), bank.float()
    flat = q.reshape(-1, q.shape[-1])  # (N, C)
    scores = torch.linalg.vector_norm(b, dim=1).square() - 2.0 * torch.mm(flat, b.t())  # (N, M)
    nearest = b[scores.argmin(-1)]  # (N, C)
    return (flat - nearest).norm(dim=-1).reshape(q.shape[:-1])


def gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, radius int(4 * sigma + 0.5) as scipy's default truncate=4."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).float()


def reflect_index(n: int, radius: int) -> list[int]:
    """Source index of each sample of a length-n line padded by `radius` on both sides, scipy.ndimage's
    default "reflect" border (d c b a | a b c d | d c b a: the edge sample repeated; numpy "symmetric"),
    reflected again as often as needed when radius >= n."""
    out = []
    for u in range(-radius, n + radius):
        u %= 2 * n
        out.append(u if u < n else 2 * n - 1 - u)
    return out


def _blur_last(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """1-D blur of (N, n) rows along the last dim, scipy "reflect" border (see `reflect_index`).

    The padding is a gather with constant indices (ONNX Gather, which TensorRT builds): ONNX Pad has no
    mode that repeats the edge sample.
    """
    r = taps.numel() // 2
    # the map's side is fixed by the config, so the tracer's "treated as a constant" warning is what we want
    idx = torch.tensor(reflect_index(int(x.shape[-1]), r), dtype=torch.int64, device=x.device)
    y = x.index_select(-1, idx).unsqueeze(1)
    return F.conv1d(y, taps.view(1, 1, -1)).squeeze(1)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps; sigma in pixels.

    Same as scipy.ndimage.gaussian_filter(m, sigma) with its defaults (truncate 4, mode "reflect": the
    edge pixel repeated), as the authors call it. sigma <= 0 returns the input.
    """
    if sigma <= 0:
        return maps
    taps = gaussian_taps(sigma).to(maps.device)
    b, h, w = maps.shape
    x = _blur_last(maps.reshape(b * h, w), taps).reshape(b, h, w)
    x = _blur_last(x.transpose(1, 2).reshape(b * w, h), taps).reshape(b, w, h)
    return x.transpose(1, 2)


def upsample_smooth(maps: torch.Tensor, out_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """(B, h, w) maps bilinearly upsampled (align_corners=True) to out_hw = (H, W), then Gaussian-smoothed
    (sigma in output pixels, see `smooth`): (B, H, W) float32.

    In an ONNX export the same linear operator is written as A_h @ maps @ A_w.T with the constant
    `smoothing_matrix`es (two MatMuls, the C++ / CUDA kernels' form): equal to float32 rounding, and the
    runtimes run it 10-30x faster than a Resize and two 1-D convolutions over a gathered reflect border
    (OpenVINO CPU: ~13 % of the int8 graph's time at batch 1 before; bench/stages.py).
    """
    if torch.onnx.is_in_onnx_export():
        h, w = int(maps.shape[-2]), int(maps.shape[-1])
        a_h = smoothing_matrix(h, int(out_hw[0]), sigma).to(maps.device)
        a_w_t = smoothing_matrix(w, int(out_hw[1]), sigma).t().contiguous().to(maps.device)
        return torch.matmul(torch.matmul(a_h, maps.float()), a_w_t)
    up = F.interpolate(maps.float().unsqueeze(1), size=tuple(out_hw), mode="bilinear", align_corners=True)
    return smooth(up[:, 0], sigma)


def score_map(
    feat: torch.Tensor,
    recon: torch.Tensor,
    out_hw: tuple[int, int],
    sigma: float = 4.0,
    image_score: str = "std",
    token_map: torch.Tensor | None = None,
    token_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly map and image score from input features and their restoration.

    feat, recon: (B, C, h, w). Per cell: mse = mean_c (feat - recon)^2 and cosd = 1 - cos over channels.
    Each is `upsample_smooth`ed to out_hw = (H, W) (bilinear, align_corners=True, then Gaussian sigma in
    output pixels), then amap = mse * cosd. With token_map (B, gh, gw) (the nearest-normal guide's token
    distances, ScoreConfig.map "reconstruction+guide"), amap += token_weight * upsample_smooth(token_map).
    Image score: population std of the map ("std", the authors' choice) or its maximum ("max").
    Returns amap (B, H, W) float32 and score (B,) float32.
    """
    if image_score not in ("std", "max"):
        raise ValueError(f"image_score must be 'std' or 'max', got {image_score!r}")
    f, r = feat.float(), recon.float()
    b, _, h, w = f.shape
    mse = ((f - r) ** 2).mean(1)
    cosd = 1.0 - cosine(f, r, dim=1)
    both = upsample_smooth(torch.cat([mse, cosd]), out_hw, sigma)  # (2B, H, W): mse maps, then cosd maps
    amap = both[:b] * both[b:]
    if token_map is not None:
        amap = amap + float(token_weight) * upsample_smooth(token_map, out_hw, sigma)
    flat = amap.reshape(b, -1)
    score = flat.std(1, unbiased=False) if image_score == "std" else flat.amax(1)
    return amap, score


def smoothing_matrix(in_size: int, out_size: int, sigma: float) -> torch.Tensor:
    """(out_size, in_size) float32 matrix A with A @ m = blur(upsample(m)) for a length-in_size vector m.

    Upsampling is bilinear (align_corners=True), the blur as in `smooth`. Both are linear and separable,
    so smooth(up(M)) = A_h @ M @ A_w.T; the fast backends use this form.
    """
    eye = torch.eye(in_size, dtype=torch.float32).view(1, 1, in_size, in_size)
    rows = F.interpolate(eye, size=(in_size, out_size), mode="bilinear", align_corners=True)
    rows = rows.view(in_size, out_size)  # row j = upsampled unit impulse e_j
    if sigma > 0:
        rows = _blur_last(rows, gaussian_taps(sigma))
    return rows.t().contiguous()
