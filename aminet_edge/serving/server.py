"""Run NVIDIA's `tritonserver` on a model repository: find the binary, start it, wait until ready, stop.

Where the binary comes from (first found):
1. $AMINET_TRITONSERVER: path of a `tritonserver` binary;
2. the `pytriton` package of the PyPI wheel `nvidia-pytriton` when installed (`pip install --no-deps`);
3. the wheel unpacked by scripts/install_tritonserver.sh into ~/.cache/aminet-edge/pytriton-<version>
   ($AMINET_TRITON_HOME overrides the folder);
4. `tritonserver` on PATH (NVIDIA's Triton container: /opt/tritonserver/bin).
The wheel carries tritonserver 2.51 with the Python backend and one backend stub per Python version;
`nvidia-pytriton`'s own Python package pins numpy<2, which is why it is installed without its
dependencies: only the binary is used. The stub embeds the interpreter's libpython, so that library's
folder goes first on LD_LIBRARY_PATH (a pyenv Python otherwise picks the system's libpython of another
patch version and fails at model init).

Supervision: the server dies with its parent (Linux: PR_SET_PDEATHSIG, so a `serve` killed with SIGKILL
takes tritonserver with it; its Python stubs exit when tritonserver is gone), and `supervise` restarts a
server that exits while serving (tritonserver 2.51 aborts on some malformed HTTP requests, e.g. JSON
data declaring a shape of 2^62 elements), saying so with the log's cause. A server that fails or
crashes keeps its log file, and errors quote the log's error lines, not just its end.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

PYTRITON_VERSION = "0.7.0"  # the wheel scripts/install_tritonserver.sh installs (tritonserver 2.51)


class ServerError(RuntimeError):
    """tritonserver is missing, cannot start, or did not become ready in time (the message says why)."""


def _wheel_roots() -> list[Path]:
    roots = []
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        roots.append(Path(list(spec.submodule_search_locations)[0]) / "tritonserver")
    home = os.environ.get("AMINET_TRITON_HOME") or str(Path.home() / ".cache" / "aminet-edge" /
                                                       f"pytriton-{PYTRITON_VERSION}")
    roots.append(Path(home) / "pytriton" / "tritonserver")
    return roots


def find_tritonserver() -> Path:
    """The tritonserver binary (see the module docstring for the search order); ServerError if none."""
    env = os.environ.get("AMINET_TRITONSERVER")
    if env:
        if not Path(env).is_file():
            raise ServerError(f"AMINET_TRITONSERVER={env} is not a file")
        return Path(env)
    for root in _wheel_roots():
        if (root / "bin" / "tritonserver").is_file():
            return root / "bin" / "tritonserver"
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    raise ServerError("tritonserver not found: run scripts/install_tritonserver.sh (unpacks the PyPI wheel "
                      "nvidia-pytriton, without its numpy<2 pin, into ~/.cache/aminet-edge), set "
                      "AMINET_TRITONSERVER, or use NVIDIA's Triton container")


def backend_directory(binary: Path, workdir: Path) -> Path:
    """The --backend-directory for `binary`: the wheel's backends with the Python stub of this interpreter
    linked in (in `workdir`), or the binary's own backends folder (a Triton install)."""
    root = binary.parent.parent
    stubs = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    if not stubs.is_dir():
        return root / "backends"
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    links = {f.name: f for f in (root / "backends" / "python").iterdir() if f.is_file()}
    links["triton_python_backend_stub"] = stubs / "triton_python_backend_stub"
    for name, source in links.items():
        if not (target / name).is_symlink():
            (target / name).symlink_to(source)
    return workdir / "backends"


