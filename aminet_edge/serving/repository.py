"""Write Triton model repositories from a bundle: `write_repository(run, out, target="cpu" | "gpu")`.

cpu: one Python-backend model `aminet` (aminet_edge.serving.triton_model.AminetModel) running the torch-free
    runtime on the bundle's exported graphs (copied into the repository: it can be moved as a whole), with
    dynamic batching and a bounded queue. Needs aminet-edge[onnxruntime] in the server's Python.
gpu: an ensemble `aminet` of `aminet_pre` (Python: decode, resize, normalise) -> `aminet_trt` (the bundle's
    TensorRT engine as a `tensorrt_plan` model, dynamic batching, GPU instances) -> `aminet_post` (Python:
    the map at the size the client asked). An ensemble rather than BLS: the steps are a fixed chain, and
    each step then batches and scales on its own (the plan batches requests of every camera together,
    with no Python step holding it), whereas a BLS model would serialise the TensorRT call behind a
    Python instance. Not measured (no GPU here). Plus a DeepStream `nvinferserver` config for the plan.
Both serve the same contract (aminet_edge.serving.protocol), so `RemoteDetector` works with either.

Back-pressure: the dynamic batcher's queue holds at most `queue_size` requests per model; beyond that
Triton rejects a request at once ("Exceeds maximum queue size"), which the client reports as
`ServerBusyError` for that frame instead of letting memory grow.

Ownership: the repository folder may hold other models and the user's files. Every file and folder the
writer creates is recorded in `OUT/aminet-edge-repository.json` (per model name) before it is written,
and each file is written atomically (aminet_edge.files). Rewriting a model deletes only the files recorded
for it; a model folder holding anything not recorded for that model is refused, never replaced, and so
is an OUT that is, contains or lies inside the bundle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aminet_edge.bundle import (CONFIG_FILE, REEXPORT, BundleConfig, BundleError, engine_records, graph_file,
                                has_graph, read_config, refuse_output_overlap, verify_record)
from aminet_edge.files import atomic_replace, atomic_write_text, remove_owned
from aminet_edge.serving.protocol import BUNDLE_PARAMETER, MODEL_NAME
from aminet_edge.serving.triton_model import BUNDLE_DIR

TARGETS = ("cpu", "gpu")
PLAN_FILE = "model.plan"
OWNER_FILE = "aminet-edge-repository.json"  # at the repository's root: what the writer wrote there
STEPS = ("", "_pre", "_trt", "_post")  # model folders NAME + step (cpu: NAME only)
# Upper bounds (checked in write_repository, which the CLI and the Python API both call): each instance is a
# process (cpu) or plan context (gpu) holding the whole model and each batch slot a full image buffer, so more
# only exhausts memory when `serve` starts; one machine or GPU saturates far below either.
MAX_INSTANCES = 64
MAX_BATCH = 1024
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_model_name(name: str) -> str:
    """`name` if it is a plain identifier (1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit: it
    becomes folder names, never a path); ValueError saying the rule otherwise."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name must be 1-64 letters, digits, '_' or '-', starting with a letter or digit "
                         f"(it becomes a folder name), got {name!r}")
    return name


def _temporaries(rel: str) -> re.Pattern[str]:
    """The names aminet_edge.files gives the temporary of file `rel` (a crash may leave one)."""
    name = rel.rsplit("/", 1)[-1]
    return re.compile(re.escape(f".{name}.") + r"[0-9a-f]+\.tmp")


