"""The exported graphs' input and output tensors, by graph and test-time mask: one place for the exporter
and every runtime backend that feeds or reads them.

Single graph (model[_fp16|_int8|_int8_static].onnx):
    "adaptive": images (B, 3, S, S) float32 -> amap (B, S, S) float32, score (B,) float32, mask (B, L) bool;
    "nearest_normal": the same with a second input guide_bank (M, C) float32, the guide's bank, which the
        graph does not hold: the runtime reads it from the bundle's weights file once per session
        (export/guide_bank.py) and feeds it with every call without copying it again.
Split pair, model_a (images -> ...) by ModelConfig.mask:
    "adaptive": features (B, C, h, w), cluster_tokens (B, L, D), centers (B, P, D), inpaint_tokens (B, L, D);
        the runtime computes the mask between the halves (C++ / CUDA adaptive_mask kernel);
    "nearest_normal": features, guide_tokens (B, L, d) float32 (each token's pooled backbone feature, projected to the guide's d axes, what
        the guide compares with its bank), inpaint_tokens; the clustering branch is not in the graph; the
        runtime computes the guide's distances (the nearest_distance kernel, the bank from the weights file)
        and its mask (distance > threshold) between the halves, and adds the distances to the score map
        when ScoreConfig.map is "reconstruction+guide".
model_b, either mask: inpaint_tokens (B, L, D) float32, mask (B, L) bool -> recon (B, C, h, w) float32.
TensorRT engines of a guided bundle are built from these graphs with the bank baked back in
(guide_bank.bake_guide): the single engine takes images only, engine A outputs features, mask,
inpaint_tokens (and guide_distance (B, L) float32 with the guide map): `baked_model_a_io`.
Torch-free and onnx-free: the runtime reads it.
"""

from __future__ import annotations

from aminet_edge.config import uses_guide_map

IO = tuple[tuple[str, ...], tuple[str, ...]]  # (input names, output names)

GUIDE_BANK = "guide_bank"  # the single graph's bank input (M, C) float32 (nearest-normal guide)
GUIDE_TOKENS = "guide_tokens"  # model_a's pooled token features (B, L, C) float32 (nearest-normal guide)
SINGLE_OUTPUTS = ("amap", "score", "mask")
MODEL_B_IO: IO = (("inpaint_tokens", "mask"), ("recon",))
_MODEL_A_OUTPUTS = {"adaptive": ("features", "cluster_tokens", "centers", "inpaint_tokens"),
                    "nearest_normal": ("features", GUIDE_TOKENS, "inpaint_tokens")}


def _check_mask(mask: str) -> None:
    if mask not in _MODEL_A_OUTPUTS:
        raise ValueError(f"mask must be one of {', '.join(_MODEL_A_OUTPUTS)}, got {mask!r}")


def single_io(mask: str) -> IO:
    """The single graph's (inputs, outputs) for the bundle's ModelConfig.mask."""
    _check_mask(mask)
    return ("images",) + ((GUIDE_BANK,) if mask == "nearest_normal" else ()), SINGLE_OUTPUTS


def model_a_io(mask: str) -> IO:
    """model_a's (inputs, outputs) for the bundle's ModelConfig.mask ("adaptive" or "nearest_normal")."""
    _check_mask(mask)
    return ("images",), _MODEL_A_OUTPUTS[mask]


def baked_model_a_io(mask: str, score_map: str = "reconstruction") -> IO:
    """(inputs, outputs) of engine A, built from model_a with the guide's bank baked in (guide_bank.bake_guide):
    with the guide, features, mask (B, L) bool, inpaint_tokens and, with the guide map, guide_distance."""
    if not guided(mask):
        return model_a_io(mask)
    return ("images",), ("features", "mask", "inpaint_tokens") + (("guide_distance",) if uses_guide_map(score_map)
                                                                 else ())


def guided(mask: str) -> bool:
    """Whether graphs of this ModelConfig.mask need the nearest-normal guide's bank from the weights file."""
    _check_mask(mask)
    return mask == "nearest_normal"
