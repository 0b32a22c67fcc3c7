"""Calibrating the adaptive mask's lambda from held-out normal images to a target share of masked tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aminet_edge.training.calibrate import mask_lambda_for_share


def test_lambda_for_share_is_the_z_score_quantile() -> None:
    """Calibrated lambda = the (floor(share * N) + 1)-th largest token z-score (d - mean) / std of its
    cluster, computed here with NumPy loops, independent of the op the calibration bisects on."""
    gen = torch.Generator().manual_seed(1)
    tokens, centers = torch.randn(5, 64, 8, generator=gen), torch.randn(5, 3, 8, generator=gen)
    t, c = tokens.double().numpy(), centers.double().numpy()
    z = []
    for i in range(5):
        diff = t[i][:, None] - c[i][None]
        cos = (t[i] @ c[i].T) / np.linalg.norm(t[i], axis=1)[:, None] / np.linalg.norm(c[i], axis=1)[None]
        d = np.linalg.norm(diff, axis=2) * (1 - cos)
        near, dmin = d.argmin(1), d.min(1)
        for p in range(3):
            members = dmin[near == p]
            if len(members) > 1:
                z += list((members - members.mean()) / members.std(ddof=1))
    z_desc = np.sort(z)[::-1]
    total = 5 * 64  # shares count every token; singleton clusters are never masked
    for share in (0.1, 0.3):
        lam = mask_lambda_for_share(tokens, centers, share)
        k = int(np.floor(share * total))
        assert lam == pytest.approx(z_desc[k], abs=1e-4)
        assert (z_desc > lam + 1e-4).sum() <= share * total


def test_share_out_of_range() -> None:
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        mask_lambda_for_share(torch.zeros(1, 4, 2), torch.ones(1, 2, 2), 1.0)
