"""The examples and the service worker, each run as a user runs it: a subprocess on a real bundle.

One tiny bundle serves the whole module. It is made by running examples/train_export_predict.py once
(synthetic surface-defect data, `tiny` preset, 1 epoch, random backbone weights, ONNX export, an fp32
TensorRT-RTX engine built ahead of time where tensorrt_rtx is installed): the end-to-end example is
itself the fixture, and its test checks what it printed. Decisions of a 1-epoch model on a random
backbone are meaningless; the point is that every path runs end to end, torch-free where a device
would be. The camera example reads a short video written here with OpenCV; without OpenCV those tests
skip, except the one that checks the example's message when OpenCV is missing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WATCH = ROOT / "export" / "service" / "watch_folder.py"
TIMEOUT = 120
try:
    import cv2
except ImportError:
    cv2 = None  # type: ignore[assignment]
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV missing (pip install opencv-python-headless)")


def run(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root, output captured."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_without(blocked: list[str], script: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run `script` as __main__ with the modules in `blocked` made unimportable (importing one fails the run)."""
    code = (
        "import runpy, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as when the package is absent\n"
        f"sys.argv = [{str(script)!r}, *{args!r}]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    if exc.code not in (0, None):\n"
        "        raise\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None, 'the example imported torch'\n"
    )
    return run(["-c", code])


