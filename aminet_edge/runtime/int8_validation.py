"""Accept an int8 graph only where it decides like fp32 on the bundle's held-out normal images.

An int8 graph (`export --precision int8`: onnxruntime's model_int8 / model_b_int8, OpenVINO's
model_int8_static) is run next to the same backend in fp32 on normal images the model was not trained on
(the bundle's held-out split, which also calibrated its thresholds). It is accepted when
- at most MAX_TOKENS_CHANGED (0.5 %) of all the images' mask tokens differ from fp32's, and
- the calibrated normal thresholds classify every image alike: the image decision (score > image
  threshold) and the pixel decision of its map maximum (max(map) > pixel threshold, the statistic the
  pixel threshold is calibrated on) are fp32's.
The figures (and the verdict) go into the graph's record in config.json as "validation"
(bundle.int8_accepted reads it); only accepted graphs are candidates of `Detector.load(backend="auto")`.
A refused graph stays usable when asked for by name (`precision="int8"`). Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import graph_key, has_graph, read_config, write_config
from aminet_edge.runtime.detector import Detector, RawOutput
from aminet_edge.runtime.inputs import InputError

log = logging.getLogger("aminet_edge.runtime")

MAX_TOKENS_CHANGED = 0.005  # share of all mask tokens that may differ from fp32's
# graph (part, bundle precision) -> the backend that runs it with precision="int8"
INT8_GRAPHS = {("model", "int8"): "onnxruntime", ("model_b", "int8"): "onnxruntime-split",
               ("model", "int8_static"): "openvino"}


@dataclass(frozen=True)
class Validation:
    """One int8 graph against fp32 on `images` held-out normal images (shares are fractions, not %)."""

    accepted: bool
    backend: str
    images: int
    mask_tokens_changed: float
    image_decisions_changed: int
    pixel_decisions_changed: int
    max_score_rel_diff: float
    max_tokens_changed: float = MAX_TOKENS_CHANGED

    def summary(self) -> str:
        verdict = "accepted" if self.accepted else "refused"
        return (f"{verdict}: {100 * self.mask_tokens_changed:.3f} % of mask tokens changed (limit "
                f"{100 * self.max_tokens_changed:g} %), {self.image_decisions_changed} image and "
                f"{self.pixel_decisions_changed} pixel decision(s) of {self.images} held-out normal images "
                f"changed (limit 0), scores up to {100 * self.max_score_rel_diff:.2f} % off ({self.backend} "
                "int8 vs fp32)")


def compare(fp32: Sequence[RawOutput], int8: Sequence[RawOutput], image_threshold: float,
            pixel_threshold: float, backend: str) -> Validation:
    """The verdict for one graph from both precisions' raw outputs on the same images (thresholds in raw
    score units: the bundle's calibrated normal ones)."""
    if not fp32 or len(fp32) != len(int8):
        raise ValueError(f"need the same, non-empty set of images in both precisions ({len(fp32)} vs {len(int8)})")
    tokens = sum(int(np.size(a.token_mask)) for a in fp32)
    changed = sum(int(np.count_nonzero(a.token_mask != b.token_mask)) for a, b in zip(fp32, int8))
    images = sum((a.score > image_threshold) != (b.score > image_threshold) for a, b in zip(fp32, int8))
    pixels = sum((float(a.amap.max()) > pixel_threshold) != (float(b.amap.max()) > pixel_threshold)
                 for a, b in zip(fp32, int8))
    rel = max(abs(b.score - a.score) / max(abs(a.score), 1e-12) for a, b in zip(fp32, int8))
    share = changed / tokens
    return Validation(share <= MAX_TOKENS_CHANGED and images == 0 and pixels == 0, backend, len(fp32), share,
                      int(images), int(pixels), float(rel))


def _raw(detector: Detector, images: Sequence[Any]) -> list[RawOutput]:
    """Raw outputs one image per call (as the int8 graphs run), so both precisions see batch 1."""
    out = [o for image in images for o in detector.infer([image])]
    bad = [o for o in out if isinstance(o, InputError)]
    if bad:
        raise bad[0]
    return out  # type: ignore[return-value]


def validate_int8(bundle: str | Path, images: Sequence[Any], record: bool = True) -> dict[str, Validation | str]:
    """Validate every int8 graph `bundle` records on `images` (held-out normal images: paths or arrays, as
    `Detector.predict` takes them); with `record`, write each verdict into its graph record in config.json.
    Returns {graph key: Validation, or why it could not be run (backend not installed)}."""
    if not images:
        raise ValueError("no held-out normal images to validate the int8 graphs on")
    bundle = Path(bundle)
    config = read_config(bundle)
    results: dict[str, Validation | str] = {}
    for (part, precision), backend in INT8_GRAPHS.items():
        if not has_graph(config, part, precision):
            continue
        key = graph_key(part, precision)
        try:
            with Detector.load(bundle, backend=backend, precision="fp32", batch_size=1) as fp32, \
                    Detector.load(bundle, backend=backend, precision="int8", batch_size=1) as int8:
                verdict = compare(_raw(fp32, images), _raw(int8, images), fp32.thresholds.base_image,
                                  fp32.thresholds.base_pixel, backend)
        except ImportError as exc:  # BackendUnavailableError: e.g. openvino not installed here
            results[key] = f"not validated: {exc}"
            continue
        results[key] = verdict
        log.info("%s: %s", key, verdict.summary())
    if record and any(isinstance(v, Validation) for v in results.values()):
        now = read_config(bundle)  # as it is now: what another command recorded meanwhile is kept
        graphs = now.artifacts.get("onnx") or {}
        for key, result in results.items():
            if not isinstance(result, Validation):
                continue
            if graphs.get(key, {}).get("sha256") != config.artifacts["onnx"][key]["sha256"]:
                log.warning("%s: %s was replaced while it was validated: its verdict is not recorded; validate it "
                            "again (`aminet-edge export %s --precision int8`)", bundle, key, bundle)
                continue
            graphs[key]["validation"] = asdict(result)
        write_config(bundle, now)
    return results