def server_environment() -> dict[str, str]:
    """Our environment with this interpreter's libpython folder first on LD_LIBRARY_PATH, and on
    PYTHONPATH (the model shim honours it) the folder this aminet_edge is imported from, then every
    folder of this interpreter's sys.path: the stub's embedded interpreter computes its own path from
    the base installation, without a virtual environment's or an editable install's site-packages,
    so the served model imports the same aminet_edge, onnxruntime and openvino as the caller."""
    import aminet_edge

    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    package_root = str(Path(aminet_edge.__file__).resolve().parent.parent)
    paths = [package_root, *(p for p in sys.path if p and os.path.isdir(p)),
             *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


_PR_SET_PDEATHSIG = 1


def _death_signal() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGKILL when its parent dies (Linux prctl; None elsewhere).
    prctl is looked up here, in the parent: the child between fork and exec only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


# glog error lines of a CPU-only tritonserver that are not problems
_LOG_NOISE = ("CudaDriverHelper has not been initialized",)


def log_problems(text: str) -> list[str]:
    """The lines of a tritonserver log that say what went wrong: error lines (their Python traceback
    locations dropped), fatal signals, C++ exceptions, and the final `error:` line."""
    found = []
    for line in text.splitlines():
        if re.match(r"E\d{4} ", line) and not any(n in line for n in _LOG_NOISE):
            message = line.split("] ", 1)[-1].strip().strip('"').replace("\\n", "\n")
            found.append(message.split("\n\nAt:")[0].strip())
        elif line.startswith(("error:", "Signal (", "terminate called")) or "what():" in line:
            found.append(line.strip())
    return list(dict.fromkeys(found))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A tritonserver process serving `repository`; use as a context manager or start()/stop().

    host: address to bind (default 127.0.0.1: this machine only); http_port / grpc_port: None = a free
    port. `url` is the HTTP address for RemoteDetector. Output goes to `log_path` (default: a temporary
    file, deleted by `close()` unless the server failed to start or exited on its own: then it is kept
    for the user, and errors name it and quote its `log_problems`). The process dies with the thread
    that started it (PR_SET_PDEATHSIG): start it from the thread that lives as long as the server.
    """

    def __init__(self, repository: str | Path, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, log_path: str | Path | None = None, binary: str | Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.repository = Path(repository)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.binary = Path(binary) if binary else find_tritonserver()
        self._tmp = Path(tempfile.mkdtemp(prefix="aminet-triton-"))
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="aminet-tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.keep_log = not self._own_log  # set when the server fails: its log is what the user needs
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # the log's size when the process started: failure() reads from there

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.http_port}"

    def command(self) -> list[str]:
        return [str(self.binary), f"--model-repository={self.repository}",
                f"--backend-directory={backend_directory(self.binary, self._tmp)}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=false", "--exit-timeout-secs=5", "--strict-readiness=true", *self.extra_args]

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the process and wait until /v2/health/ready answers 200; ServerError (with the log's error
        lines) if it exits or is not ready within `timeout` seconds."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_environment(), start_new_session=True,
                                        preexec_fn=_death_signal())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                self.kill()
                raise ServerError(f"tritonserver exited with {describe_status(status)} during start-up:\n"
                                  f"{self.failure()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s:\n{self.failure()}")

    def failure(self) -> str:
        """What the log says went wrong since the last start (its error lines, else its last lines), and
        where the whole log is; marks the log to be kept."""
        self.keep_log = True
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        problems = log_problems(text) or [line for line in text.splitlines() if line.strip()][-5:]
        return "".join(f"  {p}\n" for p in problems[-12:]) + f"(full log: {self.log_path})"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1.0) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after `timeout` seconds (stubs included)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # the Python stubs are in the same process group; none may outlive the server
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None

    def kill(self) -> None:
        """Kill at once (SIGKILL to the group: the Python stubs too), as a crash would."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop; remove the temporary folder, and the log unless it is kept (see the class docstring)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._own_log and not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_status(status: int) -> str:
    """A Popen return code in words: "status 1" or "signal SIGKILL"."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def supervise(server: TritonServer, say: Callable[[str], None], max_crashes: int = 5, window_s: float = 300.0,
              start_timeout: float = 120.0) -> None:
    """Keep a started `server` serving until interrupted (KeyboardInterrupt propagates): when its process
    exits, `say` why (exit status, the log's error lines, the log's path) and start it again on the same
    ports. ServerError when it cannot start again, or exits `max_crashes` times within `window_s` seconds
    (a crash loop: restarting would not help)."""
    crashes: list[float] = []
    while True:
        if server.process is None:
            raise ServerError("supervise needs a started server")
        pid = server.process.pid
        status = server.process.wait()
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < window_s] + [now]
        cause = server.failure()
        server.kill()  # its Python stubs too
        if len(crashes) >= max_crashes:
            raise ServerError(f"tritonserver exited {len(crashes)} times within {window_s:.0f} s, last with "
                              f"{describe_status(status)}; not restarting:\n{cause}")
        say(f"tritonserver (pid {pid}) exited with {describe_status(status)}; restarting it:\n{cause}")
        server.start(timeout=start_timeout)
        say(f"tritonserver restarted (pid {server.process.pid}), healthy at {server.url}")