def auto_backend(bundle: Path) -> str:
    """What Detector.load(bundle) picked here: the choice the example's first load measured and kept in the
    bundle's cache (backends.auto)."""
    from aminet_edge.bundle import read_config
    from aminet_edge.runtime.backends.auto import cached_choice

    choice = cached_choice(bundle, read_config(bundle))
    assert choice is not None, f"no measured choice in {bundle}: did the example load with backend='auto'?"
    return choice.backend


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """root/data (synthetic, MVTec layout) and root/bundle (tiny, 1 epoch, exported), made by the example."""
    pytest.importorskip("torch", reason="training needs torch (pip install 'aminet-edge[train]')")
    pytest.importorskip("onnxruntime", reason="prediction needs onnxruntime (pip install 'aminet-edge[onnxruntime]')")
    root = tmp_path_factory.mktemp("examples")
    proc = run([str(EXAMPLES / "train_export_predict.py"), "--out", str(root), "--epochs", "1", "--n-train", "12",
                "--no-pretrained", "--precision", "fp32", "--compute-capability", "89"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "data": root / "data", "bundle": root / "bundle", "stdout": proc.stdout}


def test_examples_have_help_with_the_options_their_docstrings_show() -> None:
    import ast
    import re

    for name in ("embed.py", "camera_loop.py", "train_export_predict.py"):
        proc = run([str(EXAMPLES / name), "--help"])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage:") and "--" in proc.stdout, name
        usage = (ast.get_docstring(ast.parse((EXAMPLES / name).read_text())) or "").split("\n\n")[1]
        assert usage.lstrip().startswith(f"python examples/{name}"), usage
        shown = set(re.findall(r"--[a-z][a-z-]*", usage))
        assert shown and shown <= set(re.findall(r"--[a-z][a-z-]*", proc.stdout)), (name, shown)


# ---- embed.py -----------------------------------------------------------------------------------------


def test_embed_prints_one_decision_per_image_without_torch(workspace: dict[str, Any]) -> None:
    images = sorted((workspace["data"] / "test").rglob("*.png"))
    proc = run_without(["torch"], EXAMPLES / "embed.py", [str(workspace["bundle"]), str(workspace["data"] / "test")])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    decisions = [line for line in lines if line.split()[0] in ("ok", "ANOMALY")]
    assert len(decisions) == len(images) > 0
    assert [line.split()[-1] for line in decisions] == [str(p) for p in images]
    for line in decisions:
        float(line.split()[1])  # the normalised score
    assert lines[-1].startswith(f"{len(images)} images; backend: {auto_backend(workspace['bundle'])}"), lines[-1]


def test_embed_with_its_defaults_runs_on_the_demo_layout_without_torch(workspace: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """As its docstring says: `aminet-edge demo` writes runs/demo/{bundle,data}, exported, then
    `python examples/embed.py` with no arguments, in a process where importing torch fails."""
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    shutil.copytree(workspace["bundle"], demo / "bundle")
    (demo / "data").symlink_to(workspace["data"])
    code = (f"import runpy, sys\nsys.modules['torch'] = None\nsys.argv = [{str(EXAMPLES / 'embed.py')!r}]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\nassert sys.modules['torch'] is None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    images = sorted((workspace["data"] / "test").rglob("*.png"))
    assert [line.split()[-1] for line in proc.stdout.splitlines()[:-1]] == [
        str(Path("runs/demo/data/test") / p.relative_to(workspace["data"] / "test")) for p in images]
    assert proc.stdout.splitlines()[-1].startswith(f"{len(images)} images; backend: ")


def test_embed_says_when_the_folder_has_no_images(workspace: dict[str, Any], tmp_path: Path) -> None:
    proc = run([str(EXAMPLES / "embed.py"), str(workspace["bundle"]), str(tmp_path)])
    assert proc.returncode == 1 and f"no images under {tmp_path}" in proc.stderr


# ---- camera_loop.py -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(workspace: dict[str, Any]) -> Path:
    """A 12-frame 160x120 MJPG video of the test images (good and defective), as a camera would give."""
    if cv2 is None:
        pytest.skip("OpenCV missing (pip install opencv-python-headless)")
    from PIL import Image

    path = workspace["root"] / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    images = sorted((workspace["data"] / "test").rglob("*.png"))
    for i in range(12):
        rgb = np.asarray(Image.open(images[i % len(images)]).convert("RGB").resize((160, 120)))
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV frames are BGR
    writer.release()
    return path


@needs_cv2
def test_camera_loop_on_a_video_file(workspace: dict[str, Any], video: Path, tmp_path: Path) -> None:
    out, jsonl = tmp_path / "overlay.avi", tmp_path / "frames.jsonl"
    proc = run([str(EXAMPLES / "camera_loop.py"), "--bundle", str(workspace["bundle"]), "--source", str(video),
                "--no-display", "--out", str(out), "--jsonl", str(jsonl), "--max-frames", "10"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("10 frames, ") and "FPS overall" in proc.stdout
    assert auto_backend(workspace["bundle"]) in proc.stdout
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(10))
    assert all(isinstance(r["is_anomaly"], bool) and r["score"] > 0 for r in rows)
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 10 and frames[0].shape == (120, 160, 3)
    source = cv2.VideoCapture(str(video)).read()[1]
    assert np.abs(frames[0].astype(int) - source.astype(int)).mean() > 5  # the overlay was drawn


def test_camera_loop_without_opencv_says_how_to_install(tmp_path: Path) -> None:
    proc = run_without(["cv2", "torch"], EXAMPLES / "camera_loop.py", ["--bundle", str(tmp_path)])
    assert proc.returncode == 2, proc.stderr
    assert "needs OpenCV" in proc.stderr and "pip install opencv-python-headless" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_cv2
def test_camera_loop_reports_a_source_it_cannot_open(workspace: dict[str, Any], tmp_path: Path) -> None:
    proc = run([str(EXAMPLES / "camera_loop.py"), "--bundle", str(workspace["bundle"]),
                "--source", str(tmp_path / "absent.mp4"), "--no-display"])
    assert proc.returncode == 1 and "cannot open video source" in proc.stderr


@needs_cv2
def test_camera_loop_reports_a_bad_bundle(tmp_path: Path) -> None:
    proc = run([str(EXAMPLES / "camera_loop.py"), "--bundle", str(tmp_path), "--no-display"])
    assert proc.returncode == 1 and "cannot load" in proc.stderr and "Traceback" not in proc.stderr


# ---- train_export_predict.py --------------------------------------------------------------------------


def test_train_export_predict_end_to_end(workspace: dict[str, Any]) -> None:
    out = workspace["stdout"]
    for title in ("1. synthetic data", "2. train", "3. export ONNX", "4. TensorRT-RTX engine", "5. predict"):
        assert f"== {title}" in out, title
    bundle = workspace["bundle"]
    assert {"model.onnx", "model_a.onnx", "model_b.onnx"} <= {p.name for p in bundle.glob("*.onnx")}
    engine_step = out.split("== 4.")[1].split("== 5.")[0]
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        assert "skipped:" in engine_step and "tensorrt" in engine_step
    else:
        assert "not run here: it needs an RTX GPU" in engine_step, engine_step
        engines = json.loads((bundle / "config.json").read_text())["artifacts"]["engines"]
        assert [(e["backend"], e["precision"], e["compute_capabilities"]) for e in engines] == [
            ("tensorrt_rtx", "fp32", [89])]
        assert (bundle / engines[0]["path"]).stat().st_size == engines[0]["bytes"] > 0
    tested = len(list((workspace["data"] / "test").rglob("*.png")))
    assert f"/{tested} decisions right; backend: {auto_backend(bundle)}" in out
    diff = float(out.rsplit("largest relative image-score difference ", 1)[1].split()[0])
    assert diff < 1e-3, out  # fp32 graphs vs the torch model: float rounding only


def test_rtx_aot_script_builds_an_engine_without_a_gpu(workspace: dict[str, Any], tmp_path: Path) -> None:
    """export/rtx/build_engine_aot.sh end to end (the engine is built, never run: no GPU here)."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install 'aminet-edge[rtx]')")
    bundle = tmp_path / "bundle"
    shutil.copytree(workspace["bundle"], bundle)
    proc = subprocess.run(["bash", str(ROOT / "export" / "rtx" / "build_engine_aot.sh"), str(bundle), "--cc", "86,89",
                           "--precision", "fp32", "--batch", "1,2,4", "--python", sys.executable],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads((bundle / "config.json").read_text())["artifacts"]["engines"]
    record = next(r for r in records if r["compute_capabilities"] == [86, 89])
    assert record["batch"] == [1, 2, 4] and record["precision"] == "fp32" and record["target"] == "rtx"
    assert str(bundle / record["path"]) in proc.stdout
    assert "copy " in proc.stdout.splitlines()[-1]


# ---- export/service/watch_folder.py (the service worker) -----------------------------------------------


def _inbox(workspace: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir()
    images = sorted((workspace["data"] / "test").rglob("*.png"))
    for i, image in enumerate(images):
        shutil.copy(image, folder / f"{i:02d}_{image.parent.name}.png")
    (folder / "notes.txt").write_text("not an image")
    return sorted(folder.glob("*.png"))


def test_watch_folder_once_predicts_moves_and_records(workspace: dict[str, Any], tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    images = _inbox(workspace, inbox)
    (inbox / "broken.png").write_bytes(b"not a png")
    args = ["--bundle", str(workspace["bundle"]), "--input", str(inbox), "--out", str(out), "--once",
            "--after", "move", "--overlays", "--sensitivity", "1.0", "--batch", "2"]
    proc = run_without(["torch"], WATCH, args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert proc.stdout.splitlines() == (out / "results.jsonl").read_text().splitlines()
    assert sorted(r["path"] for r in rows) == sorted([str(p) for p in images] + [str(inbox / "broken.png")])
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert broken["error"] and broken["is_anomaly"] is None
    good = [r for r in rows if r["error"] is None]
    assert all(r["backend"] == auto_backend(workspace["bundle"]) and 0 <= r["anomaly_area"] <= 1 for r in good)
    assert [p.name for p in inbox.iterdir()] == ["notes.txt"]  # every image moved, other files left
    moved = {p.parent.name for p in (out / "processed").rglob("*.png")}
    assert moved <= {"ok", "anomaly", "error"} and "error" in moved
    anomalous = [r for r in good if r["is_anomaly"]]
    assert len(list((out / "overlays").glob("*.png"))) == len(anomalous)


def test_watch_folder_keep_mode_does_not_repeat_after_a_restart(workspace: dict[str, Any], tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    images = _inbox(workspace, inbox)
    args = [str(WATCH), "--bundle", str(workspace["bundle"]), "--input", str(inbox), "--out", str(out), "--once",
            "--quiet"]
    assert run(args).returncode == 0
    shutil.copy(images[0], inbox / "new.png")
    proc = run(args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(images) + 1 and rows[-1]["path"] == str(inbox / "new.png")


def test_watch_folder_service_picks_up_new_files_and_stops_on_sigterm(workspace: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    results = out / "results.jsonl"  # created once the model is loaded
    proc = subprocess.Popen([sys.executable, str(WATCH), "--bundle", str(workspace["bundle"]), "--input", str(inbox),
                             "--out", str(out), "--poll", "0.1", "--settle", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not results.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.copy(next((workspace["data"] / "test" / "good").glob("*.png")), inbox / "part.png")
        while not results.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        assert json.loads(results.read_text())["path"] == str(inbox / "part.png")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stopped: 1 images, " in stderr