class RepositoryFiles:
    """The files and folders written for model `name` into repository `out`, recorded in OWNER_FILE
    before each is created (a crash leaves nothing unrecorded but temporaries of recorded files).

    OWNER_FILE: {"written_by": "aminet-edge", "models": {name: {"files": [...], "dirs": [...]}}}, paths
    relative to `out`. Only recorded paths are ever deleted, and only through folders that are not links.
    """

    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.models = self._read()

    def _read(self) -> dict[str, dict[str, list[str]]]:
        path = self.out / OWNER_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            models = data["models"]
            for entry in models.values():
                if not (isinstance(entry["files"], list) and isinstance(entry["dirs"], list)):
                    raise TypeError("files and dirs must be lists")
                for rel in [*entry["files"], *entry["dirs"]]:
                    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts or not rel:
                        raise ValueError(f"path {rel!r} is not inside the repository")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{path}: not a record written by aminet-edge ({type(exc).__name__}: {exc}); "
                              f"it says which files may be replaced, so nothing was written: remove the "
                              f"repository folder yourself or choose another") from exc
        return {str(k): {"files": list(v["files"]), "dirs": list(v["dirs"])} for k, v in models.items()}

    def _save(self) -> None:
        atomic_write_text(self.out / OWNER_FILE, json.dumps({"written_by": "aminet-edge", "models": self.models},
                                                            indent=1, sort_keys=True) + "\n")

    @property
    def _mine(self) -> dict[str, list[str]]:
        return self.models.setdefault(self.name, {"files": [], "dirs": []})

    def claim(self, folders: list[str], shared: list[str]) -> None:
        """Refuse (BundleError) if one of these top-level folders exists holding anything not recorded for
        this model (a link, a file, a folder of someone else's), or one of the `shared` files (in folders
        other models use too) exists unrecorded."""
        files = set(self._mine["files"])
        files |= set(self._leftovers())
        for rel in shared:
            if rel not in files and (self._inside(rel) is None or os.path.lexists(self.out / rel)):
                raise BundleError(f"{self.out / rel} exists and aminet-edge did not write it for model "
                                  f"{self.name!r}: nothing was replaced; remove it or choose another "
                                  f"--model-name / output folder")
        for folder in folders:
            top = self.out / folder
            if not (top.exists() or top.is_symlink()):
                continue
            if top.is_symlink() or not top.is_dir():
                raise BundleError(f"{top} exists and is not a folder aminet-edge wrote; remove it or choose "
                                  f"another --model-name / output folder")
            for root, dirs, names in os.walk(top):
                for entry in [*names, *(d for d in dirs if (Path(root) / d).is_symlink())]:
                    rel = (Path(root) / entry).relative_to(self.out).as_posix()
                    if rel not in files:
                        raise BundleError(f"{top} holds {self.out / rel}, which aminet-edge did not write for "
                                          f"model {self.name!r}: nothing was replaced; remove it or choose "
                                          f"another --model-name / output folder")

    def _inside(self, rel: str) -> Path | None:
        """out/rel if no folder on the way from `out` is a link (else None: never delete through a link)."""
        path = self.out
        for part in Path(rel).parts[:-1]:
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                return None
        return path / Path(rel).name

    def _leftovers(self) -> list[str]:
        """Temporaries of this model's recorded files that an interrupted write left beside them."""
        found = []
        for rel in self._mine["files"]:
            path = self._inside(rel)
            if path is not None and path.parent.is_dir():
                pattern = _temporaries(rel)
                found += [(path.parent / n).relative_to(self.out).as_posix()
                          for n in os.listdir(path.parent) if pattern.fullmatch(n)]
        return found

    def remove_previous(self) -> None:
        """Delete the files recorded for this model (and temporaries of them), then its recorded folders
        that are left empty; forget them."""
        mine = self._mine
        remove_owned(self.out, [*mine["files"], *self._leftovers()], f"rewriting model {self.name!r}")
        for rel in sorted(mine["dirs"], key=lambda r: -len(Path(r).parts)):
            path = self._inside(rel)
            if path is not None and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
        self.models[self.name] = {"files": [], "dirs": []}
        self._save()

    def mkdir(self, folder: Path) -> Path:
        """Create `folder` (inside out) and the folders above it, recording each one created."""
        rel = folder.relative_to(self.out)
        path = self.out
        for part in rel.parts:
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise BundleError(f"{path} is a link or a file where aminet-edge writes a folder: nothing "
                                  f"is written through it; remove it or choose another output folder")
            if not path.is_dir():
                self._mine["dirs"].append(path.relative_to(self.out).as_posix())
                self._save()
                path.mkdir()
        return folder

    def _record(self, path: Path) -> Path:
        self.mkdir(path.parent)
        rel = path.relative_to(self.out).as_posix()
        if rel not in self._mine["files"]:
            self._mine["files"].append(rel)
            self._save()
        return path

    def write(self, path: Path, text: str | bytes, executable: bool = False) -> Path:
        def produce(tmp: Path) -> None:
            if isinstance(text, bytes):
                tmp.write_bytes(text)
            else:
                tmp.write_text(text)
            if executable:
                tmp.chmod(tmp.stat().st_mode | 0o111)

        return atomic_replace(self._record(path), produce)

    def copy(self, src: Path, path: Path) -> Path:
        def produce(tmp: Path) -> None:
            with open(src, "rb") as s, open(tmp, "wb") as d:
                shutil.copyfileobj(s, d, 1 << 20)

        return atomic_replace(self._record(path), produce)


