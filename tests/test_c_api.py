"""libaminet, the C runtime, against the Python Detector (docs/c-api.md).

The library is built once per session with CMake (a build folder in the temp dir named by the hash of
its sources, reused while they are unchanged). Then:
- tests/c/test_aminet.c runs under ctest on the test vectors the Python Detector writes
  (tests/c_api_vectors.py): scores, decisions, maps, token masks, per-frame errors, refused bundles, plus
  NULL pointers, bad sizes and strides, a newer header, and 8 threads sharing one detector;
- through ctypes, frames of random sizes, channel counts, channel orders and row strides are predicted
  by both implementations and compared: scores within 1e-5 relative (the OpenVINO graph is the same and
  preprocessing is bit-exact, so they agree to float32 rounding), decisions and token masks identical,
  maps within 1e-5 of their maximum;
- the resize alone is compared with Pillow's bit for bit;
- `cmake --install` gives find_package(aminet), which builds examples/c and examples/cpp; they and
  examples/csharp (Mono's mcs and mono) predict image files as the Python Detector does.
Skipped, with the reason, where CMake, a compiler, OpenVINO's CMake config, nlohmann_json or OpenSSL's
headers are missing (scripts/test.sh installs the Debian packages).
"""

from __future__ import annotations

import ctypes as C
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is trained by test_detector
openvino = pytest.importorskip("openvino")

from c_api_vectors import frame, write_vectors  # noqa: E402
from c_build_tools import missing_c_runtime_tools  # noqa: E402
from test_detector import GUIDE_MAP, generated_images, shared_bundle  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["CMakeLists.txt", "cmake", "csrc/include/aminet", "csrc/runtime", "tests/c", "aminet_edge/__init__.py",
           "examples/c", "examples/cpp"]
RTOL = 1e-5


def source_hash(extra: str = "") -> str:
    """sha256 (16 hex) of the library's and the C test's sources, and `extra` (build options)."""
    h = hashlib.sha256(extra.encode())
    for rel in SOURCES:
        path = ROOT / rel
        for f in sorted(path.rglob("*") if path.is_dir() else [path]):
            if f.is_file():
                h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cmake(*args: str) -> subprocess.CompletedProcess[str]:
    """Run cmake; a failure fails the test with the tail of its output."""
    run = subprocess.run(["cmake", *args], capture_output=True, text=True)
    assert run.returncode == 0, f"cmake {' '.join(args)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run


