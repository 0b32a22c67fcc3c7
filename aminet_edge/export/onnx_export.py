"""Export a bundle's inference graph to ONNX (opset 17, standard ops, dynamic batch).

Single graph `model.onnx` (`model_fp16.onnx`):
    images (B, 3, S, S) float32, normalised with the bundle's mean/std (and, with the nearest-normal guide,
    guide_bank (M, C) float32, the guide's bank)
    -> amap (B, S, S) float32, score (B,) float32, mask (B, L) bool.
Split pair, for the custom-kernel pipeline (C++ / CUDA score_map, and the test-time mask, run between the halves):
    model_a.onnx, the paper's adaptive mask: images -> features (B, C, h, w), cluster_tokens (B, L, D)
                  (with position embedding), centers (B, P, D), inpaint_tokens (B, L, D) (inpainting patch
                  embedding, before masking); the runtime's adaptive_mask kernel makes the mask from them;
                  with the nearest-normal guide (ModelConfig.mask = "nearest_normal"): images -> features,
                  guide_tokens (B, L, d) (the tokens' pooled features on the guide's d axes), inpaint_tokens; no clustering branch;
                  the runtime's nearest_distance kernel makes the guide's distances and mask from them
    model_b.onnx: inpaint_tokens (B, L, D), mask (B, L) bool -> recon (B, C, h, w)
(tensor names: aminet_edge.export.graph_io). No graph holds the guide's bank: the bundle keeps it once, in
its weights file, and every graph record says so ("guide_bank": "weights", bundle.GUIDE_BANK_RECORD).
fp16: backbone and transformers run in float16; distances (cluster statistics or the guide's), the mask
decision and the score map in float32 (explicit Casts in the graph, as TensorRT-RTX networks are strongly
typed). Graph I/O stays float32.
int8 (CPU onnxruntime only): the fp32 graphs with the inpainting blocks' MatMuls quantised
(aminet_edge.export.quantize; never the guide's bank product); model_a has none, so the int8 pair is
model_a.onnx + model_b_int8.onnx.
With calibration data also OpenVINO's model_int8_static.onnx: the single graph statically quantised by
NNCF, scales calibrated on the data's normal training images (aminet_edge.export.quantize.quantize_static).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from aminet_edge.bundle import (SCHEMA_VERSION, WEIGHTS_FILE, BundleConfig, graph_computes, graph_key,
                                graph_layout, install_artifacts, make_record, read_config)
from aminet_edge.export import onnx_name
from aminet_edge.export.graph_checks import check_graph
from aminet_edge.export.graph_io import GUIDE_BANK, MODEL_B_IO, guided, model_a_io, single_io
from aminet_edge.export.guide_bank import read_guide
from aminet_edge.export.graph_rewrites import drop_input_identity_casts, fold_pads_into_convs
from aminet_edge.files import write_temp
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import FeatureExtractor
from aminet_edge.model.guide import NearestNormalGuide
from aminet_edge.model.pipeline import Pipeline, load_pipeline, token_map
from aminet_edge.ops import reference

OPSET = 17


def _mask(aminet: AMINet, guide: NearestNormalGuide | None, feat: torch.Tensor,
          bank: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The test-time mask (B, L) bool from backbone features (B, C, h, w) of any dtype, decided in float32,
    and the guide's token distances (B, L) float32: the guide's, against `bank` (M, C) float32, when there
    is one (the clustering branch is then not traced), else the adaptive mask and None
    (reference.adaptive_mask casts to float32 itself: distances and boundaries never see fp16)."""
    if guide is not None:
        return guide(feat.float(), bank)
    tokens, centers = aminet.cluster(feat)
    return reference.adaptive_mask(tokens.float(), centers.float(), aminet.cfg.mask_lambda)[0], None


