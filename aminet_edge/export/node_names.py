"""Which nodes of an exported graph an nn.Module ran, and which of those make up the inpainting branch.

The torch exporter names a node "/<module>/.../<op>" when an nn.Module ran it (backbone, embeddings,
transformer blocks, norms) and "/<op>" when plain functions did (the reference adaptive_mask and
score_map, the token glue between them, the inpainting head traced as a function); ONNX readers keep
those names, and nodes a reader or quantiser creates itself have no leading "/". The nearest-normal
guide (aminet_edge.model.guide, "/guide/...") is a module but not a network: its distances decide the mask.
- OpenVINO bf16 mixed rounds the networks' module nodes only (`in_network`), so the cluster distances,
  the mask's mean + lambda * std boundary, the guide's distances and threshold and the score map stay
  float32.
- The OpenVINO int8 graph quantises the inpainting branch only (`in_inpainting`: its patch embedding,
  the inpainting transformer blocks and their norm), so everything the mask is computed from stays
  float32 as well: the mask's decisions are sensitive (a trained bottle bundle: tokens of norm ~860,
  nearest-centre R ~0.13, 1 - cos ~1e-4), and int8 in the backbone and clustering transformer changed
  41 % of MVTec bottle's mask tokens (BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy").
Torch-free and onnx-free: the runtime reads it too.
"""

from __future__ import annotations

import re

_MODULE_NODE = re.compile(r"^/[^/]+/")
_GUIDE_NODE = re.compile(r"^/guide/")  # the nearest-normal guide (Pipeline.guide)
_INPAINTING_NODE = re.compile(r"^/(embed_inpaint|blocks\.\d+|norm)/")  # AMINet's inpainting submodules


def in_network(name: str) -> bool:
    """Whether the node named `name` was run by one of the networks' nn.Modules (backbone, embeddings,
    transformers, norms), the guide's excepted."""
    return _MODULE_NODE.match(name) is not None and not in_guide(name)


def in_guide(name: str) -> bool:
    """Whether the node named `name` belongs to the nearest-normal guide (pooling, bank product, ArgMin,
    Gather, norm, threshold)."""
    return _GUIDE_NODE.match(name) is not None


def in_inpainting(name: str) -> bool:
    """Whether the node named `name` belongs to the inpainting branch (embedding, blocks, final norm)."""
    return _INPAINTING_NODE.match(name) is not None