def build(options: tuple[str, ...] = (), target: str = "all") -> Path:
    """Configure and build libaminet and its C tests (or `target`) in <tmp>/aminet-capi-<hash>; reused
    while the sources, `options` and the OpenVINO version are unchanged (a file lock keeps two sessions
    from building one folder at once). Returns the build folder."""
    reason = missing_c_runtime_tools()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.gettempdir()) / f"aminet-capi-{source_hash(' '.join(options) + openvino.__version__)}"
    done = folder / "built.ok"
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        run = cmake("-S", str(ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release", "-DAMINET_BUILD_CUDA=OFF",
                    "-DAMINET_COPY_INPLACE=OFF", *options)
        cmake("--build", str(folder), "-j2", "--target", target)
        if not (folder / "libaminet.so").exists():
            pytest.fail(f"libaminet was not built; the configure log says:\n{run.stdout[-3000:]}")
        done.write_text("ok\n")
    return folder


@pytest.fixture(scope="session")
def build_dir() -> Path:
    return build()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def python_detector(bundle: Path) -> Detector:
    """The reference: the Python Detector on the C library's backend and defaults (openvino fp32, batch 8)."""
    return Detector.load(bundle, backend="openvino", cache=False)


@pytest.fixture(scope="module")
def vectors(bundle: Path, python_detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vectors(bundle, tmp_path_factory.mktemp("c_api_vectors"), python_detector)


def run_ctest(folder: Path, vectors: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctest", "--test-dir", str(folder), "--output-on-failure", "-V"], capture_output=True,
                          text=True, env={**os.environ, "AMINET_TEST_VECTORS": str(vectors), **env}, timeout=300)


def test_c_program_passes_the_python_vectors(build_dir: Path, vectors: Path) -> None:
    run = run_ctest(build_dir, vectors)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "vectors: 9 calls, 33 frame results, 15 refused bundles" in run.stdout
    assert "threads: 8 threads x 3 rounds" in run.stdout
    assert ", 0 failed" in run.stdout


# the sanitizer build unoptimised (-O0): it compiles in a third of the time and checks the same code paths
SANITIZE = ("-DAMINET_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Sanitize", "-DCMAKE_CXX_FLAGS=-O0 -g1", "-DCMAKE_C_FLAGS=-O0 -g")


def test_c_program_under_address_and_undefined_behavior_sanitizers(vectors: Path) -> None:
    """The same C test with libaminet and the test built with ASan + UBSan (leak checks on, any UB report
    fatal). TBB_ENABLE_SANITIZERS=1 makes OpenVINO's TBB dlopen its hwloc binding without RTLD_DEEPBIND,
    which the sanitizer runtime cannot load."""
    folder = build(SANITIZE, target="aminet_c_test")
    run = run_ctest(folder, vectors, TBB_ENABLE_SANITIZERS="1")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert ", 0 failed" in run.stdout
    assert "AddressSanitizer" not in output and "runtime error" not in output and "LeakSanitizer" not in output


def test_c_program_fails_on_a_wrong_vector(build_dir: Path, vectors: Path, tmp_path: Path) -> None:
    """The C test can fail: one expected score moved by 1e-4 relative is reported."""
    lines = vectors.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("ok 1 "))
    words = lines[i].split()
    words[2] = repr(float(words[2]) * (1 + 1e-4))
    lines[i] = " ".join(words)
    wrong = tmp_path / "vectors.txt"
    wrong.write_text("\n".join(lines) + "\n")
    run = run_ctest(build_dir, wrong)
    assert run.returncode != 0
    assert "plain[1]: score" in run.stdout + run.stderr


# ---- ctypes ---------------------------------------------------------------------------------------
class Image(C.Structure):
    _fields_ = [("data", C.c_void_p), ("width", C.c_int32), ("height", C.c_int32), ("stride", C.c_int64),
                ("channels", C.c_int32), ("order", C.c_int32)]


class Params(C.Structure):
    _fields_ = [("map", C.c_int32), ("threshold", C.c_int32), ("threshold_value", C.c_double),
                ("sensitivity", C.c_double), ("pixel_threshold", C.c_double)]


class CResult(C.Structure):
    _fields_ = [("status", C.c_int32), ("message", C.c_char_p), ("score", C.c_double),
                ("normalized_score", C.c_double), ("is_anomaly", C.c_int32), ("image_threshold", C.c_double),
                ("pixel_threshold", C.c_double), ("map_width", C.c_int32), ("map_height", C.c_int32),
                ("anomaly_map", C.POINTER(C.c_float)), ("mask", C.POINTER(C.c_uint8)), ("grid_size", C.c_int32),
                ("token_mask", C.POINTER(C.c_uint8))]


def load_library(folder: Path) -> C.CDLL:
    lib = C.CDLL(str(folder / "libaminet.so"))
    lib.aminet_last_error.restype = C.c_char_p
    lib.aminet_version.restype = C.c_char_p
    lib.aminet_abi_version.restype = C.c_int32
    lib.aminet_detector_create_abi.argtypes = [C.c_int32, C.c_char_p, C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
    lib.aminet_detector_release.argtypes = [C.c_void_p]
    lib.aminet_predict.argtypes = [C.c_void_p, C.POINTER(Image), C.c_size_t, C.POINTER(Params), C.POINTER(C.c_void_p)]
    lib.aminet_predict_params_init.argtypes = [C.POINTER(Params)]
    lib.aminet_results_count.argtypes = [C.c_void_p]
    lib.aminet_results_count.restype = C.c_size_t
    lib.aminet_results_get.argtypes = [C.c_void_p, C.c_size_t]
    lib.aminet_results_get.restype = C.POINTER(CResult)
    lib.aminet_results_release.argtypes = [C.c_void_p]
    lib.aminet_options_create.argtypes = [C.POINTER(C.c_void_p)]
    lib.aminet_options_set.argtypes = [C.c_void_p, C.c_char_p, C.c_char_p]
    lib.aminet_options_release.argtypes = [C.c_void_p]
    return lib


@pytest.fixture(scope="module")
def lib(build_dir: Path) -> C.CDLL:
    return load_library(build_dir)


@pytest.fixture(scope="module")
def c_detector(lib: C.CDLL, bundle: Path):  # type: ignore[no-untyped-def]
    det = C.c_void_p()
    status = lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(bundle).encode(), b"openvino", None,
                                            C.byref(det))
    assert status == 0, lib.aminet_last_error().decode()
    yield det
    lib.aminet_detector_release(det)


def c_predict(lib: C.CDLL, det: C.c_void_p, frames: list, **overrides: float) -> list[dict]:  # type: ignore[type-arg]
    """The C library's results for Frames (c_api_vectors.frame) as dicts of copies."""
    images = (Image * len(frames))(*[Image(f.buffer.ctypes.data, f.width, f.height, f.buffer.strides[0], f.channels,
                                           int(f.order == "bgr")) for f in frames])
    params = Params()
    lib.aminet_predict_params_init(C.byref(params))
    for key, value in overrides.items():
        setattr(params, key, value)
    res = C.c_void_p()
    status = lib.aminet_predict(det, images, len(frames), C.byref(params), C.byref(res))
    assert status == 0, lib.aminet_last_error().decode()
    out = []
    for i in range(lib.aminet_results_count(res)):
        r = lib.aminet_results_get(res, i).contents
        item = {"status": r.status, "message": r.message.decode(), "score": r.score, "is_anomaly": bool(r.is_anomaly),
                "normalized_score": r.normalized_score}
        if r.status == 0:
            item["map"] = np.ctypeslib.as_array(r.anomaly_map, (r.map_height, r.map_width)).copy()
            item["mask"] = np.ctypeslib.as_array(r.mask, (r.map_height, r.map_width)).astype(bool)
            item["tokens"] = np.ctypeslib.as_array(r.token_mask, (r.grid_size, r.grid_size)).astype(bool)
        out.append(item)
    lib.aminet_results_release(res)
    return out


def random_frames(seed: int, order: str) -> list:  # type: ignore[type-arg]
    """Generated surfaces cut to random sizes, as grey, RGB or RGBA, rows padded at random."""
    rng = np.random.default_rng(seed)
    out = []
    for i, img in enumerate(generated_images(6, seed)):
        h, w = (int(v) for v in rng.integers(9, 300, 2))
        pixels = np.resize(img, (h, w, 3)) if i % 2 else img  # odd ones re-cut to another size
        channels = int(rng.choice([1, 3, 4]))
        if channels == 1:
            pixels = pixels[:, :, 1].copy()
        elif channels == 4:
            pixels = np.concatenate([pixels, rng.integers(0, 256, pixels.shape[:2] + (1,), dtype=np.uint8)], axis=2)
        out.append(frame(f"random{i}", pixels, order, pad=int(rng.integers(0, 9))))
    return out


@pytest.mark.parametrize("seed,order", [(21, "rgb"), (22, "bgr")])
def test_ctypes_parity_with_python_detector(lib: C.CDLL, c_detector: C.c_void_p, python_detector: Detector,
                                            seed: int, order: str) -> None:
    frames = random_frames(seed, order)
    want = python_detector.predict([f.array for f in frames], bgr=order == "bgr", sensitivity=0.6)
    got = c_predict(lib, c_detector, frames, sensitivity=0.6)
    for g, w in zip(got, want):
        assert g["status"] == 0 and w.ok, g["message"]
        assert g["score"] == pytest.approx(w.score, rel=RTOL)
        assert g["normalized_score"] == pytest.approx(w.normalized_score, rel=RTOL)
        if abs(w.normalized_score - 1) > RTOL:
            assert g["is_anomaly"] == w.is_anomaly
        np.testing.assert_array_equal(g["tokens"], w.token_mask)
        atol = RTOL * float(np.abs(w.anomaly_map).max())
        np.testing.assert_allclose(g["map"], w.anomaly_map, rtol=RTOL, atol=atol)
        near = np.abs(w.anomaly_map - w.thresholds.pixel) <= atol + RTOL * w.thresholds.pixel
        np.testing.assert_array_equal(g["mask"][~near], w.mask[~near])


def test_ctypes_guided_bundle_feeds_the_bank_like_python(lib: C.CDLL, tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    """A bundle with the nearest-normal guide and its score map: the C library reads the guide's bank from
    the verified weights file (float16 -> float32) and feeds it as model.onnx's guide_bank input; its token
    masks equal the Python Detector's (which also feeds it) and the torch reference's, scores and maps as
    the parity test. Weights swapped after export and a graph recorded before the bank left the graphs
    are refused with the Python wording."""
    from aminet_edge.bundle import read_config

    guided = shared_bundle(tmp_path_factory, "nearest_normal", GUIDE_MAP)
    frames = random_frames(23, "rgb")
    python = Detector.load(guided, backend="openvino", cache=False)
    want = python.predict([f.array for f in frames])
    reference = Detector.load(guided, backend="torch", ops_backend="reference").predict([f.array for f in frames])
    det = C.c_void_p()
    status = lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(guided).encode(), b"openvino", None,
                                            C.byref(det))
    assert status == 0, lib.aminet_last_error().decode()
    try:
        got = c_predict(lib, det, frames)
    finally:
        lib.aminet_detector_release(det)
    for g, w, r in zip(got, want, reference):
        assert g["status"] == 0 and w.ok, g["message"]
        np.testing.assert_array_equal(g["tokens"], w.token_mask)
        np.testing.assert_array_equal(g["tokens"], r.token_mask)
        assert g["score"] == pytest.approx(w.score, rel=RTOL)
        np.testing.assert_allclose(g["map"], w.anomaly_map, rtol=RTOL, atol=RTOL * float(np.abs(w.anomaly_map).max()))
    masks = np.stack([w.token_mask for w in want])
    assert masks.any() and not masks.all()

    copy = tmp_path / "b"
    shutil.copytree(guided, copy, ignore=shutil.ignore_patterns("cache"))
    config = read_config(copy)
    weights = copy / config.artifacts["weights"]["path"]
    original = weights.read_bytes()
    weights.write_bytes(original[:-2] + original[-1:] + original[-2:-1])  # two bytes of the data swapped
    status = lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(copy).encode(), b"openvino", None,
                                            C.byref(det))
    assert status != 0 and "weights file's sha256 differs" in lib.aminet_last_error().decode()
    weights.write_bytes(original)
    raw = json.loads((copy / "config.json").read_text())
    del raw["artifacts"]["onnx"]["model"]["guide_bank"]
    (copy / "config.json").write_text(json.dumps(raw))
    status = lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(copy).encode(), b"openvino", None,
                                            C.byref(det))
    message = lib.aminet_last_error().decode()
    assert status != 0 and "older aminet-edge that put the nearest-normal guide's bank inside the graph" in message
    assert f"aminet-edge export {copy}" in message and det.value is None