@dataclass(frozen=True)
class QueuePolicy:
    """Dynamic batching: wait at most `max_delay_us` microseconds to fill a batch; hold at most
    `queue_size` waiting requests per model (more are rejected at once: back-pressure)."""

    max_delay_us: int = 2000
    queue_size: int = 64


def _shim(class_name: str) -> str:
    return (f'"""Triton Python-backend entry point written by `aminet-edge triton-repo`."""\n'
            "import os\nimport sys\n\n"
            "# the stub's embedded interpreter ignores PYTHONPATH; honour it (a development checkout)\n"
            "sys.path[:0] = [p for p in os.environ.get(\"PYTHONPATH\", \"\").split(os.pathsep)\n"
            "                if p and p not in sys.path]\n\n"
            f"from aminet_edge.serving.triton_model import {class_name} as TritonPythonModel  # noqa: E402,F401\n")


def _tensor(name: str, dtype: str, dims: list[int], extra: str = "") -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _batching(policy: QueuePolicy) -> str:
    return ("dynamic_batching {\n"
            f"  max_queue_delay_microseconds: {policy.max_delay_us}\n"
            f"  default_queue_policy {{ max_queue_size: {policy.queue_size} timeout_action: REJECT "
            "default_timeout_microseconds: 0 allow_timeout_override: true }\n}\n")


