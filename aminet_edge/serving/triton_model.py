"""The Python-backend models of the Triton repositories (run inside Triton's Python stub, torch-free).

`AminetModel` (cpu repository, model "aminet"): IMAGE bytes -> decode -> `Detector.infer` on the
bundle copied into the repository (backend "auto": the bundle's fastest CPU graph) -> SCORE, AMAP,
TOKEN_MASK, IMAGE_SIZE. Triton's dynamic batcher hands `execute` up to max_batch_size requests, which
run as one backend batch. `PreprocessModel` / `PostprocessModel` are the two Python steps around the
TensorRT plan in the gpu repository's ensemble. Contract: aminet_edge.serving.protocol.

Tensors cross the stub boundary by DLPack (`np.from_dlpack`, `Tensor.from_dlpack`): the stub in
tritonserver 2.51 was built against NumPy 1 and its `as_numpy()` / `Tensor(name, array)` misread NumPy 2
arrays, while DLPack is ABI-stable.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.runtime.inputs import InputError, Limits
from aminet_edge.serving.protocol import INPUT_ERROR, decode_image, map_hw

BUNDLE_DIR = "bundle"  # inside the model's version folder

log = logging.getLogger("aminet_edge.serving")


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

    return pb_utils


def _array(request: Any, name: str) -> np.ndarray:
    return np.from_dlpack(_pb().get_input_tensor_by_name(request, name))


def _quiet_capsule_hook(previous: Any) -> Any:
    """sys.unraisablehook that drops NumPy's complaint when the stub has taken over a DLPack capsule.

    The 2.51 stub renames a capsule it consumes to a name NumPy's capsule destructor does not expect, so
    NumPy reports "PyCapsule_GetPointer called with incorrect name" as unraisable and (rightly) leaves
    the memory to the stub: one traceback per output tensor in the server log, no fault. Only that
    exact message is dropped.
    """
    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, ValueError) and "PyCapsule_GetPointer called with incorrect name" in str(exc):
            return
        previous(unraisable)

    return hook


def _tensor(name: str, array: np.ndarray) -> Any:
    """A response tensor with a leading batch dimension of 1 (DLPack capsule of a contiguous copy)."""
    arr = np.ascontiguousarray(np.asarray(array)[None])
    return _pb().Tensor.from_dlpack(name, arr.__dlpack__())


def _error(message: str) -> Any:
    """A failed response (HTTP 500)."""
    pb = _pb()
    return pb.InferenceResponse(error=pb.TritonError(message))


def _input_error(exc: InputError) -> Any:
    """A failed response for a bad request (INVALID_ARG: HTTP 400), "InputError: <problem>"."""
    pb = _pb()
    return pb.InferenceResponse(error=pb.TritonError(INPUT_ERROR + exc.problem, pb.TritonError.INVALID_ARG))


def _image_bytes(request: Any) -> bytes:
    """The request's one image (IMAGE [1, N] uint8) as bytes. InputError for more than one: the protocol
    is one image per request (the dynamic batcher forms the batches), and every image gets its answer."""
    image = _array(request, "IMAGE")
    if image.ndim != 2 or image.shape[0] != 1:
        raise InputError("image", f"IMAGE has shape {list(image.shape)}; one image per request, shape [1, N] "
                                  f"(send each image as its own request: the server batches requests)")
    return image.tobytes()


def _parameters(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return config, params


def _bundle(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"]) / BUNDLE_DIR


def _map_max_side(request: Any) -> int:
    return int(_array(request, "MAP_MAX_SIDE").reshape(-1)[0])


def _setup() -> None:
    import sys

    sys.unraisablehook = _quiet_capsule_hook(sys.unraisablehook)


class AminetModel:
    """The whole pipeline in one Python model (cpu repository)."""

    def initialize(self, args: dict[str, Any]) -> None:
        _setup()
        from aminet_edge.runtime import Detector

        config, params = _parameters(args)
        options: dict[str, Any] = {}
        # instances share the cores: each onnxruntime session gets its part instead of all of them
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        options["threads"] = int(params.get("threads") or max(1, (os.cpu_count() or 1) // instances))
        if params.get("precision"):
            options["precision"] = params["precision"]
        # the decision is the client's: these thresholds are placeholders the server never applies
        self.detector = Detector.load(_bundle(args), backend=params.get("backend") or "auto", threshold=1.0,
                                      pixel_threshold=1.0, batch_size=max(int(config.get("max_batch_size", 1)), 1),
                                      **options)
        self.limits = Limits()
        log.info("aminet model: %s (%s)", self.detector.backend_description, self.detector.backend_reason)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses: list[Any] = [None] * len(requests)
        images, slots, sides = [], [], []
        for i, request in enumerate(requests):
            try:
                data = _image_bytes(request)
                side = _map_max_side(request)
                if side < 0:
                    raise InputError("image", f"MAP_MAX_SIDE must be >= 0, got {side}")
                images.append(decode_image(data, self.limits))
            except InputError as exc:
                responses[i] = _input_error(exc)
                continue
            slots.append(i)
            sides.append(side)
        if images:
            try:
                raws = self.detector.infer(images)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the reason
                for i in slots:
                    responses[i] = _error(f"server error: {type(exc).__name__}: {exc}")
                return responses
            for i, side, raw in zip(slots, sides, raws):
                if isinstance(raw, InputError):
                    responses[i] = _input_error(raw)
                    continue
                amap = raw.amap
                if side:
                    from aminet_edge.runtime.detector import resize_map

                    amap = resize_map(amap, *map_hw(raw.height, raw.width, side))
                responses[i] = pb.InferenceResponse([
                    _tensor("SCORE", np.array([raw.score], np.float32)), _tensor("AMAP", amap.astype(np.float32)),
                    _tensor("TOKEN_MASK", np.asarray(raw.token_mask, bool).reshape(-1)),
                    _tensor("IMAGE_SIZE", np.array([raw.height, raw.width], np.int32))])
        return responses

    def finalize(self) -> None:
        self.detector.close()


class PreprocessModel:
    """gpu ensemble step 1: IMAGE bytes -> images (3, S, S) float32 normalised, IMAGE_SIZE (H, W)."""

    def initialize(self, args: dict[str, Any]) -> None:
        from aminet_edge.bundle import read_config

        _setup()
        self.config = read_config(_bundle(args))
        self.limits = Limits()

    def execute(self, requests: list[Any]) -> list[Any]:
        from aminet_edge.data.images import preprocess
        from aminet_edge.runtime.inputs import to_rgb

        pb = _pb()
        responses = []
        for request in requests:
            try:
                rgb = to_rgb(decode_image(_image_bytes(request), self.limits), None, False, self.limits)
            except InputError as exc:
                responses.append(_input_error(exc))
                continue
            tensor = preprocess(rgb, self.config.model.image_size, self.config.mean, self.config.std)
            responses.append(pb.InferenceResponse([
                _tensor("images", np.asarray(tensor, np.float32)),
                _tensor("IMAGE_SIZE", np.array(rgb.shape[:2], np.int32))]))
        return responses


class PostprocessModel:
    """gpu ensemble step 3: amap (S, S), IMAGE_SIZE, MAP_MAX_SIDE -> AMAP (as MAP_MAX_SIDE asks)."""

    def initialize(self, args: dict[str, Any]) -> None:
        _setup()

    def execute(self, requests: list[Any]) -> list[Any]:
        from aminet_edge.runtime.detector import resize_map

        pb = _pb()
        responses = []
        for request in requests:
            amap = _array(request, "amap").reshape(_array(request, "amap").shape[-2:])
            height, width = (int(v) for v in _array(request, "IMAGE_SIZE").reshape(-1)[:2])
            side = _map_max_side(request)
            if side > 0:
                amap = resize_map(np.asarray(amap, np.float32), *map_hw(height, width, side))
            responses.append(pb.InferenceResponse([_tensor("AMAP", np.asarray(amap, np.float32))]))
        return responses
