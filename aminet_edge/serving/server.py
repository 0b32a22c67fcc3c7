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
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
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
    """Our environment with this interpreter's libpython folder first on LD_LIBRARY_PATH, and the folder
    this aminet_edge is imported from first on PYTHONPATH (the model shim honours it), so the server runs
    the same aminet_edge as the caller."""
    import aminet_edge

    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    package_root = str(Path(aminet_edge.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A tritonserver process serving `repository`; use as a context manager or start()/stop().

    host: address to bind (default 127.0.0.1: this machine only); http_port / grpc_port: None = a free
    port. `url` is the HTTP address for RemoteDetector. Output goes to `log_path` (default: a file in
    the server's temporary folder; `log_tail()` returns its end, which errors quote).
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
        self.log_path = Path(log_path) if log_path else self._tmp / "tritonserver.log"
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

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
        """Start the process and wait until /v2/health/ready answers 200; ServerError (with the log's end)
        if it exits or is not ready within `timeout` seconds."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_environment(), start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with status {self.process.returncode} during start-up:\n"
                                  f"{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

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
        """Kill at once (SIGKILL to the group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
