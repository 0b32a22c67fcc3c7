"""AMI-Net on backbone features: adaptive mask generator + inpainting ViT, and its training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.config import LossConfig, ModelConfig
from aminet_edge.model.transformer import Block, init_weights, sincos_position_embedding
from aminet_edge.ops import reference


class AMINet(nn.Module):
    """The trainable part of AMI-Net. Works on features (B, C, h, w) with h = w = cfg.feature_size.

    Tokens: a K x K, stride-K conv per branch (inpainting / clustering, separate weights as the paper's
    f1 and f3) gives L = (h / K)^2 tokens of width D; position embedding is the fixed 2-D sin-cos one.
    """

    pos_embed: torch.Tensor  # (1, L, D) registered buffer

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.in_channels = in_channels
        d, k = cfg.embed_dim, cfg.patch_size
        self.embed_inpaint = nn.Conv2d(in_channels, d, k, stride=k)
        self.embed_cluster = nn.Conv2d(in_channels, d, k, stride=k)
        self.register_buffer("pos_embed", sincos_position_embedding(d, cfg.grid_size).unsqueeze(0))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cluster_tokens = nn.Parameter(torch.zeros(1, cfg.num_clusters, d))
        self.aggregation = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.aggregation_depth))
        self.cluster_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.inpaint_depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, k * k * in_channels)
        self.apply(init_weights)
        nn.init.normal_(self.cluster_tokens, std=0.02)

    # -- layout -------------------------------------------------------------------------------
    def patchify(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, K*K*C), each token's vector ordered (row in patch, col in patch, channel)."""
        b, c, h, w = feat.shape
        k = self.cfg.patch_size
        x = feat.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // k) * (w // k), k * k * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`: (B, L, K*K*C) -> (B, C, h, w)."""
        b = tokens.shape[0]
        k, g, c = self.cfg.patch_size, self.cfg.grid_size, self.in_channels
        x = tokens.reshape(b, g, g, k, k, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * k, g * k)

    def _check(self, feat: torch.Tensor) -> None:
        s = self.cfg.feature_size
        if feat.ndim != 4 or feat.shape[1] != self.in_channels or feat.shape[2] != s or feat.shape[3] != s:
            raise ValueError(
                f"features must have shape (B, {self.in_channels}, {s}, {s}), got {tuple(feat.shape)}")

    @staticmethod
    def _embed(conv: nn.Conv2d, feat: torch.Tensor) -> torch.Tensor:
        return conv(feat).flatten(2).transpose(1, 2)  # (B, L, D)

    def _jitter(self, tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Feature jitter (UniAD's, as the authors apply it): noise ~ N(0, 1) * ||token|| / D * scale."""
        noise = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
        scale = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * self.cfg.jitter_scale
        return tokens + noise * scale

    # -- the two branches ---------------------------------------------------------------------
    def cluster(self, feat: torch.Tensor, generator: torch.Generator | None = None,
                jitter: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Clustering tokens and cluster centres.

        Returns tokens (B, L, D) = f3(feat) + pos (never jittered: distances use these) and
        centers (B, P, D) = LN(first P outputs of the aggregation blocks over [cluster tokens; tokens]).
        """
        raw = self._embed(self.embed_cluster, feat)
        tokens = raw + self.pos_embed
        agg_in = self._jitter(raw, generator) + self.pos_embed if jitter else tokens
        x = torch.cat([self.cluster_tokens.expand(feat.shape[0], -1, -1), agg_in], dim=1)
        for blk in self.aggregation:
            x = blk(x)
        return tokens, self.cluster_norm(x[:, : self.cfg.num_clusters])

    def embed_inpaint_tokens(self, feat: torch.Tensor) -> torch.Tensor:
        """Inpainting-branch tokens (f1) before masking: (B, C, h, w) -> (B, L, D)."""
        return self._embed(self.embed_inpaint, feat)

    def _inpaint_hidden(self, tokens: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None,
                        jitter: bool) -> torch.Tensor:
        """Mask-token replacement, position embedding, blocks, norm: (B, L, D), (B, L) -> (B, L, D)."""
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if jitter:
            x = self._jitter(x, generator)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def inpaint_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                       jitter: bool = False) -> torch.Tensor:
        """Restore masked tokens. tokens: (B, L, D) from `embed_inpaint_tokens`; mask: (B, L) bool,
        True = replaced by the mask token. -> (B, L, K*K*C)."""
        return self.head(self._inpaint_hidden(tokens, mask, generator, jitter))

    def inpaint_features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Test-time `unpatchify(inpaint_tokens(tokens, mask))`: (B, L, D), (B, L) -> (B, C, h, w).

        The head and `unpatchify` run as one stride-K transposed convolution (the head's bias as the
        weight of an extra all-ones input channel): the same sums, without the 6-D transpose that costs
        inference runtimes (onnxruntime, TensorRT) more than the head itself.
        """
        x = self._inpaint_hidden(tokens, mask, None, False)
        b = x.shape[0]
        k, g, c, d = self.cfg.patch_size, self.cfg.grid_size, self.in_channels, self.cfg.embed_dim
        grid = torch.cat([x, torch.ones_like(x[:, :, :1])], dim=2).transpose(1, 2).reshape(b, d + 1, g, g)
        weight = torch.cat([self.head.weight, self.head.bias.unsqueeze(1)], dim=1)  # (K*K*C, D + 1)
        weight = weight.t().reshape(d + 1, k, k, c).permute(0, 3, 1, 2)  # (D + 1, C, K, K)
        return F.conv_transpose2d(grid, weight.to(x.dtype), stride=k)

    def inpaint(self, feat: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                jitter: bool = False) -> torch.Tensor:
        """`inpaint_tokens` on the features' own tokens: (B, C, h, w), (B, L) -> (B, L, K*K*C)."""
        return self.inpaint_tokens(self.embed_inpaint_tokens(feat), mask, generator, jitter)

    # -- test time ----------------------------------------------------------------------------
    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic test-time pass. feat: (B, C, h, w) float32.

        Returns recon (B, C, h, w), mask (B, L) bool (adaptive mask), min_dist (B, L) token distances.
        """
        self._check(feat)
        tokens, centers = self.cluster(feat)
        mask, min_dist, _ = reference.adaptive_mask(tokens, centers, self.cfg.mask_lambda)
        return self.inpaint_features(self.embed_inpaint_tokens(feat), mask), mask, min_dist

    # -- training -----------------------------------------------------------------------------
    def random_mask(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Random position and quantity masking: per image int(L * U(0, 1)) tokens at random positions."""
        length = self.cfg.grid_size**2
        ratio = torch.rand(batch, generator=generator, device=device)
        count = (ratio * length).long()  # int() of a non-negative float truncates, as the authors' code
        rank = torch.rand(batch, length, generator=generator, device=device).argsort(1).argsort(1)
        return rank < count.unsqueeze(1)

    def losses(self, feat: torch.Tensor, loss_cfg: LossConfig,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training losses on a batch of features (B, C, h, w).

        rec = w_mse * MSE + w_cos * mean(1 - cos) over each token's whole K*K*C patch vector, all tokens;
        clu = w_intra * mean token min-distance - w_inter * mean distance between distinct centres.
        Returns a dict with "total", "mse", "cos", "intra", "inter" (float32 scalars). Under autocast the
        networks run in bf16/fp16; distances, cosines and the MSE are computed in float32.
        generator: drives masking and jitter; it must live on the features' device.
        """
        self._check(feat)
        if generator is not None and generator.device.type != feat.device.type:
            raise ValueError(f"the random generator is on {generator.device} but the features on {feat.device}: "
                             f"create it on the training device (aminet_edge.device.make_generator)")
        jitter = self.cfg.feature_jitter
        tokens, centers = self.cluster(feat, generator, jitter)
        dist = reference.cluster_distance(tokens, centers)
        intra = dist.min(-1).values.mean()
        p = self.cfg.num_clusters
        inter = reference.cluster_distance(centers, centers).sum((1, 2)).mean() / max(p * p - p, 1)
        mask = self.random_mask(feat.shape[0], generator, feat.device)
        pred = self.inpaint(feat, mask, generator, jitter).float()
        target = self.patchify(feat).float()
        mse = ((pred - target) ** 2).mean()
        cos = (1.0 - reference.cosine(pred, target)).mean()
        w = loss_cfg
        total = w.w_mse * mse + w.w_cos * cos + w.w_intra * intra - w.w_inter * inter
        return {"total": total, "mse": mse, "cos": cos, "intra": intra, "inter": inter}
