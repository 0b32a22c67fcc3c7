"""Mask recall and normal-token masking against a hand computation on a 3-image, 2 x 2-token case."""

from __future__ import annotations

import numpy as np
import pytest

from aminet_edge.evaluation.mask_coverage import mask_coverage, token_defect_fraction


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """S = 4 px, grid 2 (tokens of 2 x 2 px: t0 top-left, t1 top-right, t2 bottom-left, t3 bottom-right)."""
    pix = np.zeros((3, 4, 4), bool)
    pix[1, 0:2, 0:2] = True  # image 1 ("a"): t0 fully defective (1.0)
    pix[1, 2, 2] = True  # ... and one pixel of t3 (0.25)
    pix[2, 0, 3] = True  # image 2 ("b"): one pixel of t1 (0.25)
    pix[2, 2:4, 0] = True
    pix[2, 2, 1] = True  # ... three pixels of t2 (0.75)
    tok = np.array([[1, 0, 0, 0],  # normal image: 1 of 4 masked
                    [1, 0, 1, 1],
                    [0, 1, 0, 1]], bool)
    return tok, pix, np.array([0, 1, 1]), ["good", "a", "b"]


def test_token_fraction_is_share_of_defect_pixels_row_major() -> None:
    _, pix, _, _ = _case()
    np.testing.assert_array_equal(token_defect_fraction(pix, 2),
                                  [[0, 0, 0, 0], [1.0, 0, 0, 0.25], [0, 0.25, 0.75, 0]])
    rng = np.random.default_rng(0)
    big = rng.random((2, 12, 12)) < 0.3
    loop = [[big[n, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].mean() for r in range(3) for c in range(3)] for n in range(2)]
    np.testing.assert_allclose(token_defect_fraction(big, 3), loop, rtol=0, atol=1e-12)


def test_half_threshold_by_hand() -> None:
    tok, pix, labels, types = _case()
    c = mask_coverage(tok, pix, labels, types, fraction=0.5)
    # defect tokens: image 1 t0 (masked), image 2 t2 (not masked); t3 / t1 (0.25) are neither
    assert (c["mask_recall"], c["defect_tokens"]) == (0.5, 2)
    assert c["per_type"]["a"]["mask_recall"] == 1.0 and c["per_type"]["b"]["mask_recall"] == 0.0
    # normal tokens on defect images: image 1 t1, t2 (t2 masked); image 2 t0, t3 (t3 masked)
    assert (c["normal_region_masked_share"], c["normal_region_tokens"]) == (0.5, 4)
    assert c["per_type"]["a"]["normal_region_masked_share"] == 0.5
    assert (c["normal_masked_share"], c["normal_tokens"]) == (0.25, 4)


def test_fraction_bound_is_inclusive() -> None:
    tok, pix, labels, types = _case()
    c = mask_coverage(tok, pix, labels, types, fraction=0.25)
    # now image 1 t3 (masked) and image 2 t1 (masked) are defect tokens too
    assert (c["mask_recall"], c["defect_tokens"]) == (0.75, 4)
    assert c["per_type"]["a"]["mask_recall"] == 1.0 and c["per_type"]["b"]["mask_recall"] == 0.5


def test_bad_shapes_say_what() -> None:
    tok, pix, labels, types = _case()
    with pytest.raises(ValueError, match="agree in N"):
        mask_coverage(tok[:2], pix, labels, types)
    with pytest.raises(ValueError, match="square grid"):
        mask_coverage(tok[:, :3], pix, labels, types)
    with pytest.raises(ValueError, match="multiple of the token grid"):
        token_defect_fraction(pix[:, :3, :3], 2)

