"""What the CPU split backends (onnxruntime-split, openvino-split) run between model_a and model_b.

model_a's outputs depend on the bundle's test-time mask (aminet_edge.export.graph_io): with the paper's
adaptive mask the C++ adaptive_mask kernel makes the mask from model_a's cluster tokens and centres; with
the nearest-normal guide model_a outputs the mask itself and nothing runs between the halves. After
model_b, the C++ score_map kernel either way (with the guide's token distances from model_a when the score
map adds them). Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig
from aminet_edge.export.graph_io import mask_in_model_a, model_a_io


class SplitGlue:
    """The bundle's model_a outputs and the mask step for them. `ops`: the aminet_edge.ops dispatcher."""

    def __init__(self, config: BundleConfig) -> None:
        from aminet_edge import ops  # numpy arrays go to the C++ kernels, torch-free

        self.ops: Any = ops
        self.a_outputs = model_a_io(config.model.mask, config.score.map)[1]
        self.guided = mask_in_model_a(config.model.mask)
        self.lam = float(config.model.mask_lambda)
        self.out_hw = (config.model.image_size, config.model.image_size)
        self.sigma = float(config.score.sigma)
        self.image_score = config.score.image_score
        self.grid = config.model.grid_size
        self.guide_weight = float(config.score.guide_weight)

    @property
    def mask_step(self) -> str:
        """For describe(): where the mask comes from."""
        return "mask from model_a's nearest-normal guide" if self.guided else "C++ adaptive_mask"

    def mask(self, a: dict[str, np.ndarray]) -> np.ndarray:
        """The (B, L) bool mask model_b takes, from model_a's outputs `a` (name -> array)."""
        if self.guided:
            return np.ascontiguousarray(a["mask"], bool)
        mask = self.ops.adaptive_mask(a["cluster_tokens"], a["centers"], self.lam, backend="auto")[0]
        return np.ascontiguousarray(mask, bool)

    def score_map(self, a: dict[str, np.ndarray], recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """amap (B, S, S) and score (B,) float32 from model_a's outputs `a` and the reconstruction (B, C, h, w)."""
        dist = a.get("guide_distance")
        tokens = None if dist is None else np.ascontiguousarray(dist, np.float32).reshape(-1, self.grid, self.grid)
        amap, score = self.ops.score_map(a["features"], recon, self.out_hw, self.sigma, self.image_score,
                                         backend="auto", token_map=tokens, token_weight=self.guide_weight)
        return np.asarray(amap, np.float32), np.asarray(score, np.float32)