def test_ctypes_single_frames_equal_batch_of_one(lib: C.CDLL, c_detector: C.c_void_p, python_detector: Detector) -> None:
    """Frame by frame (batch 1) both sides agree too, and a bad frame alone is the call's error."""
    frames = random_frames(23, "rgb")[:3]
    for f in frames:
        (g,) = c_predict(lib, c_detector, [f])
        w = python_detector.predict(f.array)
        assert g["score"] == pytest.approx(w.score, rel=RTOL)
    tiny = frame("tiny", np.zeros((5, 9, 3), np.uint8))
    images = (Image * 1)(Image(tiny.buffer.ctypes.data, 9, 5, 27, 3, 0))
    res = C.c_void_p(7)
    assert lib.aminet_predict(c_detector, images, 1, None, C.byref(res)) == 1  # AMINET_ERR_INVALID_ARGUMENT
    assert res.value is None
    assert lib.aminet_last_error().decode() == "input: image is 9x5 px (WxH); each side must be >= 8 px"


def test_ctypes_version_and_backend_errors(lib: C.CDLL, bundle: Path) -> None:
    det = C.c_void_p()
    abi = lib.aminet_abi_version()
    assert lib.aminet_detector_create_abi(abi + 1, str(bundle).encode(), b"auto", None, C.byref(det)) == 4
    message = lib.aminet_last_error().decode()
    assert f"aminet.h is ABI version {abi + 1} but this libaminet" in message and f"is ABI version {abi}" in message
    assert lib.aminet_version().decode() in message
    assert lib.aminet_detector_create_abi(abi, str(bundle).encode(), b"onnxruntime", None, C.byref(det)) == 3
    assert "unknown backend 'onnxruntime'" in lib.aminet_last_error().decode()
    assert det.value is None


