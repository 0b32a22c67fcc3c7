"""Bad inputs: each gives an InputError naming the input and the problem; in a list the others survive."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge.runtime import Detector, InputError, Limits, Result  # noqa: E402
from aminet_edge.runtime.inputs import MAX_SIDE  # noqa: E402


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    return Detector.load(shared_bundle(tmp_path_factory), backend="onnxruntime")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    d = tmp_path_factory.mktemp("inputs")
    good = d / "good.png"
    Image.fromarray(generated_images()[0]).save(good)
    empty = d / "empty.png"
    empty.write_bytes(b"")
    text = d / "notes.png"
    text.write_text("this is not an image")
    truncated = d / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    wide = d / "wide.png"  # 20001 x 8 px: refused from the header, never decoded
    Image.new("L", (MAX_SIDE + 1, 8)).save(wide)
    tiny = d / "tiny.png"
    Image.new("RGB", (5, 40)).save(tiny)
    return {"good": good, "empty": empty, "text": text, "truncated": truncated, "wide": wide, "tiny": tiny,
            "dir": d, "missing": d / "missing.png"}


@pytest.mark.parametrize("name, problem", [
    ("empty", "empty file (0 bytes)"),
    ("text", "not a readable image"),
    ("truncated", "corrupt"),
    ("wide", f"must be <= {MAX_SIDE} px"),
    ("tiny", "must be >= 8 px"),
    ("dir", "not a file"),
    ("missing", "file not found"),
])
def test_bad_files(det: Detector, files: dict[str, Path], name: str, problem: str) -> None:
    with pytest.raises(InputError, match=re.escape(problem)) as info:
        det.predict(files[name])
    assert str(files[name]) in str(info.value) and info.value.source == str(files[name])
    assert isinstance(info.value, ValueError)


def test_empty_path_is_named(det: Detector, files: dict[str, Path]) -> None:
    """An empty path is not the working directory: the error says so, naming the input."""
    with pytest.raises(InputError, match=r"^input \(path ''\): empty path: name an image file$"):
        det.predict("")
    first = det.predict_batch(["", str(files["good"])])
    assert not first[0].ok and "input[0] (path '')" in str(first[0].error) and first[1].ok


RGB = generated_images()[0]


@pytest.mark.parametrize("array, problem", [
    (RGB.astype(np.int32), "unsupported dtype int32"),
    (RGB > 100, "unsupported dtype bool"),
    (np.zeros((64, 64, 5), np.uint8), r"shape \(64, 64, 5\)"),
    (np.zeros((64, 64, 3, 1, 1), np.uint8), "shape"),
    (np.zeros((3, 64, 64), np.uint8), "for CxHxW use"),
    (np.full((64, 64, 3), np.nan, np.float32), "NaN or infinite"),
    (np.full((64, 64), np.inf, np.float64), "NaN or infinite"),
    (RGB.astype(np.float32), r"\[0, 1\]"),
    (np.zeros((7, 64), np.uint8), "must be >= 8 px"),
    (np.zeros((0, 0, 3), np.uint8), "must be >= 8 px"),
])
def test_bad_arrays(det: Detector, array: np.ndarray, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as info:
        det.predict(array)
    assert info.value.source == "input"


def test_bad_objects(det: Detector) -> None:
    with pytest.raises(InputError, match="empty batch"):
        det.predict([])
    with pytest.raises(InputError, match="empty batch"):
        det.predict_batch(iter([]))
    with pytest.raises(InputError, match="None"):
        det.predict(None)
    with pytest.raises(InputError, match="unsupported input type builtins.dict"):
        det.predict({"image": RGB})


def test_size_limits_are_configurable(tmp_path_factory: pytest.TempPathFactory) -> None:
    det = Detector.load(shared_bundle(tmp_path_factory), backend="onnxruntime",
                        limits=Limits(min_side=16, max_side=100, max_pixels=5000))
    with pytest.raises(InputError, match="megapixels"):
        det.predict(np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(InputError, match="<= 100 px"):
        det.predict(np.zeros((20, 101), np.uint8))
    with pytest.raises(InputError, match=">= 16 px"):
        det.predict(np.zeros((15, 40), np.uint8))
    assert det.predict(np.zeros((50, 60), np.uint8)).ok


def test_one_bad_item_does_not_lose_the_others(det: Detector, files: dict[str, Path]) -> None:
    batch = [RGB, files["empty"], np.zeros((64, 64, 5), np.uint8), str(files["good"]), None,
             np.full((32, 32), np.nan, np.float32), RGB[:, :, ::-1].copy()]
    results = det.predict(batch)
    assert isinstance(results, list) and [r.index for r in results] == list(range(len(batch)))
    assert [r.ok for r in results] == [True, False, False, True, False, False, True]
    for r in results:
        if r.ok:
            assert r.anomaly_map is not None and np.isfinite(r.score)
            continue
        assert isinstance(r.error, InputError) and r.error.index == r.index
        assert np.isnan(r.score) and not r.is_anomaly and r.anomaly_map is None and r.mask is None
        with pytest.raises(InputError):
            r.raise_for_error()
        assert r.to_dict()["error"].startswith(r.source)
    assert results[1].source == str(files["empty"]) and "empty file" in str(results[1].error)
    assert results[2].source == "input[2]" and "shape" in str(results[2].error)
    assert results[4].source == "input[4]"
    alone = det.predict(RGB)
    assert results[0].score == pytest.approx(alone.score, rel=1e-4)  # the same prediction as alone
    batched = det.predict_batch(batch, batch_size=2)
    assert [r.ok for r in batched] == [r.ok for r in results]
    assert isinstance(results[0], Result)


def test_every_item_bad_still_returns_a_list(det: Detector, files: dict[str, Path]) -> None:
    results = det.predict([files["empty"], files["missing"]])
    assert [r.ok for r in results] == [False, False]
