"""Serving that keeps users' files and keeps serving: the repository writer's ownership, model names,
atomic repository files, the client's whole-request deadline, the served Python's import path, and the
supervised server (restart after a crash, death with `serve`).

Servers started here: one that fails at start-up (a model that cannot import), and one `aminet-edge serve`
process whose tritonserver is killed (SIGKILL), crashed (a request tritonserver 2.51 aborts on) and then
orphaned (serve killed with SIGKILL). Faults are injected, never waited for: the deadline test's server
is a local HTTP server that answers one byte at a time for far longer than the deadline.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from test_detector import generated_images, shared_bundle  # noqa: E402
from test_output_paths import _cli, _digests  # noqa: E402

from aminet_edge.bundle import BundleError  # noqa: E402
from aminet_edge.serving.repository import OWNER_FILE, bundle_parameter, write_repository  # noqa: E402
from aminet_edge.serving.server import ServerError, TritonServer, find_tritonserver, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture
def run(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the shared bundle (the tests aim at folders around it) in tmp_path/project/run."""
    return Path(shutil.copytree(bundle, tmp_path / "project" / "run", ignore=shutil.ignore_patterns("cache")))


def _binary() -> Path:
    try:
        return find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"tritonserver not installed: {exc}")


# ---- the repository folder is owned ----------------------------------------------------------------
def test_output_over_around_or_inside_the_bundle_is_refused(run: Path) -> None:
    before = _digests(run.parent)
    link = run.parent.parent / "link"
    link.symlink_to(run.parent)
    for out in (run.parent, run, run / "repo", link, run.parent.parent):
        code, output = _cli("triton-repo", str(run), str(out))
        assert code == 1 and "choose a folder outside the bundle" in output, (out, output)
        assert "Traceback" not in output
    code, output = _cli("serve", str(run), "--repository", str(run.parent), "--http-port", "1")
    assert code == 1 and "contains the bundle" in output, output
    with pytest.raises(BundleError, match="lies inside the bundle"):
        write_repository(run, run / "models")
    assert _digests(run.parent) == before  # not one file of the bundle (or next to it) touched
    assert not (run / "repo").exists() and not (run / "models").exists()


@pytest.mark.parametrize("name", ["", "../victim", "a/b", ".", "..", "-rf", "x" * 65, "name with space"])
def test_model_names_are_plain_identifiers(run: Path, name: str) -> None:
    out = run.parent / "models"
    victim = run.parent / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("user data")
    (out / "other").mkdir(parents=True)
    (out / "other" / "keep.txt").write_text("user model")
    code, output = _cli("triton-repo", str(run), str(out), "--model-name", name)
    assert code == 1 and "model name must be" in output, output
    with pytest.raises(ValueError, match="model name must be"):
        write_repository(run, out, model_name=name)
    assert (victim / "keep.txt").read_text() == "user data"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["other", "other/keep.txt"]


def test_instances_and_max_batch_are_bounded(run: Path) -> None:
    """--instances above 64 and --max-batch above 1024 are refused before anything is written (serve would
    start that many model instances); the bounds themselves are accepted and reach config.pbtxt."""
    out = run.parent / "models"
    for args, message in ((["--instances", "100000"], "--instances (instances) must be between 1 and 64, got 100000"),
                          (["--instances", "65"], "--instances (instances) must be between 1 and 64, got 65"),
                          (["--max-batch", "100000000"],
                           "--max-batch (max_batch) must be between 1 and 1024, got 100000000"),
                          (["--max-batch", "1025"], "--max-batch (max_batch) must be between 1 and 1024, got 1025")):
        code, output = _cli("triton-repo", str(run), str(out), *args)
        assert code == 1 and message in output and "Traceback" not in output, output
        assert not out.exists()
    code, output = _cli("triton-repo", str(run), str(out), "--instances", "64", "--max-batch", "1024")
    assert code == 0, output
    config = (out / "aminet" / "config.pbtxt").read_text()
    assert "max_batch_size: 1024" in config and "count: 64" in config, config


