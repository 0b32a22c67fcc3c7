"""Native-resolution tiling (aminet_edge.tiling): the grid, the blend against an independent per-pixel
computation, and the tiled `Detector` against the untiled one, the torch reference and a small defect.

Tolerances, and why:
- blend: float32 accumulation of at most 4 weighted terms per pixel: 1e-6 absolute on values ~1;
- a one-tile image against the untiled Detector: the map is the same array; the score is the same std
  taken in float64 here and in float32 inside the graph: rtol 1e-5;
- onnxruntime vs torch, tiled: as tests/test_detector.py (RTOL; token masks identical).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from aminet_edge.bundle import BundleError, read_config, validate_config, write_config
from aminet_edge.config import TileConfig
from aminet_edge.tiling import Box, grid, starts, stitch, weights


# ---- the grid ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,size,overlap", [(1024, 64, 16), (256, 64, 16), (100, 64, 0), (65, 64, 8), (500, 128, 64),
                                            (64, 64, 16), (40, 64, 16), (1250, 256, 64), (97, 32, 1)])
def test_grid_covers_each_axis_with_the_overlap_asked(n: int, size: int, overlap: int) -> None:
    first = starts(n, size, overlap)
    extent = min(size, n)
    assert first[0] == 0 and first[-1] + extent == n  # edges aligned, no padding
    assert first == sorted(set(first))
    for a, b in zip(first, first[1:]):
        assert a + extent - b >= overlap  # at least the overlap asked
    if len(first) > 2:  # the fewest tiles that keep the overlap: one fewer would have to advance further
        assert (n - size) / (len(first) - 2) > size - overlap


def test_grid_is_row_major_and_a_short_side_gets_one_tile() -> None:
    boxes = grid(40, 200, TileConfig(64, 16))  # 40 px high: one row of 40 x 64 tiles
    assert [b.y for b in boxes] == [0] * len(boxes) and all((b.height, b.width) == (40, 64) for b in boxes)
    assert [b.x for b in boxes] == starts(200, 64, 16)
    boxes = grid(130, 130, TileConfig(64, 16))
    rows = starts(130, 64, 16)
    assert rows == [0, 33, 66]  # ceil(66 / 48) + 1 = 3 tiles, 33 px apart: 31 px overlap
    assert [(b.y, b.x) for b in boxes] == [(y, x) for y in rows for x in rows]


@pytest.mark.parametrize("size,overlap,problem", [(8, 0, "size must be in"), (64, 33, "overlap must be in"),
                                                  (64, 64, "overlap must be in"), (64, -1, "overlap must be in"),
                                                  (64.0, 8, "must be an integer")])
def test_bad_tile_settings_are_refused_with_the_field(size: object, overlap: int, problem: str,
                                                      tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=problem):
        TileConfig(size, overlap).validate()  # type: ignore[arg-type]
    from dataclasses import replace

    from aminet_edge.bundle import BundleConfig
    from aminet_edge.config import PAPER_MAP, PAPER_MASK, PRESETS, ScoreConfig

    data = BundleConfig(model=replace(PRESETS["tiny"], mask=PAPER_MASK), in_channels=112,
                        score=ScoreConfig(map=PAPER_MAP), mean=(0.5,) * 3, std=(0.5,) * 3,
                        tile=TileConfig(64, 16)).to_json()
    assert validate_config(data).tile == TileConfig(64, 16)
    data["tile"] = {"size": size, "overlap": overlap}
    with pytest.raises(BundleError, match="'tile"):
        validate_config(data)


# ---- the blend ---------------------------------------------------------------------------------------
def _independent_weight(y: int, x: int, box: Box, height: int, width: int, overlap: int) -> float:
    """The blend weight written out per pixel: min(1, distance to each inner tile edge / overlap) per axis."""
    w = 1.0
    for p, start, extent, n in ((y, box.y, box.height, height), (x, box.x, box.width, width)):
        axis = 1.0
        if overlap:
            if start > 0:
                axis = min(axis, (p - start + 0.5) / overlap)
            if start + extent < n:
                axis = min(axis, (start + extent - p - 0.5) / overlap)
        w *= axis
    return w


def test_blend_of_per_tile_constants_matches_a_per_pixel_computation() -> None:
    height, width, tile = 37, 53, TileConfig(16, 5)
    boxes = grid(height, width, tile)
    values = np.random.default_rng(0).uniform(1, 2, len(boxes))
    maps = [np.full((8, 8), v, np.float32) for v in values]  # at "model resolution": resized to each box
    got = stitch(maps, boxes, height, width, tile.overlap)
    want = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            pairs = [(_independent_weight(y, x, b, height, width, tile.overlap), v) for b, v in zip(boxes, values)
                     if b.y <= y < b.y + b.height and b.x <= x < b.x + b.width]
            want[y, x] = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # weights() itself, against the same formula
    b = boxes[len(boxes) // 2]
    direct = [[_independent_weight(y, x, b, height, width, tile.overlap) for x in range(b.x, b.x + b.width)]
              for y in range(b.y, b.y + b.height)]
    np.testing.assert_allclose(weights(b, height, width, tile.overlap), direct, rtol=0, atol=1e-7)


@pytest.mark.parametrize("overlap", [0, 7, 32])
def test_a_map_every_tile_agrees_on_comes_back_unchanged(overlap: int) -> None:
    """Each tile sees the same smooth function: the blend is a convex combination, so no seam appears."""
    height, width, tile = 150, 310, TileConfig(64, overlap)
    yy, xx = np.mgrid[0:height, 0:width]
    f = (np.sin(yy / 9.0) * np.cos(xx / 13.0) + 2).astype(np.float32)
    boxes = grid(height, width, tile)
    got = stitch([f[b.y:b.y + b.height, b.x:b.x + b.width] for b in boxes], boxes, height, width, overlap)
    np.testing.assert_allclose(got, f, rtol=0, atol=1e-6)
    const = stitch([np.full((16, 16), 3.25, np.float32)] * len(boxes), boxes, height, width, overlap)
    np.testing.assert_allclose(const, 3.25, rtol=0, atol=1e-6)


# ---- the tiled Detector ------------------------------------------------------------------------------
torch = pytest.importorskip("torch")

from test_detector import RTOL, generated_images, shared_bundle  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def tiled_bundle(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared bundle with config.json tile 48 px (resized to its 64 px input), overlap 12 px."""
    path = tmp_path_factory.mktemp("tiled") / "bundle"
    shutil.copytree(bundle, path, ignore=shutil.ignore_patterns("cache"))
    config = read_config(path)
    config.tile = TileConfig(48, 12)
    write_config(path, config)
    return path