def _params(params: dict[str, str]) -> str:
    def quoted(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"')

    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{quoted(v)}" }} }}\n' for k, v in params.items())


def bundle_parameter(run: Path) -> dict[str, str]:
    """The bundle's config.json (without training record, and of the artifacts only the weights' record)
    as the served model's `aminet_bundle` parameter: clients read thresholds and model sizes from it
    (RemoteDetector), and which weights it is (the station stores their sha256 with every result)."""
    data = json.loads((run / CONFIG_FILE).read_text())
    data.pop("train", None)
    weights = (data.pop("artifacts", None) or {}).get("weights")
    if weights is not None:
        data["artifacts"] = {"weights": weights}
    return {BUNDLE_PARAMETER: json.dumps(data, separators=(",", ":"))}


IMAGE_IN = _tensor("IMAGE", "TYPE_UINT8", [-1], " allow_ragged_batch: true")
SIDE_IN = _tensor("MAP_MAX_SIDE", "TYPE_INT32", [1])
OUTPUTS = [_tensor("SCORE", "TYPE_FP32", [1]), _tensor("AMAP", "TYPE_FP32", [-1, -1]),
           _tensor("TOKEN_MASK", "TYPE_BOOL", [-1]), _tensor("IMAGE_SIZE", "TYPE_INT32", [2])]


def _copy_bundle(files: RepositoryFiles, run: Path, config: BundleConfig, dest: Path, graphs: bool) -> None:
    """config.json and (graphs=True) every recorded CPU graph (fp32, int8; verified against its sha256
    first) into dest, at the same paths: the runtime there checks them against the same records."""
    if graphs:
        for record in (config.artifacts.get("onnx") or {}).values():
            if record.get("precision") == "fp16":
                continue
            src = verify_record(run, config, record, "graph", REEXPORT.format(bundle=run))
            files.copy(src, dest / record["path"])
    files.copy(run / CONFIG_FILE, dest / CONFIG_FILE)


def _cpu(run: Path, files: RepositoryFiles, config: BundleConfig, name: str, max_batch: int, instances: int,
         policy: QueuePolicy, backend: str) -> None:
    if not any(has_graph(config, part, p) for part in ("model", "model_b") for p in ("fp32", "int8")):
        raise BundleError(f"{run}: no exported graph recorded; run `aminet-edge export {run}` first "
                          f"(`--precision int8` for the fastest CPU graph)")
    model = files.out / name
    _copy_bundle(files, run, config, model / "1" / BUNDLE_DIR, graphs=True)
    files.write(model / "1" / "model.py", _shim("AminetModel"))
    files.write(model / "config.pbtxt",
           f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
           + _io("input", [IMAGE_IN, SIDE_IN]) + _io("output", OUTPUTS) + _batching(policy)
           + f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
           + _params({"backend": backend, **bundle_parameter(run)}))


def _onnx_io(path: Path) -> dict[str, tuple[str, list[Any]]]:
    """{tensor name: (elem type name, shape with symbolic dims as -1)} of an ONNX graph's inputs/outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for v in [*graph.input, *graph.output]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out[v.name] = (onnx.TensorProto.DataType.Name(t.elem_type), dims)
    return out


ONNX_TO_TRITON = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BOOL": "TYPE_BOOL", "INT32": "TYPE_INT32",
                  "INT64": "TYPE_INT64"}


def _plan_source(run: Path, config: BundleConfig) -> tuple[Path | None, Path, int]:
    """(standard-TensorRT single-graph engine or None, the ONNX graph it comes from, its max batch),
    each verified against its record in config.json."""
    fix = REEXPORT.format(bundle=run)
    engines = [e for e in engine_records(run, config) if e.get("backend") == "tensorrt" and e.get("graph") == "model"]
    engines.sort(key=lambda e: e.get("precision") != "fp16")  # fp16 first, the default build
    precision = "fp16" if has_graph(config, "model", "fp16") else "fp32"
    if engines:
        e = engines[0]
        precision = "fp16" if e.get("onnx", "").endswith("_fp16.onnx") and has_graph(config, "model", "fp16") else "fp32"
        return (verify_record(run, config, e, "engine", fix), graph_file(run, config, "model", precision),
                int(e.get("batch", [1, 1, 8])[2]))
    if not has_graph(config, "model", precision):
        raise BundleError(f"{run}: no ONNX graph recorded to build the TensorRT plan from; run "
                          f"`aminet-edge export {run} --precision fp16` first")
    return None, graph_file(run, config, "model", precision), 0


def _gpu(run: Path, files: RepositoryFiles, config: BundleConfig, name: str, max_batch: int, instances: int,
         policy: QueuePolicy) -> list[str]:
    out = files.out
    notes = []
    s, grid = config.model.image_size, config.model.grid_size
    engine, onnx_path, engine_max = _plan_source(run, config)
    io = _onnx_io(onnx_path)
    for tensor, rank in (("images", 4), ("amap", 3), ("score", 1), ("mask", 2)):
        if tensor not in io or len(io[tensor][1]) != rank:
            raise BundleError(f"{onnx_path}: expected tensor {tensor!r} of rank {rank}, graph has "
                              f"{ {k: v[1] for k, v in io.items()} }")
    if engine_max and max_batch > engine_max:
        notes.append(f"max batch lowered from {max_batch} to the engine's profile max {engine_max}")
        max_batch = engine_max
    trt, pre, post = f"{name}_trt", f"{name}_pre", f"{name}_post"
    dtype = {k: ONNX_TO_TRITON[v[0]] for k, v in io.items() if k in ("images", "amap", "score", "mask")}
    # the plan: the engine's own IO, batch dimension implicit (dynamic profile)
    plan_dir = files.mkdir(out / trt / "1")
    if engine is not None:
        files.copy(engine, plan_dir / PLAN_FILE)
        notes.append(f"{trt}/1/{PLAN_FILE}: {engine.name} (standard TensorRT; it runs only on the GPU model and "
                     f"TensorRT version it was built with: build it inside the Triton container you deploy)")
    else:
        build = out / trt / "build"
        from aminet_edge.export.engine import baked_graph

        baked = baked_graph(run, config, "model", onnx_path)  # a guided graph: its bank baked in, images the only input
        if baked is None:
            files.copy(onnx_path, build / onnx_path.name)
        else:
            files.write(build / onnx_path.name, baked)
        files.write(build / "build_plan.sh",
               "#!/usr/bin/env bash\n# Build the plan inside the Triton container that will serve it (same "
               "TensorRT, same GPU).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
               f"trtexec --onnx={onnx_path.name} --saveEngine=../1/{PLAN_FILE} --stronglyTyped "
               f"--minShapes=images:1x3x{s}x{s} --optShapes=images:{max_batch}x3x{s}x{s} "
               f"--maxShapes=images:{max_batch}x3x{s}x{s}\n", executable=True)
        notes.append(f"{trt}/1/{PLAN_FILE} is not included (the bundle has no standard-TensorRT engine): run "
                     f"{trt}/build/build_plan.sh inside the Triton container")
    files.write(out / trt / "config.pbtxt",
           f'name: "{trt}"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch}\n'
           + _io("input", [_tensor("images", dtype["images"], [3, s, s])])
           + _io("output", [_tensor("amap", dtype["amap"], [s, s]),
                            _tensor("score", dtype["score"], [1], " reshape: { shape: [ ] }"),
                            _tensor("mask", dtype["mask"], [grid * grid])])
           + _batching(policy) + f"instance_group [ {{ kind: KIND_GPU count: {instances} }} ]\n")
    _copy_bundle(files, run, config, out / pre / "1" / BUNDLE_DIR, graphs=False)
    files.write(out / pre / "1" / "model.py", _shim("PreprocessModel"))
    files.write(out / pre / "config.pbtxt",
           f'name: "{pre}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
           + _io("input", [IMAGE_IN]) + _io("output", [_tensor("images", dtype["images"], [3, s, s]),
                                                        _tensor("IMAGE_SIZE", "TYPE_INT32", [2])])
           + _batching(policy) + "instance_group [ { kind: KIND_CPU count: 2 } ]\n")
    files.write(out / post / "1" / "model.py", _shim("PostprocessModel"))
    files.write(out / post / "config.pbtxt",
           f'name: "{post}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
           + _io("input", [_tensor("amap", dtype["amap"], [s, s]), _tensor("IMAGE_SIZE", "TYPE_INT32", [2]),
                           SIDE_IN]) + _io("output", [_tensor("AMAP", "TYPE_FP32", [-1, -1])])
           + _batching(policy) + "instance_group [ { kind: KIND_CPU count: 1 } ]\n")

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
        maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
        return f'    {{ model_name: "{model}" model_version: -1{maps} }}'

    steps = [step(pre, {"IMAGE": "IMAGE"}, {"images": "images", "IMAGE_SIZE": "IMAGE_SIZE"}),
             step(trt, {"images": "images"}, {"amap": "amap", "score": "SCORE", "mask": "TOKEN_MASK"}),
             step(post, {"amap": "amap", "IMAGE_SIZE": "IMAGE_SIZE", "MAP_MAX_SIDE": "MAP_MAX_SIDE"},
                  {"AMAP": "AMAP"})]
    outputs = [o.replace("TYPE_BOOL", dtype["mask"]) if "TOKEN_MASK" in o else o for o in OUTPUTS]
    files.write(out / name / "config.pbtxt",
           f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
           + _io("input", [IMAGE_IN.replace(" allow_ragged_batch: true", ""), SIDE_IN]) + _io("output", outputs)
           + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n" + _params(bundle_parameter(run)))
    files.mkdir(out / name / "1")  # an ensemble needs an (empty) version folder
    ds = deepstream_config(config, trt, max_batch)
    if ds is None:
        notes.append("no DeepStream config: nvinferserver normalises with one scale factor, and this bundle's "
                     f"std {config.std} differs per channel")
    else:
        files.write(out / deepstream_path(name), ds)
    return notes


def deepstream_path(name: str) -> str:
    """The DeepStream config of model `name`, relative to the repository."""
    return f"deepstream/config_infer_{name}.txt"


def deepstream_config(config: BundleConfig, trt_model: str, max_batch: int) -> str | None:
    """nvinferserver config (protobuf text) feeding full frames to the plan; None if the bundle's std is not
    one value for all channels (nvinferserver has a single scale_factor, so it could not match)."""
    if max(config.std) - min(config.std) > 1e-9:
        return None
    scale = 1.0 / (255.0 * config.std[0])
    offsets = ", ".join(f"{255.0 * m:.6f}" for m in config.mean)
    return (f"# DeepStream nvinferserver config for {trt_model} (written by `aminet-edge triton-repo --target gpu`).\n"
            "# Frames are scaled to the model input by DeepStream (not PIL's resize: maps differ slightly from\n"
            "# Detector), normalised as y = scale_factor * (x - channel_offsets), and the raw outputs (amap,\n"
            "# score, mask) attached as tensor meta; apply the bundle's thresholds (its config.json) in a probe.\n"
            "infer_config {\n  unique_id: 1\n  gpu_ids: [0]\n"
            f"  max_batch_size: {max_batch}\n"
            "  backend {\n    triton {\n"
            f'      model_name: "{trt_model}"\n      version: -1\n'
            '      model_repo { root: "../" strict_model_config: true }\n    }\n  }\n'
            "  preprocess {\n    network_format: IMAGE_FORMAT_RGB\n    tensor_order: TENSOR_ORDER_LINEAR\n"
            "    maintain_aspect_ratio: 0\n"
            f"    normalize {{ scale_factor: {scale:.9f} channel_offsets: [{offsets}] }}\n  }}\n"
            "  postprocess { other {} }\n  extra { copy_input_to_host_buffers: false }\n}\n"
            "input_control { process_mode: PROCESS_MODE_FULL_FRAME interval: 0 }\n"
            "output_control { output_tensor_meta: true }\n")


def write_repository(run: str | Path, out: str | Path, target: str = "cpu", *, max_batch: int = 8,
                     instances: int = 1, model_name: str = MODEL_NAME, policy: QueuePolicy = QueuePolicy(),
                     backend: str = "auto") -> list[str]:
    """Write a Triton model repository for bundle `run` into `out` (created if missing; see "Ownership" in
    the module docstring for what may be replaced). Returns notes for the user (what is missing, what was
    adjusted). model_name: a plain identifier (`check_model_name`), the top model's folder.

    max_batch: largest batch the dynamic batcher forms; instances: model instances (cpu: processes, each
    with cpu_count // instances onnxruntime threads; gpu: plan instances on the GPU); backend: the cpu
    model's Detector backend ("auto" = the bundle's fastest CPU graph).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    for option, value, bound in (("--max-batch (max_batch)", max_batch, MAX_BATCH),
                                 ("--instances (instances)", instances, MAX_INSTANCES)):
        if not 1 <= value <= bound:
            raise ValueError(f"{option} must be between 1 and {bound}, got {value} (more only exhausts memory "
                             "when the server starts)")
    check_model_name(model_name)
    run, out = Path(run), Path(out)
    refuse_output_overlap(run, out, "the repository folder")
    config = read_config(run)
    if target == "gpu" and config.tile is not None:
        raise ValueError(f"{run} scores images in tiles ({config.tile}), which the gpu ensemble (one S x S plan input "
                         "per request) does not: use --target cpu (its model tiles as a Detector does, on any device "
                         "its backend runs on)")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files = RepositoryFiles(out, model_name)
    files.claim([model_name + step for step in (STEPS if target == "gpu" else STEPS[:1])],
                [deepstream_path(model_name)] if target == "gpu" else [])
    files.remove_previous()
    if target == "cpu":
        _cpu(run, files, config, model_name, max_batch, instances, policy, backend)
        notes = []
    else:
        notes = _gpu(run, files, config, model_name, max_batch, instances, policy)
    check_repository(out, model_name)
    return notes


# -- structural validation ------------------------------------------------------------------------
def _model_config_class() -> Any:
    """Triton's ModelConfig protobuf class, from tritonclient's generated module (loaded by path, so the
    grpc package it sits in need not be importable). None if tritonclient or protobuf is missing."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("google.protobuf") is None:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.ModelConfig


def parse_config(path: str | Path) -> Any:
    """A config.pbtxt parsed as Triton's ModelConfig (unknown fields are errors); None if the parser is
    not installed (tritonclient)."""
    cls = _model_config_class()
    if cls is None:
        return None
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(), cls())
    except text_format.ParseError as exc:
        raise BundleError(f"{path}: not a valid Triton model config ({exc})") from exc


def check_repository(out: str | Path, model_name: str = MODEL_NAME) -> dict[str, Any]:
    """Parse the config.pbtxt of model `model_name` and its steps (other models in the repository are
    not ours to judge) and check that the ensemble's tensors connect: each step's inputs exist in its
    model, are produced earlier (or are ensemble inputs), with equal types. Returns {model: parsed config}
    (empty if the parser is not installed). BundleError if not."""
    out = Path(out)
    paths = [out / (model_name + step) / "config.pbtxt" for step in STEPS]
    configs = {p.parent.name: parse_config(p) for p in paths if p.is_file()}
    if not configs or any(c is None for c in configs.values()):
        return {}
    for name, cfg in configs.items():
        if cfg.name != name:
            raise BundleError(f"{out / name}/config.pbtxt: name {cfg.name!r} differs from its folder")
    top = configs.get(model_name)
    if top is not None and top.platform == "ensemble":
        types = {t.name: t.data_type for t in top.input}
        for st in top.ensemble_scheduling.step:
            model = configs.get(st.model_name)
            if model is None:
                raise BundleError(f"{out}: ensemble step {st.model_name!r} has no model folder")
            ins = {t.name: t.data_type for t in model.input}
            outs = {t.name: t.data_type for t in model.output}
            for key, value in st.input_map.items():
                if key not in ins or value not in types or types[value] != ins[key]:
                    raise BundleError(f"{out}: ensemble step {st.model_name}: input {key} <- {value} does not "
                                      f"connect (model inputs {sorted(ins)}, tensors so far {sorted(types)})")
            for key, value in st.output_map.items():
                if key not in outs:
                    raise BundleError(f"{out}: ensemble step {st.model_name} has no output {key!r}")
                types[value] = outs[key]
        for t in top.output:
            if types.get(t.name) != t.data_type:
                raise BundleError(f"{out}: ensemble output {t.name} is not produced with type {t.data_type}")
    return configs


def describe_repository(out: str | Path, model_name: str = MODEL_NAME) -> str:
    """One line per model of `model_name` (it and its steps): name, backend/platform, max batch, instances."""
    lines = []
    for name, cfg in check_repository(out, model_name).items():
        kind = cfg.backend or cfg.platform
        count = sum(g.count for g in cfg.instance_group) or 1
        lines.append(f"{name}: {kind}, max_batch_size {cfg.max_batch_size}, instances {count}")
    folders = [model_name + step for step in STEPS if (Path(out) / (model_name + step)).is_dir()]
    return "\n".join(lines) or json.dumps(folders)