def test_ctypes_bf16_where_the_cpu_has_it(lib: C.CDLL, bundle: Path) -> None:
    """precision bf16 loads where OpenVINO reports native bf16 (as the Python backend decides), and is
    refused naming the reason elsewhere."""
    from aminet_edge.runtime.backends.openvino_backend import cpu_capabilities

    opts, det = C.c_void_p(), C.c_void_p()
    assert lib.aminet_options_create(C.byref(opts)) == 0
    assert lib.aminet_options_set(opts, b"precision", b"bf16") == 0
    status = lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(bundle).encode(), b"openvino", opts,
                                            C.byref(det))
    if "BF16" in cpu_capabilities():
        assert status == 0, lib.aminet_last_error().decode()
        lib.aminet_detector_describe.argtypes = [C.c_void_p, C.POINTER(C.c_char_p)]
        text = C.c_char_p()
        assert lib.aminet_detector_describe(det, C.byref(text)) == 0
        assert json.loads(text.value)["precision"] == "bf16"
        lib.aminet_detector_release(det)
    else:
        assert status == 3 and "has no native bf16" in lib.aminet_last_error().decode()
    lib.aminet_options_release(opts)


def test_resize_is_bit_exact_with_pillow(build_dir: Path) -> None:
    """libaminet's resize against Pillow's BILINEAR on mode "F" (aminet_edge.data.images.resize_plane),
    shrinking and enlarging, both pass orders: identical bits, not merely close."""
    from aminet_edge.data.images import resize_plane

    rng = np.random.default_rng(5)
    sizes = [(150, 90, 64, 64), (90, 150, 64, 64), (200, 100, 20, 64), (9, 300, 64, 64), (64, 64, 64, 64),
             (64, 100, 64, 64), (100, 64, 64, 64)] + [tuple(int(v) for v in rng.integers(8, 400, 4)) for _ in range(8)]
    for h, w, oh, ow in sizes:
        plane = rng.integers(0, 256, (h, w)).astype(np.float32) / np.float32(255)
        run = subprocess.run([str(build_dir / "aminet_resize_check")], input=f"{h} {w} {oh} {ow}\n".encode()
                             + plane.tobytes(), capture_output=True, check=True)
        got = np.frombuffer(run.stdout, np.float32).reshape(oh, ow)
        np.testing.assert_array_equal(got, resize_plane(plane, (oh, ow)), err_msg=f"{h}x{w} -> {oh}x{ow}")