def test_image_score_is_score_maps(bundle: Path) -> None:
    """ops.image_score (numpy, for stitched maps) against reference.score_map's own score of its maps."""
    from aminet_edge.ops import image_score, reference

    gen = torch.Generator().manual_seed(0)
    feat, recon = torch.rand(3, 8, 5, 7, generator=gen), torch.rand(3, 8, 5, 7, generator=gen)
    for rule in ("std", "max"):
        amap, score = reference.score_map(feat, recon, (40, 56), 4.0, rule)
        got = [image_score(m, rule) for m in amap.numpy()]
        np.testing.assert_allclose(got, score.numpy(), rtol=1e-5)


def test_one_tile_the_size_of_the_model_input_equals_untiled(bundle: Path) -> None:
    image = generated_images()[0]  # 64 x 64, the bundle's image_size
    plain = Detector.load(bundle, backend="onnxruntime").predict(image)
    tiled = Detector.load(bundle, backend="onnxruntime", tile=(64, 0)).predict(image)
    np.testing.assert_array_equal(tiled.anomaly_map, plain.anomaly_map)
    np.testing.assert_array_equal(tiled.mask, plain.mask)
    np.testing.assert_array_equal(tiled.token_mask, plain.token_mask[None])
    assert tiled.tiles == (Box(0, 0, 64, 64),) and plain.tiles is None
    assert tiled.score == pytest.approx(plain.score, rel=1e-5)


def test_a_small_spot_squashed_away_is_found_tiled(bundle: Path) -> None:
    """A 6 x 6 px bright spot on a 256 x 1024 surface: squashed to 64 x 64 it is below a pixel and the map
    changes everywhere alike; tiled at the image's own resolution the change is at the spot."""
    from aminet_edge.data.synthetic import normal_surface

    surface = normal_surface(np.random.default_rng(3), 1024)[:256]
    spot = surface.copy()
    spot[120:126, 600:606] = 1.0
    near = (slice(100, 146), slice(580, 626))

    def change(tile: object) -> tuple[float, float, tuple[int, int]]:
        det = Detector.load(bundle, backend="onnxruntime", tile=tile, threshold=1.0, pixel_threshold=1.0)
        clean, found = det.predict([surface, spot])
        diff = np.abs(found.anomaly_map - clean.anomaly_map)
        outside = diff.copy()
        outside[near] = 0
        return float(diff[near].max()), float(outside.max()), np.unravel_index(diff.argmax(), diff.shape)

    at_spot, elsewhere, peak = change((64, 16))
    assert at_spot > 20 * elsewhere and abs(peak[0] - 123) <= 8 and abs(peak[1] - 603) <= 8
    at_spot, elsewhere, _ = change(None)
    assert at_spot < 2 * elsewhere  # untiled the spot is lost in the resize