class MixedPipeline(nn.Module):
    """`Pipeline` with backbone and transformers in `dtype`, the mask (statistics or guide) and score map
    in float32.

    Same I/O as Pipeline: images (B, 3, S, S) float32 (and the guide's bank (M, C) float32) -> amap (B, S, S),
    score (B,) float32, mask (B, L).
    """

    def __init__(self, pipeline: Pipeline, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.extractor = copy.deepcopy(pipeline.extractor).to(dtype)
        self.aminet = copy.deepcopy(pipeline.aminet).to(dtype)
        self.guide = pipeline.guide  # not cast: its bank is float16 already, its threshold stays float32
        self.score = pipeline.score
        self.dtype = dtype

    def forward(self, images: torch.Tensor,
                guide_bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.aminet
        feat = self.extractor(images.to(self.dtype))
        mask, dist = _mask(net, self.guide, feat, guide_bank)
        recon = net.inpaint_features(net.embed_inpaint_tokens(feat), mask)
        amap, score = reference.score_map(feat.float(), recon.float(), (images.shape[-2], images.shape[-1]),
                                          self.score.sigma, self.score.image_score,
                                          token_map(self.score, dist, net.cfg.grid_size), self.score.guide_weight)
        return amap, score, mask


class PartA(nn.Module):
    """images (B, 3, S, S) float32 -> features (B, C, h, w), cluster_tokens (B, L, D), centers (B, P, D),
    inpaint_tokens (B, L, D), all float32 (computed in `dtype`); with a `guide`: features, guide_tokens
    (B, L, C) (each token's pooled feature, in float32: what the guide compares with its bank),
    inpaint_tokens (graph_io.model_a_io)."""

    def __init__(self, extractor: FeatureExtractor, aminet: AMINet, dtype: torch.dtype = torch.float32,
                 guide: NearestNormalGuide | None = None) -> None:
        super().__init__()
        self.extractor, self.aminet, self.dtype, self.guide = extractor, aminet, dtype, guide

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat = self.extractor(images.to(self.dtype))
        if self.guide is not None:
            tokens = self.guide.tokens(feat.float())  # pooled, projected when the guide has a projection
            return feat.float(), tokens, self.aminet.embed_inpaint_tokens(feat).float()
        tokens, centers = self.aminet.cluster(feat)
        inpaint = self.aminet.embed_inpaint_tokens(feat)
        return feat.float(), tokens.float(), centers.float(), inpaint.float()


class PartB(nn.Module):
    """inpaint_tokens (B, L, D) float32, mask (B, L) bool -> recon (B, C, h, w) float32.

    `AMINet.inpaint_features` (mask-token replacement, position embedding, blocks, norm, head and
    unpatchify as one transposed convolution).
    """

    def __init__(self, aminet: AMINet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.aminet, self.dtype = aminet, dtype

    def forward(self, inpaint_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        net = self.aminet
        return net.inpaint_features(inpaint_tokens.to(self.dtype), mask).float()


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], io_names: tuple[tuple[str, ...], tuple[str, ...]],
            path: Path, opset: int) -> Path:
    """Trace `module` with the legacy exporter, batch axis dynamic (the guide's bank input: static shape);
    fold pads into convolutions, drop casts of an input to its own type; check the graph. Returns a
    temporary file beside `path` holding it (aminet_edge.files.write_temp): `path` itself is replaced only
    once every graph of the export is written (bundle.install_artifacts)."""
    inputs, outputs = io_names
    axes = {n: {0: "batch"} for n in inputs + outputs if n != GUIDE_BANK}
    with torch.no_grad():
        traced = write_temp(path, lambda tmp: torch.onnx.export(
            module, args, str(tmp), input_names=list(inputs), output_names=list(outputs), dynamic_axes=axes,
            opset_version=opset, do_constant_folding=True, dynamo=False))
        shapes = [o.shape for o in _as_tuple(module(*args))]
    try:
        model = onnx.load(str(traced))
    finally:
        traced.unlink()
    fold_pads_into_convs(model)
    drop_input_identity_casts(model)
    # the tracer leaves some non-batch output dims symbolic; they are fixed by the config, so state them
    for out, shape in zip(model.graph.output, shapes):
        for dim, size in list(zip(out.type.tensor_type.shape.dim, shape))[1:]:
            dim.Clear()
            dim.dim_value = size
    onnx.checker.check_model(model)
    check_graph(model, where=str(path))
    return write_temp(path, lambda tmp: onnx.save(model, str(tmp)))  # one file: graphs < 2 GiB, no external data


EXPORT_PRECISIONS = ("fp32", "fp16", "int8")  # int8 also writes int8_static when given calibration data


def export_onnx(bundle: str | Path, precision: str = "fp32", opset: int = OPSET, split: bool = True,
                device: str = "cpu", calibration_data: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Export the bundle's pipeline to ONNX next to its weights and record the files in config.json
    (path, sha256, bytes, the weights' sha256). A schema 1 bundle is upgraded on the way: its weights'
    checksum is recorded as they are now, its old unverifiable graph and engine records dropped.

    Returns {"model": path} plus {"model_a", "model_b"} when `split`. Deterministic: the same bundle
    gives byte-identical files. Raises GraphCheckError if the graph holds a node TensorRT rejects.
    "int8" writes (and records) the fp32 graphs first, then their quantised copies; with
    `calibration_data` (data set roots whose training images are normal, e.g. the ones trained on) also
    OpenVINO's statically quantised single graph {"model_int8_static": path} (needs nncf).
    device: where the model is traced ("cpu", "auto", "cuda", "cuda:N"); the CPU by default, where the
    byte-identity above is tested.
    """
    from aminet_edge.device import resolve_device

    dev = resolve_device(device)
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}, got {precision!r}")
    if calibration_data and precision != "int8":
        raise ValueError("calibration data is for the int8 export (--precision int8) only")
    bundle = Path(bundle)
    if precision == "int8":
        from aminet_edge.export.quantize import calibration_inputs, quantize_graph, quantize_static, require_nncf

        calib: list = []
        if calibration_data:  # checked before anything is written: a bad data path should not cost an export
            require_nncf()
            config = read_config(bundle)
            calib = calibration_inputs(calibration_data, config.model.image_size, config.mean, config.std)
        paths = export_onnx(bundle, "fp32", opset, split, device)
        made = read_config(bundle)  # the fp32 graphs the int8 ones are made from are recorded in it
        fp32_single = paths["model"]
        staged = {}
        for part in ("model", "model_b") if split else ("model",):
            src, target = paths[part], bundle / onnx_name(part, precision)
            staged[part] = (write_temp(target, lambda tmp: quantize_graph(src, tmp)), target)  # noqa: B023 (called here)
            paths[part] = target
        # model_a has no inpainting block: the int8 pair records the fp32 model_a as its first half
        _install(bundle, staged, precision, opset, made, {"model_a": paths["model_a"]} if split else {})
        if calib:
            static = bundle / onnx_name("model", "int8_static")
            bank = {GUIDE_BANK: read_guide(bundle, made).bank32} if guided(made.model.mask) else {}
            written = write_temp(static, lambda tmp: quantize_static(fp32_single, tmp, calib, bank))
            _install(bundle, {"model": (written, static)}, "int8_static", opset, made)
            paths["model_int8_static"] = static
        return paths
    pipeline, config = load_pipeline(bundle, ops_backend="reference")
    pipeline.to(dev)
    size, dtype = config.model.image_size, torch.float16 if precision == "fp16" else torch.float32
    images = torch.zeros(2, 3, size, size, device=dev)
    single: nn.Module = pipeline if precision == "fp32" else MixedPipeline(pipeline, dtype)
    paths = {part: bundle / onnx_name(part, precision) for part in (("model", "model_a", "model_b") if split
                                                                    else ("model",))}
    io = single_io(config.model.mask)
    # the guide's bank is the single graph's input, traced with its stored values (float16 -> float32)
    args = (images,) if pipeline.guide is None else (images, pipeline.guide.bank.float())
    staged = {"model": (_export(single, args, io, paths["model"], opset), paths["model"])}
    if split:
        ext = copy.deepcopy(pipeline.extractor).to(dtype)
        net = copy.deepcopy(pipeline.aminet).to(dtype)
        io_a = model_a_io(config.model.mask)
        a = PartA(ext, net, dtype, pipeline.guide).eval()
        with torch.no_grad():
            inpaint = a(images)[io_a[1].index("inpaint_tokens")]
        mask = torch.zeros(inpaint.shape[:2], dtype=torch.bool, device=dev)
        try:
            staged["model_a"] = (_export(a, (images,), io_a, paths["model_a"], opset), paths["model_a"])
            staged["model_b"] = (_export(PartB(net, dtype).eval(), (inpaint, mask), MODEL_B_IO, paths["model_b"],
                                         opset), paths["model_b"])
        except BaseException:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
            raise
    _install(bundle, staged, precision, opset, config)
    return paths


def _install(bundle: Path, staged: dict[str, tuple[Path, Path]], precision: str, opset: int, made: BundleConfig,
             in_place: dict[str, Path] | None = None) -> None:
    """Put the graphs {part: (temporary file, final path)} made from the config `made` in place and record
    them, and the graphs `in_place` {part: path} already in the bundle, in config.json artifacts["onnx"]
    under graph_key(part, precision) (bundle.install_artifacts: crash-safe; refused when the bundle
    changed since `made`)."""

    def record(config: BundleConfig) -> None:
        if config.legacy:
            config.artifacts = {"weights": make_record(bundle, bundle / WEIGHTS_FILE)}  # as load_pipeline read them
            config.schema_version = SCHEMA_VERSION
        weights = config.artifacts["weights"]["sha256"]
        onnx_entries = config.artifacts.setdefault("onnx", {})
        for part, path in {**{p: final for p, (_, final) in staged.items()}, **(in_place or {})}.items():
            onnx_entries[graph_key(part, precision)] = make_record(
                bundle, path, precision=precision, opset=opset, input_size=config.model.image_size,
                **graph_computes(config), **graph_layout(config), weights_sha256=weights)

    install_artifacts(bundle, {tmp: final for tmp, final in staged.values()}, record, made)