# ---- install and examples ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefix(build_dir: Path) -> Path:
    """`cmake --install` of the runtime component into <build>/prefix."""
    out = build_dir / "prefix"
    if not (out / "lib" / "cmake" / "aminet" / "aminetConfig.cmake").is_file():
        cmake("--install", str(build_dir), "--component", "runtime", "--prefix", str(out))
    return out


@pytest.fixture(scope="module")
def examples(build_dir: Path, prefix: Path) -> dict[str, Path]:
    """examples/c and examples/cpp built against the installed library with find_package(aminet) (cached
    with the build): {"c": executable, "cpp": executable}."""
    if not any((Path(d) / "png.h").is_file() for d in ("/usr/include", "/usr/local/include")):
        pytest.skip("png.h not found: the examples decode PNGs with libpng (install libpng-dev; scripts/test.sh does)")
    out = {lang: build_dir / f"example-{lang}" / "predict_folder" for lang in ("c", "cpp")}
    if not all(p.is_file() for p in out.values()):
        for lang in out:
            folder = out[lang].parent
            cmake("-S", str(ROOT / "examples" / lang), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
                  f"-Daminet_DIR={prefix / 'lib' / 'cmake' / 'aminet'}")
            cmake("--build", str(folder))
    return out


def test_install_layout_and_info(prefix: Path, tmp_path: Path) -> None:
    """`cmake --install` lays out lib/, include/aminet/ and lib/cmake/aminet/; `aminet-edge info` names
    them for a package folder that carries them, and says so for one that does not."""
    import aminet_edge
    from aminet_edge import c_library
    from aminet_edge.info import c_runtime_info

    for rel in ("include/aminet/aminet.h", "include/aminet/aminet.hpp", "lib/cmake/aminet/aminetConfig.cmake",
                "lib/cmake/aminet/aminetConfigVersion.cmake", "lib/libaminet.so"):
        assert (prefix / rel).exists(), rel
    info = c_runtime_info(prefix)
    assert info["library"].startswith(str(prefix / "lib" / "libaminet.so"))
    assert info["headers"] == str(prefix / "include")
    assert info["cmake"].startswith(str(prefix / "lib" / "cmake" / "aminet"))
    assert info["loads"] == f"yes, version {aminet_edge.__version__}"
    assert "not carried by this install" in c_runtime_info(tmp_path)["library"]
    with pytest.raises(FileNotFoundError, match="does not carry the C runtime"):
        c_library.load(tmp_path)