def test_rewrites_delete_only_what_was_written_and_recorded(run: Path) -> None:
    out = run.parent / "models"
    (out / "other" / "1").mkdir(parents=True)
    (out / "other" / "config.pbtxt").write_text("the user's model, not ours to parse\n")
    (out / "notes.txt").write_text("mine")
    user = {"other/config.pbtxt": "the user's model, not ours to parse\n", "notes.txt": "mine"}

    def ours() -> set[str]:
        return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - set(user) - {OWNER_FILE}

    def recorded() -> set[str]:
        models = json.loads((out / OWNER_FILE).read_text())["models"]
        return {f for m in models.values() for f in m["files"]}

    write_repository(run, out, "gpu", model_name="line2")
    gpu_files = ours()
    assert {f.split("/")[0] for f in gpu_files} == {"line2", "line2_pre", "line2_trt", "line2_post", "deepstream"}
    assert gpu_files == recorded()
    assert os.access(out / "line2_trt" / "build" / "build_plan.sh", os.X_OK)
    write_repository(run, out, "cpu", model_name="line2")  # the gpu folders are removed, the user's kept
    assert {f.split("/")[0] for f in ours()} == {"line2"} and ours() == recorded()
    assert not any((out / d).exists() for d in ("line2_pre", "line2_trt", "line2_post"))
    assert (out / "deepstream").is_dir() is False
    write_repository(run, out, "cpu")  # a second model next to it: both recorded, each its own
    assert {f.split("/")[0] for f in ours()} == {"line2", "aminet"} and ours() == recorded()
    assert all((out / rel).read_text() == text for rel, text in user.items())
    assert (out / "other" / "1").is_dir()
    (out / "aminet" / "1" / ".model.py.0badc0de.tmp").write_text("a temporary a killed write left")
    write_repository(run, out)  # a temporary of a recorded file is ours too: removed, not refused
    assert not list(out.rglob("*.tmp"))


def test_folders_holding_what_was_not_written_are_refused(run: Path, tmp_path: Path) -> None:
    out = run.parent / "models"
    write_repository(run, out)
    (out / "aminet" / "2").mkdir()
    (out / "aminet" / "2" / "model.py").write_text("the user's version 2")
    before = _digests(out)
    code, output = _cli("triton-repo", str(run), str(out))
    assert code == 1 and "aminet-edge did not write" in output and "aminet/2/model.py" in output, output
    assert _digests(out) == before
    # a model folder that is a link to the user's folder: never written through, never deleted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    (out / "line3").symlink_to(elsewhere)
    with pytest.raises(BundleError, match="not a folder aminet-edge wrote"):
        write_repository(run, out, model_name="line3")
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]
    # a record edited to claim a file outside the repository is not believed
    outside = run.parent / "outside.txt"
    outside.write_text("x")
    record = json.loads((out / OWNER_FILE).read_text())
    record["models"]["aminet"]["files"].append("../outside.txt")
    (out / OWNER_FILE).write_text(json.dumps(record))
    shutil.rmtree(out / "aminet" / "2")
    with pytest.raises(BundleError, match="not a record written by aminet-edge"):
        write_repository(run, out)
    assert outside.read_text() == "x"


def test_a_failed_rewrite_leaves_no_partial_file(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while copying a graph (disk full): no file of the repository is ever half-written, the
    temporary is gone, and the next write completes (removing what the failed one left)."""
    out = run.parent / "models"
    write_repository(run, out)
    complete = _digests(out / "aminet")
    real = shutil.copyfileobj
    calls = []

    def half_then_fail(src, dst, length=0):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            dst.write(src.read(1000))
            raise OSError(28, "No space left on device")
        return real(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_repository(run, out)
    monkeypatch.setattr(shutil, "copyfileobj", real)
    left = _digests(out / "aminet")
    assert left and all(complete[rel] == digest for rel, digest in left.items())  # whole files only
    assert not [p for p in out.rglob("*.tmp")]
    write_repository(run, out)
    assert _digests(out / "aminet") == complete


# ---- the client's deadline ----------------------------------------------------------------------------
class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers the model config at once, and an inference one byte every 20 ms (for up to 30 s): each
    network step is quick, the whole answer is not."""

    protocol_version = "HTTP/1.1"
    config: bytes = b"{}"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.config)))
        self.end_headers()
        self.wfile.write(self.config)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1500")
        self.end_headers()
        try:
            for _ in range(1500):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:  # the client gave up: what the test wants
            pass