def test_backends_agree_tiled(tiled_bundle: Path) -> None:
    images = generated_images()
    want = Detector.load(tiled_bundle, backend="torch", ops_backend="reference").predict(images)
    got = Detector.load(tiled_bundle, backend="onnxruntime").predict(images)
    for g, w, image in zip(got, want, images):
        assert g.anomaly_map.shape == image.shape[:2] and g.tiles == w.tiles
        assert g.token_mask.shape == (len(g.tiles), 4, 4)
        assert g.score == pytest.approx(w.score, rel=RTOL)
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, rtol=RTOL, atol=RTOL * float(w.anomaly_map.max()))
        np.testing.assert_array_equal(g.token_mask, w.token_mask)


def test_all_tiles_of_a_call_go_through_the_backend_in_one_batch(tiled_bundle: Path) -> None:
    """Every tile of every image of one predict call in one backend batch; split at the backend's max
    batch, with the same results."""
    det = Detector.load(tiled_bundle, backend="onnxruntime", batch_size=8)
    images = generated_images()[:3]
    tiles = sum(len(grid(i.shape[0], i.shape[1], TileConfig(48, 12))) for i in images)
    calls: list[int] = []
    run = det._backend.run

    def counting(batch: np.ndarray):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return run(batch)

    det._backend.run = counting  # type: ignore[method-assign]
    whole = det.predict(images)
    assert calls == [tiles]
    calls.clear()
    det._backend.max_batch = 4
    split = det.predict(images)
    assert calls == [4] * (tiles // 4) + ([tiles % 4] if tiles % 4 else [])
    for a, b in zip(whole, split):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=RTOL, atol=RTOL * float(a.anomaly_map.max()))
        assert math.isclose(a.score, b.score, rel_tol=RTOL)


def test_tiling_other_than_the_bundles_is_logged(bundle: Path, tiled_bundle: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="aminet_edge.runtime"):
        assert Detector.load(tiled_bundle, backend="onnxruntime").tile == TileConfig(48, 12)
        assert not caplog.records
        assert Detector.load(tiled_bundle, backend="onnxruntime", tile=None).tile is None
    assert "calibrated thresholds do not apply" in caplog.text
    with pytest.raises(ValueError, match="overlap must be in"):
        Detector.load(bundle, tile=(64, 40))


def test_gpu_repository_refuses_a_tiled_bundle(tiled_bundle: Path, tmp_path: Path) -> None:
    from aminet_edge.serving import write_repository

    with pytest.raises(ValueError, match="--target cpu"):
        write_repository(tiled_bundle, tmp_path / "repo", target="gpu")
    assert not (tmp_path / "repo").exists()


def test_frame_taking_backend_tiles_the_frames(tiled_bundle: Path) -> None:
    """A backend that resizes on its device (torch device_preprocess, the CUDA default; here on the CPU)
    gets the tiles' frames and agrees with the host-preprocessed tiles (torch's antialiased bilinear is
    PIL's up to float rounding: RTOL, as tests/test_torch_backend.py's device-preprocessing check)."""
    images = generated_images()[1:4]
    host = Detector.load(tiled_bundle, backend="torch", device_preprocess=False).predict(images)
    frames = Detector.load(tiled_bundle, backend="torch", device_preprocess=True)
    assert frames._frames
    for g, w in zip(frames.predict(images), host):
        assert g.tiles == w.tiles and g.anomaly_map.shape == w.anomaly_map.shape
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, rtol=RTOL, atol=RTOL * float(w.anomaly_map.max()))
        np.testing.assert_array_equal(g.token_mask, w.token_mask)


@pytest.mark.parametrize("args,problem", [(["--tile", "64", "--tile-overlap", "40"], "overlap must be in"),
                                          (["--tile-overlap", "8"], "--tile-overlap needs --tile SIZE"),
                                          (["--tile", "8"], "size must be in")])
def test_cli_refuses_bad_tile_options_before_running(tiled_bundle: Path, tmp_path: Path, args: list[str],
                                                     problem: str) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main

    for verb in (["train", str(tmp_path), "--out", str(tmp_path / "run")],
                 ["evaluate", str(tiled_bundle), str(tmp_path)]):
        result = CliRunner().invoke(main, [*verb, *args])
        assert result.exit_code != 0 and problem in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_info_says_how_the_bundle_tiles(tiled_bundle: Path) -> None:
    from aminet_edge.info import bundle_info

    assert bundle_info(tiled_bundle, read_config(tiled_bundle))["tiling"].startswith("48 px tiles, overlap >= 12 px")
