"""AMI-Net module: token layout, position embedding, masking statistics, losses by hand, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aminet_edge.config import LossConfig, ModelConfig
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.transformer import sincos_position_embedding

TINY = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=2,
                   num_clusters=4)


def make(channels: int = 6, cfg: ModelConfig = TINY, seed: int = 0) -> AMINet:
    torch.manual_seed(seed)
    return AMINet(cfg, channels)


def test_shapes_and_patch_layout() -> None:
    net = make()
    feat = torch.randn(2, 6, 16, 16)
    tokens = net.patchify(feat)
    assert tokens.shape == (2, 16, 4 * 4 * 6)
    # token 5 = grid row 1, col 1 -> feature rows 4..7, cols 4..7; vector ordered (row, col, channel)
    assert torch.equal(tokens[1, 5].reshape(4, 4, 6), feat[1, :, 4:8, 4:8].permute(1, 2, 0))
    assert torch.equal(net.unpatchify(tokens), feat)
    recon, mask, dist = net.eval()(feat)
    assert recon.shape == feat.shape and mask.shape == (2, 16) and mask.dtype == torch.bool
    assert dist.shape == (2, 16)


def test_fused_head_equals_head_then_unpatchify() -> None:
    """inpaint_features (transposed conv) against the training path's Linear head + unpatchify."""
    net = make().eval()
    torch.nn.init.normal_(net.head.bias)  # non-zero bias: its placement per (row, col, channel) matters
    feat = torch.randn(2, 6, 16, 16)
    tokens = net.embed_inpaint_tokens(feat)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        want = net.unpatchify(net.inpaint_tokens(tokens, mask))
        got = net.inpaint_features(tokens, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_position_embedding_matches_mae_formula() -> None:
    dim, grid = 16, 3
    emb = sincos_position_embedding(dim, grid).numpy()
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        want = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
        np.testing.assert_allclose(emb[index], want, rtol=1e-6, atol=1e-7)


def test_random_mask_quantity_is_uniform_and_seeded() -> None:
    net = make()
    length = TINY.grid_size**2
    gen = torch.Generator().manual_seed(3)
    masks = net.random_mask(4000, gen, torch.device("cpu"))
    counts = masks.sum(1).float()
    assert counts.min() >= 0 and counts.max() <= length - 1  # int(L * u) with u < 1
    assert abs(counts.mean().item() - (length - 1) / 2) < 0.3  # E[int(L * u)] = (L - 1) / 2 for u ~ U(0, 1)
    hist = torch.bincount(masks.sum(1), minlength=length).float() / 4000
    assert hist.max() < 2.0 / length  # every count about equally likely (1/L each)
    positions = masks.float().mean(0)
    assert positions.max() - positions.min() < 0.08  # no position favoured
    again = net.random_mask(4000, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(masks, again)


def test_losses_match_hand_computation() -> None:
    net = make()
    feat = torch.randn(2, 6, 16, 16)
    gen_state = torch.Generator().manual_seed(7)
    losses = net.losses(feat, LossConfig(), gen_state)

    # recompute by hand with NumPy, drawing the same random mask from the same generator
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        tokens, centers = net.cluster(feat)
        mask = net.random_mask(2, gen, torch.device("cpu"))
        pred = net.inpaint(feat, mask).numpy().astype(np.float64)
    t, c = tokens.detach().numpy().astype(np.float64), centers.detach().numpy().astype(np.float64)

    def r(a: np.ndarray, b: np.ndarray) -> float:
        return np.linalg.norm(a - b) * (1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    intra = np.mean([min(r(t[i, j], cc) for cc in c[i]) for i in range(2) for j in range(t.shape[1])])
    p = c.shape[1]
    inter = np.mean([sum(r(c[i, a], c[i, b]) for a in range(p) for b in range(p) if a != b) / (p * p - p)
                     for i in range(2)])
    target = net.patchify(feat).numpy().astype(np.float64)
    mse = np.mean((pred - target) ** 2)
    cos = np.mean(1 - (pred * target).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1)))
    want = {"mse": mse, "cos": cos, "intra": intra, "inter": inter,
            "total": mse + 5 * cos + intra - 0.1 * inter}
    for key, value in want.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4), key


def test_test_time_is_deterministic() -> None:
    net = make().eval()
    feat = torch.randn(3, 6, 16, 16)
    with torch.no_grad():
        a, b = net(feat), net(feat)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_tiny_model_learns() -> None:
    """On structured features (smooth random fields), 60 AdamW steps cut the loss by a clear margin."""
    net = make(cfg=TINY)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 6, 4, 4, generator=g)
    feats = torch.nn.functional.interpolate(base.repeat(16, 1, 1, 1) + 0.1 * torch.randn(16, 6, 4, 4, generator=g),
                                            size=(16, 16), mode="bilinear", align_corners=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95))
    history = []
    for step in range(60):
        loss = net.losses(feats[(step % 4) * 4:(step % 4) * 4 + 4], LossConfig(), g)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        history.append((loss["mse"] + 5 * loss["cos"]).item())
    assert np.mean(history[-8:]) < 0.5 * np.mean(history[:8])


def test_bad_feature_shape_is_named() -> None:
    net = make()
    with pytest.raises(ValueError, match=r"\(B, 6, 16, 16\)"):
        net(torch.randn(1, 5, 16, 16))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(embed_dim=30, num_heads=4).validate()
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig(image_size=250).validate()


def test_feature_jitter_only_perturbs_training() -> None:
    """With jitter on, training losses change (noise ~ ||token|| / D * 20) and repeat with the seed; the
    test-time pass is unaffected."""
    from dataclasses import replace

    plain, jittered = make(), make(cfg=replace(TINY, feature_jitter=True))
    feat = torch.randn(2, 6, 16, 16)
    a = plain.losses(feat, LossConfig(), torch.Generator().manual_seed(1))
    b = jittered.losses(feat, LossConfig(), torch.Generator().manual_seed(1))
    c = jittered.losses(feat, LossConfig(), torch.Generator().manual_seed(1))
    assert a["mse"].item() != b["mse"].item() and b["mse"].item() == c["mse"].item()
    tokens_plain, _ = jittered.cluster(feat, torch.Generator().manual_seed(1), jitter=False)
    tokens_jit, _ = jittered.cluster(feat, torch.Generator().manual_seed(1), jitter=True)
    assert torch.equal(tokens_plain, tokens_jit)  # distances use the un-jittered clustering tokens
    with torch.no_grad():
        for x, y in zip(plain.eval()(feat), jittered.eval()(feat)):
            assert torch.equal(x, y)
