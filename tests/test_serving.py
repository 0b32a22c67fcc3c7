"""Serving on Triton: repositories, and the real tritonserver on 127.0.0.1 against the in-process Detector.

Two servers start once for the module (free ports, stopped at the end): `main` (the repository written,
then moved, to prove it self-contained) and `small` (queue of 2, batch 1: back-pressure, restart).
Skipped, with the reason, where tritonserver or tritonclient is not installed.
Tolerances, and why:
- one request at a time: the server runs batches of 1, like Detector(batch_size=1): bit-identical;
- concurrent requests: the dynamic batcher forms batches of varying size, and onnxruntime's float32
  results depend on the batch size by rounding (GEMM blocking): scores within rtol 1e-5, maps within
  1e-5 of the map's maximum, token masks identical on these inputs.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch
pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'aminet-edge[serving]')")

from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import read_config, write_config  # noqa: E402
from aminet_edge.runtime import Detector, InputError  # noqa: E402
from aminet_edge.runtime.detector import resize_map  # noqa: E402
from aminet_edge.serving import (QueuePolicy, RemoteDetector, ServerBusyError, ServerUnavailableError,  # noqa: E402
                                 TritonServer, write_repository)
from aminet_edge.serving.protocol import map_hw  # noqa: E402
from aminet_edge.serving.repository import check_repository, parse_config  # noqa: E402
from aminet_edge.serving.server import ServerError, find_tritonserver  # noqa: E402

RTOL = 1e-5


def _binary() -> Path:
    try:
        return find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"tritonserver not installed: {exc}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


# the server's model and the in-process Detector run the same backend: `auto` measures, and two processes
# timing the candidates on a busy machine may choose differently (results then differ in the last bits)
BACKEND = "onnxruntime-split"


@pytest.fixture(scope="module")
def detector(bundle: Path) -> Detector:
    det = Detector.load(bundle, batch_size=1, backend=BACKEND)
    yield det
    det.close()


def _serve(repo: Path) -> TritonServer:
    server = TritonServer(repo, binary=_binary())
    try:
        return server.start(timeout=120)
    except ServerError as exc:
        server.close()
        if "libpython" in str(exc) or "stub" in str(exc).lower():
            pytest.skip(f"tritonserver cannot run its Python backend here: {exc}")
        raise


@pytest.fixture(scope="module")
def main_server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    tmp = tmp_path_factory.mktemp("serving")
    write_repository(bundle, tmp / "written", max_batch=4, backend=BACKEND)
    shutil.move(tmp / "written", tmp / "moved")  # self-contained: nothing points back at the bundle
    server = _serve(tmp / "moved")
    yield server
    server.stop(timeout=3)
    server.close()


@pytest.fixture(scope="module")
def small_server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    repo = tmp_path_factory.mktemp("serving_small") / "repo"
    write_repository(bundle, repo, max_batch=1, policy=QueuePolicy(max_delay_us=0, queue_size=2), backend=BACKEND)
    server = _serve(repo)
    yield server
    server.stop(timeout=3)
    server.close()


# ---- repositories (no server) --------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["adaptive", "nearest_normal"])
def test_gpu_repository_matches_the_graph(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, mask: str) -> None:
    """gpu repository: parses as Triton configs, the ensemble connects, the plan's IO is the graph's IO
    as onnxruntime sees it (the engine is built from that graph: a guided bundle's with the bank baked in,
    images its only input); unrun (no GPU, no TensorRT backend)."""
    ort = pytest.importorskip("onnxruntime")
    bundle = shared_bundle(tmp_path_factory, mask)
    notes = write_repository(bundle, tmp_path, "gpu", max_batch=4, instances=2)
    configs = check_repository(tmp_path)
    if not configs:
        pytest.skip("Triton's model config parser (tritonclient + protobuf) is not installed")
    assert set(configs) == {"aminet", "aminet_pre", "aminet_trt", "aminet_post"}
    assert any("build_plan.sh" in n for n in notes)  # the test bundle has no TensorRT engine
    plan = configs["aminet_trt"]
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4
    assert plan.instance_group[0].count == 2 and plan.dynamic_batching.default_queue_policy.max_queue_size == 64
    session = ort.InferenceSession(str(tmp_path / "aminet_trt" / "build" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    graph = {t.name: t.shape[1:] for t in [*session.get_inputs(), *session.get_outputs()]}
    dtypes = {"tensor(float)": 11, "tensor(bool)": 1}  # Triton's TYPE_FP32, TYPE_BOOL
    for t in [*plan.input, *plan.output]:
        want = graph[t.name] or [1]  # the (B,) score is dims [1] reshaped to [] for Triton
        assert list(t.dims) == want, t.name
    for t in [*session.get_inputs(), *session.get_outputs()]:
        assert {x.name: x.data_type for x in [*plan.input, *plan.output]}[t.name] == dtypes[t.type]
    config = read_config(bundle)
    ds = (tmp_path / "deepstream" / "config_infer_aminet.txt").read_text()
    assert f"scale_factor: {1 / (255 * config.std[0]):.9f}" in ds and 'model_name: "aminet_trt"' in ds


def test_cpu_repository_refuses_an_unexported_bundle(bundle: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(bundle / "config.json", bare / "config.json")
    with pytest.raises(ValueError, match="aminet-edge export"):
        write_repository(bare, tmp_path / "repo")


def test_repository_config_is_triton_syntax(bundle: Path, tmp_path: Path) -> None:
    write_repository(bundle, tmp_path, max_batch=3, instances=2, policy=QueuePolicy(500, 7))
    cfg = parse_config(tmp_path / "aminet" / "config.pbtxt")
    if cfg is None:
        pytest.skip("Triton's model config parser (tritonclient + protobuf) is not installed")
    assert (cfg.backend, cfg.max_batch_size, cfg.instance_group[0].count) == ("python", 3, 2)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 7
    assert cfg.input[0].allow_ragged_batch


# ---- the real server -----------------------------------------------------------------------------
def test_parity_one_at_a_time_is_bit_identical(main_server: TritonServer, detector: Detector) -> None:
    remote = RemoteDetector(main_server.url, threshold="f1", sensitivity=0.7)
    for image in generated_images():
        got = remote.predict(image)
        want = detector.predict(image, threshold="f1", sensitivity=0.7)
        assert got.thresholds == want.thresholds
        assert (got.score, got.normalized_score, got.is_anomaly) == (want.score, want.normalized_score,
                                                                     want.is_anomaly)
        np.testing.assert_array_equal(got.anomaly_map, want.anomaly_map)
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.token_mask, want.token_mask)
    flagged = [r.is_anomaly for r in RemoteDetector(main_server.url).predict(generated_images())]
    assert any(flagged) and not all(flagged)  # the calibrated thresholds split these images


def test_parity_concurrent_batches(main_server: TritonServer, detector: Detector, tmp_path: Path) -> None:
    from PIL import Image

    images = generated_images() * 3
    path = tmp_path / "frame.png"
    Image.fromarray(images[1]).save(path)
    images += [path, Image.fromarray(images[2]), images[3][:, :, ::-1].copy()]
    remote = RemoteDetector(main_server.url, concurrency=8)
    got = remote.predict_batch(images[:-1] + [images[-1]], bgr=False)
    bgr = remote.predict(images[-1], bgr=True)
    want = [detector.predict(x) for x in images]
    for g, w in zip(got, want):
        assert g.ok, g.error
        assert g.score == pytest.approx(w.score, rel=RTOL)
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, rtol=RTOL, atol=RTOL * float(w.anomaly_map.max()))
        np.testing.assert_array_equal(g.token_mask, w.token_mask)
    assert bgr.score == pytest.approx(detector.predict(images[3]).score, rel=RTOL)  # BGR reordered exactly
    assert got[-3].source == str(path) and got[-3].anomaly_map.shape == images[1].shape[:2]


def test_downsampled_map_on_request(main_server: TritonServer, detector: Detector) -> None:
    image = generated_images()[4]  # 256 x 256 input, 64 x 64 model
    got = RemoteDetector(main_server.url, map_max_side=32).predict(image)
    raw = detector.infer([image])[0]
    np.testing.assert_array_equal(got.anomaly_map, resize_map(raw.amap, *map_hw(256, 256, 32)))
    assert got.anomaly_map.shape == (32, 32) and got.mask.shape == (32, 32)
    assert got.score == raw.score


def test_bad_images_over_the_wire(main_server: TritonServer, detector: Detector, tmp_path: Path) -> None:
    """The server decodes and validates: each bad frame gets its own InputError, as Detector words it."""
    corrupt = tmp_path / "corrupt.png"
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(generated_images()[0]).save(good)
    corrupt.write_bytes(good.read_bytes()[:60])  # truncated PNG
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    arrays = [np.zeros((3, 64, 64), np.uint8), np.full((32, 32, 3), 2.0, np.float32), np.zeros((4, 4), np.uint8),
              np.zeros((32, 32, 3), np.int8)]
    images = [generated_images()[0], *arrays, corrupt, text, good]
    got = RemoteDetector(main_server.url).predict(images)
    want = detector.predict(images)
    assert [g.ok for g in got] == [True, False, False, False, False, False, False, True]
    for g, w in zip(got[1:5], want[1:5]):  # in-memory arrays: the very same message
        assert isinstance(g.error, InputError) and str(g.error) == str(w.error)
    for g in got[5:7]:
        assert isinstance(g.error, InputError) and g.error.source == g.source and "image" in str(g.error)
    with pytest.raises(InputError, match="channel-first"):
        RemoteDetector(main_server.url).predict(arrays[0])


def _infer_raw(server: TritonServer, shape: list[int], data: bytes, sides: int = 1) -> tuple[int, str]:
    """POST one binary-data inference request as any HTTP client may send it: (HTTP status, body)."""
    import json
    import urllib.error
    import urllib.request

    header = json.dumps({"inputs": [
        {"name": "IMAGE", "shape": shape, "datatype": "UINT8", "parameters": {"binary_data_size": len(data)}},
        {"name": "MAP_MAX_SIDE", "shape": [sides, 1], "datatype": "INT32", "data": [0] * sides}],
        "outputs": [{"name": "SCORE"}]}).encode()
    request = urllib.request.Request(f"{server.url}/v2/models/aminet/infer", data=header + data, headers={
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_requests_the_model_does_not_accept_get_a_400(main_server: TritonServer, tmp_path: Path) -> None:
    """One image per request: two images in one IMAGE tensor are refused (not answered for the first);
    bytes that are no image, and a declared size the data does not have, are 400s naming the problem."""
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(generated_images()[0]).save(path)
    png = path.read_bytes()
    assert _infer_raw(main_server, [1, len(png)], png)[0] == 200
    status, body = _infer_raw(main_server, [2, len(png)], png + png, sides=2)
    assert status == 400 and "one image per request" in body and "[2, " in body, (status, body)
    status, body = _infer_raw(main_server, [1, 12], b"not an image")
    assert status == 400 and "no image format recognised in its 12 bytes" in body and "_io." not in body, body
    status, body = _infer_raw(main_server, [1, 2 ** 62], b"1234")
    assert status == 400 and "byte size" in body, body
    assert main_server.process is not None and main_server.process.poll() is None and main_server.ready()


def test_full_queue_gives_back_pressure_errors(small_server: TritonServer) -> None:
    remote = RemoteDetector(small_server.url, concurrency=16)
    got = remote.predict(generated_images() * 6)
    busy = [r for r in got if not r.ok]
    assert busy and all(isinstance(r.error, ServerBusyError) for r in busy)
    assert any(r.ok for r in got)


def test_restart_under_load(main_server: TritonServer, small_server: TritonServer) -> None:
    """Kill one of two servers under load, then restart it on its port: with both URLs every frame gets a
    result (failover); a client of the killed server alone gets ServerUnavailableError, never silence."""
    images = generated_images()
    both = RemoteDetector([small_server.url, main_server.url], concurrency=4, timeout=20, down_for=0.5)
    alone = RemoteDetector(small_server.url, timeout=5)
    results: list = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results.extend(both.predict_batch(images))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.0)
        small_server.kill()
        during = alone.predict(images[:2])
        time.sleep(1.0)
        small_server.start(timeout=120)  # same ports
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert all(isinstance(r.error, ServerUnavailableError) for r in during)
    assert len(results) >= 2 * len(images) and all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert alone.predict(images[0]).ok  # the restarted server answers again


def test_serve_cli_reports_a_missing_export(bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(bundle / "config.json", bare / "config.json")
    result = CliRunner().invoke(main, ["serve", str(bare), "--http-port", "1"])
    assert result.exit_code == 1 and "aminet-edge export" in result.output
    result = CliRunner().invoke(main, ["triton-repo", str(bundle), str(tmp_path / "r"), "--target", "gpu"])
    assert result.exit_code == 0, result.output
    assert "aminet_trt: tensorrt_plan" in result.output


def test_serving_is_torch_free() -> None:
    """Client, repository writer, server runner and the served model import without torch."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import aminet_edge.serving.client, aminet_edge.serving.repository, aminet_edge.serving.server\n"
            "import aminet_edge.serving.triton_model, aminet_edge.serving.commands\n"
            "print(sorted(k for k, v in sys.modules.items() if v is not None and k.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_station_camera_on_a_triton_url(main_server: TritonServer, detector: Detector, tmp_path: Path) -> None:
    """A station camera configured with `url` (RemoteDetector) stores what the in-process Detector gives."""
    from PIL import Image

    from aminet_edge.station import ResultStore, Station, load_config

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    images = generated_images()[:3]
    for i, img in enumerate(images):
        Image.fromarray(img).save(inbox / f"part_{i}.png")
    config = tmp_path / "station.toml"
    config.write_text(f"[station]\nstore = \"results.db\"\n[[cameras]]\nname = \"remote\"\nurl = \"{main_server.url}\"\n"
                      f"[cameras.source]\ntype = \"folder\"\npath = \"{inbox}\"\nsettle = 0\n")
    with Station(load_config(config)) as station:
        deadline = time.monotonic() + 60
        while sum(station.state()["cameras"]["remote"]["counts"].values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    store = ResultStore(tmp_path / "results.db")
    rows = list(store.query())
    store.close()
    want = [detector.predict(str(inbox / f"part_{i}.png")) for i in range(3)]
    assert sorted((r["part_id"], r["score"], r["decision"]) for r in rows) == [
        (f"part_{i}", w.score, "NG" if w.is_anomaly else "OK") for i, w in enumerate(want)]
    assert {r["backend"] for r in rows} == {"triton:aminet"}
    assert {r["weights_sha256"] for r in rows} == {detector.config.artifacts["weights"]["sha256"]}


def test_tiled_bundle_is_served_tiled(bundle: Path, tmp_path: Path) -> None:
    """A bundle with config.json "tile": the cpu repository's model tiles as the in-process Detector does
    (one request at a time, batch 1: bit-identical), the tiles' token grids come back (T, g, g)."""
    from aminet_edge.config import TileConfig

    tiled = tmp_path / "tiled"
    shutil.copytree(bundle, tiled, ignore=shutil.ignore_patterns("cache"))
    config = read_config(tiled)
    config.tile = TileConfig(48, 12)
    write_config(tiled, config)
    write_repository(tiled, tmp_path / "repo", max_batch=1, backend=BACKEND)
    server = _serve(tmp_path / "repo")
    try:
        local = Detector.load(tiled, batch_size=1, backend=BACKEND)
        remote = RemoteDetector(server.url)
        for image in generated_images()[3:5]:
            got, want = remote.predict(image), local.predict(image)
            assert got.score == want.score and got.tiles == want.tiles and len(got.tiles) > 1
            np.testing.assert_array_equal(got.anomaly_map, want.anomaly_map)
            np.testing.assert_array_equal(got.token_mask, want.token_mask)
    finally:
        server.stop(timeout=3)
        server.close()
