"""The exported graphs' input and output tensors, by graph and test-time mask: one place for the exporter
and every runtime backend that feeds or reads them.

Single graph (model[_fp16|_int8|_int8_static].onnx), either mask:
    images (B, 3, S, S) float32 -> amap (B, S, S) float32, score (B,) float32, mask (B, L) bool.
Split pair, model_a (images -> ...) by ModelConfig.mask:
    "adaptive": features (B, C, h, w), cluster_tokens (B, L, D), centers (B, P, D), inpaint_tokens (B, L, D);
        the runtime computes the mask between the halves (C++ / CUDA adaptive_mask kernel);
    "nearest_normal": features, mask (B, L) bool (the guide's, computed in the graph in float32),
        inpaint_tokens; the clustering branch is not in the graph and no kernel runs between the halves;
        with ScoreConfig.map "reconstruction+guide" also guide_distance (B, L) float32 (the guide's token
        distances, for the score map).
model_b, either mask: inpaint_tokens (B, L, D) float32, mask (B, L) bool -> recon (B, C, h, w) float32.
Torch-free and onnx-free: the runtime reads it.
"""

from __future__ import annotations

from aminet_edge.config import uses_guide_map

IO = tuple[tuple[str, ...], tuple[str, ...]]  # (input names, output names)

SINGLE_IO: IO = (("images",), ("amap", "score", "mask"))
MODEL_B_IO: IO = (("inpaint_tokens", "mask"), ("recon",))
_MODEL_A_OUTPUTS = {"adaptive": ("features", "cluster_tokens", "centers", "inpaint_tokens"),
                    "nearest_normal": ("features", "mask", "inpaint_tokens")}


def model_a_io(mask: str, score_map: str = "reconstruction") -> IO:
    """model_a's (inputs, outputs) for the bundle's ModelConfig.mask ("adaptive" or "nearest_normal") and
    ScoreConfig.map."""
    try:
        outputs = _MODEL_A_OUTPUTS[mask]
    except KeyError:
        raise ValueError(f"mask must be one of {', '.join(_MODEL_A_OUTPUTS)}, got {mask!r}") from None
    return ("images",), outputs + (("guide_distance",) if uses_guide_map(score_map) else ())



def mask_in_model_a(mask: str) -> bool:
    """Whether model_a outputs the mask itself (the nearest-normal guide) rather than the clustering
    tokens and centres the runtime's adaptive_mask kernel needs."""
    return "mask" in model_a_io(mask)[1]
