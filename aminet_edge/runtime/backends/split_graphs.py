"""What the CPU split backends (onnxruntime-split, openvino-split) run between model_a and model_b.

model_a's outputs depend on the bundle's test-time mask (aminet_edge.export.graph_io): with the paper's
adaptive mask the C++ adaptive_mask kernel makes the mask from model_a's cluster tokens and centres; with
the nearest-normal guide the C++ nearest_distance kernel measures model_a's guide_tokens against the
guide's bank (read once, at load, from the bundle's verified weights file: export/guide_bank.py) and the
mask is distance > threshold. After model_b, the C++ score_map kernel either way (with the guide's token
distances when the score map adds them). Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig
from aminet_edge.config import uses_guide_map
from aminet_edge.export.graph_io import GUIDE_TOKENS, guided, model_a_io


class SplitGlue:
    """The bundle's model_a outputs and the mask step for them. `ops`: the aminet_edge.ops dispatcher."""

    def __init__(self, bundle: Path, config: BundleConfig) -> None:
        from aminet_edge import ops  # numpy arrays go to the C++ kernels, torch-free

        self.ops: Any = ops
        self.a_outputs = model_a_io(config.model.mask)[1]
        self.guided = guided(config.model.mask)
        self.guide = None
        if self.guided:
            from aminet_edge.export.guide_bank import read_guide

            self.guide = read_guide(bundle, config)
        self.guide_map = uses_guide_map(config.score.map)
        self.lam = float(config.model.mask_lambda)
        self.out_hw = (config.model.image_size, config.model.image_size)
        self.sigma = float(config.score.sigma)
        self.image_score = config.score.image_score
        self.grid = config.model.grid_size
        self.guide_weight = float(config.score.guide_weight)

    @property
    def mask_step(self) -> str:
        """For describe(): where the mask comes from."""
        if self.guide is not None:
            return f"C++ nearest_distance against the nearest-normal guide's bank ({len(self.guide.bank)} tokens)"
        return "C++ adaptive_mask"

    def mask(self, a: dict[str, np.ndarray]) -> np.ndarray:
        """The (B, L) bool mask model_b takes, from model_a's outputs `a` (name -> array); with the guide
        also stores its token distances (B, L) float32 in a["guide_distance"] for `score_map`."""
        if self.guide is not None:
            dist = np.asarray(self.ops.nearest_distance(a[GUIDE_TOKENS], self.guide.bank, backend="auto"), np.float32)
            a["guide_distance"] = dist
            return np.ascontiguousarray(dist > self.guide.threshold)
        mask = self.ops.adaptive_mask(a["cluster_tokens"], a["centers"], self.lam, backend="auto")[0]
        return np.ascontiguousarray(mask, bool)

    def score_map(self, a: dict[str, np.ndarray], recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """amap (B, S, S) and score (B,) float32 from model_a's outputs `a` (after `mask`) and the
        reconstruction (B, C, h, w)."""
        tokens = None
        if self.guide_map:
            tokens = np.ascontiguousarray(a["guide_distance"], np.float32).reshape(-1, self.grid, self.grid)
        amap, score = self.ops.score_map(a["features"], recon, self.out_hw, self.sigma, self.image_score,
                                         backend="auto", token_map=tokens, token_weight=self.guide_weight)
        return np.asarray(amap, np.float32), np.asarray(score, np.float32)
