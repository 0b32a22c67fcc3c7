"""Pre-norm ViT block and the fixed 2-D sin-cos position embedding (as timm 0.3.2 / MAE define them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias on)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # explicit softmax(QK^T / sqrt(d)) V: exports to plain MatMul/Softmax for every ONNX opset and
        # TensorRT target (the opset-23 Attention node fails FP32 builds on TensorRT-RTX)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            attn = torch.softmax((q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)); LayerNorm eps 1e-5, GELU, MLP hidden = mlp_ratio * dim."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (MAE's layout), (grid * grid, dim) float32, row-major tokens.

    The first dim/2 channels encode the column index, the last dim/2 the row index; each half is
    [sin(pos * w), cos(pos * w)] with w_k = 10000 ** (-k / (dim / 4)).
    """
    if dim % 4:
        raise ValueError(f"position embedding dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def init_weights(module: nn.Module) -> None:
    """MAE/authors' init: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)