@pytest.mark.parametrize("lang", ["c", "cpp"])
def test_example_predicts_a_folder_like_python(examples: dict[str, Path], bundle: Path, python_detector: Detector,
                                               tmp_path: Path, lang: str) -> None:
    """The example prints one JSON line per PNG (sorted), equal to the Python Detector on the same files;
    an unreadable PNG is reported on its line and the exit status is 1."""
    from PIL import Image

    for i, img in enumerate(generated_images(4, seed=9)):
        Image.fromarray(img).save(tmp_path / f"part{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    run = subprocess.run([str(examples[lang]), str(bundle), str(tmp_path), "openvino"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["file"] for line in lines] == ["broken.png"] + [f"part{i}.png" for i in range(4)]
    assert "error" in lines[0] and "PNG" in lines[0]["error"]
    for line in lines[1:]:
        want = python_detector.predict(str(tmp_path / line["file"]))
        assert line["score"] == pytest.approx(want.score, rel=RTOL)
        assert line["normalized_score"] == pytest.approx(want.normalized_score, rel=RTOL)
        assert line["is_anomaly"] == want.is_anomaly
        assert line["anomalous_pixel_fraction"] == pytest.approx(float(want.mask.mean()), abs=1e-3)


def test_csharp_example_under_mono(prefix: Path, bundle: Path, python_detector: Detector, tmp_path: Path) -> None:
    """examples/csharp (P/Invoke over the C ABI) compiled by Mono's mcs and run under mono on PPM files:
    the same scores and decisions as the Python Detector; a missing bundle is its AminetException."""
    from PIL import Image

    if shutil.which("mcs") is None or shutil.which("mono") is None:
        pytest.skip("mono-mcs / mono-runtime not installed (scripts/test.sh installs them on Debian)")
    source = ROOT / "examples" / "csharp"
    exe = tmp_path / "predict.exe"
    subprocess.run(["mcs", f"-out:{exe}", str(source / "Aminet.cs"), str(source / "Predict.cs")], check=True,
                   capture_output=True, timeout=120)
    images = generated_images(3, seed=13)
    files = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"part{i}.ppm")
        files.append(str(tmp_path / f"part{i}.ppm"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(prefix / "lib")}
    run = subprocess.run(["mono", str(exe), str(bundle), *files], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["file"] for line in lines] == [f"part{i}.ppm" for i in range(3)]
    for line, img in zip(lines, images):
        want = python_detector.predict(img)
        assert line["score"] == pytest.approx(want.score, rel=RTOL)
        assert line["is_anomaly"] == want.is_anomaly
        assert line["anomalous_pixel_fraction"] == pytest.approx(float(want.mask.mean()), abs=1e-3)
    missing = subprocess.run(["mono", str(exe), str(tmp_path / "no-bundle"), files[0]], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode == 1
    assert f"Bundle: bundle directory {tmp_path / 'no-bundle'}: not found" in missing.stderr


def nan_bundle(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` whose recorded model.onnx maps a pixel equal to the preprocessing mean to NaN
    (amap = x / x on the red channel, score = its sum): a frame of grey 127 comes out non-finite."""
    import onnx
    from onnx import TensorProto, helper

    from aminet_edge.bundle import make_record, read_config, write_config

    out.mkdir()
    weights = json.loads((bundle / "config.json").read_text())["artifacts"]["weights"]["path"]
    os.link(bundle / weights, out / weights)
    shutil.copy(bundle / "config.json", out / "config.json")
    const = lambda name, values: helper.make_tensor(name, TensorProto.INT64, [len(values)], values)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["images", "zero", "one", "one"], ["red"]),
        helper.make_node("Div", ["red", "red"], ["ratio"]),
        helper.make_node("Squeeze", ["ratio", "one"], ["amap"]),
        helper.make_node("ReduceSum", ["amap", "hw"], ["score"], keepdims=0),
        helper.make_node("AveragePool", ["ratio"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Reshape", ["pooled", "tokens"], ["flat"]),
        helper.make_node("Greater", ["flat", "half"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("amap", TensorProto.FLOAT, ["batch", 64, 64]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 16])],
        [const("zero", [0]), const("one", [1]), const("hw", [1, 2]), const("tokens", [-1, 16]),
         helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out / "model.onnx")
    config = read_config(out)
    old = config.artifacts["onnx"]["model"]
    meta = {k: v for k, v in old.items() if k not in ("path", "sha256", "bytes")}
    config.artifacts["onnx"] = {"model": make_record(out, out / "model.onnx", **meta)}
    write_config(out, config)
    return out


def test_non_finite_output_is_the_frames_error_in_both(lib: C.CDLL, bundle: Path, tmp_path: Path) -> None:
    """A frame the model maps to NaN gets AMINET_ERR_INFERENCE with the Python Detector's message; the
    frames beside it are predicted."""
    path = nan_bundle(bundle, tmp_path / "nan")
    grey = frame("grey", np.full((40, 50, 3), 127, np.uint8))
    bright = np.random.default_rng(4).integers(150, 256, (60, 70, 3), dtype=np.uint8)  # nowhere near the mean
    surface = frame("surface", bright)
    want = Detector.load(path, backend="openvino", cache=False).predict([surface.array, grey.array])
    assert want[0].ok and not want[1].ok
    det = C.c_void_p()
    assert lib.aminet_detector_create_abi(lib.aminet_abi_version(), str(path).encode(), b"openvino", None,
                                          C.byref(det)) == 0, lib.aminet_last_error().decode()
    got = c_predict(lib, det, [surface, grey])
    lib.aminet_detector_release(det)
    assert got[0]["status"] == 0 and got[0]["score"] == pytest.approx(want[0].score, rel=RTOL)
    assert got[1]["status"] == 5  # AMINET_ERR_INFERENCE
    assert got[1]["message"] == str(want[1].error) == (
        "input[1]: the model produced a non-finite score or map for this image")