def test_timeout_is_a_deadline_for_the_whole_request(bundle: Path) -> None:
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    from aminet_edge.serving import RemoteDetector, RequestTimeoutError

    handler = type("Handler", (_Trickle,), {"config": json.dumps(
        {"name": "aminet", "parameters": {k: {"string_value": v} for k, v in bundle_parameter(bundle).items()}}
    ).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        remote = RemoteDetector(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.5, concurrency=2)
        t0 = time.monotonic()
        got = remote.predict(generated_images(2))
        elapsed = time.monotonic() - t0
        remote.close()
    finally:
        server.shutdown()
        server.server_close()
    assert [type(r.error) for r in got] == [RequestTimeoutError] * 2, got
    assert "within 0.5 s" in str(got[0].error)
    assert elapsed < 25  # far before the trickle ends (30 s): the deadline, not the server, ended it


# ---- the served model's Python -------------------------------------------------------------------------
def test_served_python_imports_what_the_caller_imports(bundle: Path, tmp_path: Path) -> None:
    """The stub's embedded interpreter computes its sys.path from the base installation (no virtual
    environment's site-packages). Stand-in: an isolated interpreter without site-packages (-I -S) runs the
    written model.py with the server's environment, then imports what the served model needs."""
    from aminet_edge.serving.server import server_environment

    write_repository(bundle, tmp_path / "repo")
    model_py = tmp_path / "repo" / "aminet" / "1" / "model.py"
    code = (f"exec(open({str(model_py)!r}).read())\n"
            "import numpy, onnxruntime\nfrom aminet_edge.runtime import Detector\nprint('ok', TritonPythonModel)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], env=server_environment(), capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_start_failure_names_the_cause_and_keeps_the_log(bundle: Path, tmp_path: Path) -> None:
    write_repository(bundle, tmp_path / "repo")
    model_py = tmp_path / "repo" / "aminet" / "1" / "model.py"
    model_py.write_text("raise ModuleNotFoundError(\"No module named 'onnxruntime_probe'\")\n")
    server = TritonServer(tmp_path / "repo", binary=_binary())
    with pytest.raises(ServerError) as info:
        server.start(timeout=120)
    server.close()
    message = str(info.value)
    assert "No module named 'onnxruntime_probe'" in message and str(server.log_path) in message, message
    assert "+----" not in message and len(message) < 2000, message  # the cause, not the log's tables
    assert server.log_path.is_file() and "onnxruntime_probe" in server.log_path.read_text()
    server.log_path.unlink()


# ---- the supervised server ----------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _group_alive(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_serve_restarts_a_crashed_server_and_takes_it_down_when_killed(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    from aminet_edge.serving import RemoteDetector

    _binary()
    http_port, grpc_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    serve = subprocess.Popen([sys.executable, "-m", "aminet_edge", "serve", str(bundle), "--http-port",
                              str(http_port), "--grpc-port", str(grpc_port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in serve.stdout], daemon=True).start()

    def expect(pattern: str, timeout: float = 180.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s; serve said:\n{''.join(seen)}")

    url = f"http://127.0.0.1:{http_port}"
    try:
        first = int(expect(r"healthy: .* tritonserver pid (\d+)").group(1))
        image = generated_images(1)[0]
        assert RemoteDetector(url).predict(image).ok
        os.kill(first, signal.SIGKILL)  # a crash, injected
        expect(rf"tritonserver \(pid {first}\) exited with signal SIGKILL; restarting")
        second = int(expect(r"tritonserver restarted \(pid (\d+)\)").group(1))
        assert not _alive(first) and RemoteDetector(url).predict(image).ok
        # JSON data declaring 2^62 bytes: tritonserver 2.51's HTTP frontend allocates them and aborts
        body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 2 ** 62], "datatype": "UINT8", "data": [1]},
                                      {"name": "MAP_MAX_SIDE", "shape": [1, 1], "datatype": "INT32", "data": [0]}]})
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/aminet/infer", data=body.encode()),
                                   timeout=60)
            status = 200
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:  # the server died answering it
            status = 0
        assert status != 200
        if status == 0:
            expect(rf"tritonserver \(pid {second}\) exited with signal SIGABRT; restarting")
            second = int(expect(r"tritonserver restarted \(pid (\d+)\)").group(1))
        assert RemoteDetector(url).predict(image).ok  # serving again
        pgid = os.getpgid(second)
        serve.kill()  # SIGKILL: no handler of serve runs
        serve.wait(timeout=30)
        _wait_for(lambda: not _alive(second), "tritonserver to die with serve")
        _wait_for(lambda: not _group_alive(pgid), "its Python stubs to exit")
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    log = re.search(r"\(full log: (\S+)\)", "".join(seen))
    assert log and Path(log.group(1)).is_file()  # the crashed server's log is kept for the user
    Path(log.group(1)).unlink()
