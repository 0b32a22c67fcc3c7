"""The nearest-normal guide (ModelConfig.mask = "nearest_normal"): its reference op against float64 brute
force, the coreset against a direct greedy k-centre, its threshold, training with it, set-mask, and the
bundle's refusals."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from aminet_edge.bundle import BundleError, make_record, read_config, write_config
from aminet_edge.cli import main
from aminet_edge.config import ScoreConfig, TrainConfig
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.model.guide import NearestNormalGuide, token_features
from aminet_edge.model.pipeline import load_pipeline
from aminet_edge.ops import reference
from aminet_edge.training.guide import PROJECTION_DIM, build_guide, greedy_coreset, pca_projection, set_mask

sys.path.insert(0, str(Path(__file__).parent))
from test_train import SMALL, run  # noqa: E402

# the guide searched in the backbone's own channels (the projection: test_set_mask_projects_the_guide)
GUIDED = dataclasses.replace(SMALL, mask="nearest_normal", guide_bank_size=100, guide_dims=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=12, n_test_good=3, n_test_defect=2,
                                  size=64)


@pytest.fixture(scope="module")
def guided(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_guided(data, tmp_path_factory.mktemp("guided") / "run")


def train_guided(data: Path, out: Path) -> Path:
    from aminet_edge.training.trainer import train

    return train(data, out, model=GUIDED, train_cfg=TrainConfig(epochs=1, batch_size=4, lr=1e-3),
                 score=ScoreConfig(map="reconstruction"), pretrained=False, progress=False)


def brute_nearest(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Nearest-row Euclidean distance in float64, every pair computed directly."""
    d = np.sqrt(((queries[..., None, :].astype(np.float64) - bank.astype(np.float64)) ** 2).sum(-1))
    return d.min(-1)


@pytest.mark.parametrize("scale", [1.0, 500.0])  # 500: norms ~1e4, where ||q||^2 - 2 q.b + ||b||^2 would cancel
def test_nearest_distance_matches_float64_brute_force(scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 24, generator=gen) * scale + scale * 3
    # queries near bank rows (the regime of normal tokens) and far ones
    near = bank[torch.randint(0, 300, (2, 20), generator=gen)] + 0.01 * scale * torch.randn(2, 20, 24, generator=gen)
    far = torch.randn(2, 20, 24, generator=gen) * scale * 2
    queries = torch.cat([near, far], 1)
    got = reference.nearest_distance(queries, bank)
    assert got.shape == (2, 40) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), brute_nearest(queries.numpy(), bank.numpy()), rtol=1e-5)


def test_guide_masks_tokens_beyond_threshold() -> None:
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 8, 16, 16, generator=gen)
    bank = torch.randn(50, 8, generator=gen)
    guide = NearestNormalGuide(bank, 1.2, patch_size=4)  # about the median distance here
    mask, dist = guide(feat)
    pooled = feat.reshape(2, 8, 4, 4, 4, 4).mean((3, 5)).permute(0, 2, 3, 1).reshape(2, 16, 8)  # (B, L, C) row-major
    torch.testing.assert_close(token_features(feat, 4), pooled)
    expected = brute_nearest(pooled.numpy(), bank.half().float().numpy())  # the bank is stored as float16
    np.testing.assert_allclose(dist.numpy(), expected, rtol=1e-5)
    assert torch.equal(mask, dist > 1.2) and 0 < int(mask.sum()) < mask.numel()
    assert guide.bank.dtype == torch.float16


@pytest.mark.parametrize("bank, threshold, match", [
    (torch.zeros(0, 4), 1.0, "non-empty"), (torch.zeros(4), 1.0, "non-empty"),
    (torch.zeros(3, 4), 0.0, "threshold"), (torch.zeros(3, 4), float("nan"), "threshold")])
def test_guide_rejects_bad_parts(bank: torch.Tensor, threshold: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NearestNormalGuide(bank, threshold, 4)


def direct_greedy(points: np.ndarray, size: int) -> list[int]:
    """Greedy k-centre in float64, distances recomputed to every picked row each step."""
    picked = [0]
    while len(picked) < size:
        d = np.min([((points - points[i]) ** 2).sum(1) for i in picked], axis=0)
        picked.append(int(d.argmax()))
    return picked


def test_coreset_is_greedy_k_centre() -> None:
    points = torch.randn(200, PROJECTION_DIM, generator=torch.Generator().manual_seed(2))  # no projection at this width
    got = greedy_coreset(points, 20)
    assert got.tolist() == direct_greedy(points.double().numpy(), 20)
    assert len(set(got.tolist())) == 20
    assert greedy_coreset(points, 500).tolist() == list(range(200))
    wide = greedy_coreset(torch.randn(200, 3 * PROJECTION_DIM), 20)  # projected: still 20 distinct rows
    assert len(set(wide.tolist())) == 20


def test_threshold_is_the_held_out_quantile() -> None:
    gen = torch.Generator().manual_seed(3)
    fit, held = torch.randn(400, 8, generator=gen), torch.randn(150, 8, generator=gen)
    model = dataclasses.replace(GUIDED, guide_quantile=0.9, guide_bank_size=64)
    guide, summary = build_guide(fit, held, model)
    assert len(guide.bank) == 64 and summary["bank_tokens"] == 64 and summary["training_tokens"] == 400
    dist = brute_nearest(held.numpy(), guide.bank.float().numpy())
    assert float(guide.threshold) == pytest.approx(np.quantile(dist, 0.9), rel=1e-5)
    assert summary["held_out_masked"] == pytest.approx((dist > float(guide.threshold)).mean(), abs=1e-6)
    with pytest.raises(ValueError, match="held-out"):
        build_guide(fit, held[:0], model)


def test_projection_is_the_principal_axes() -> None:
    """pca_projection = the covariance's leading eigenvectors (numpy, float64), up to each axis' sign."""
    gen = torch.Generator().manual_seed(5)
    scales = torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    mixing = torch.linalg.qr(torch.randn(8, 8, generator=gen))[0]
    tokens = (torch.randn(600, 8, generator=gen) * scales) @ mixing.T + 3.0
    got = pca_projection(tokens, 3)
    x = tokens.double().numpy()
    vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    want = vecs[:, ::-1][:, :3]
    assert got.shape == (8, 3) and got.dtype == torch.float32
    np.testing.assert_allclose(np.abs(got.double().numpy().T @ want), np.eye(3), atol=1e-5)


@pytest.mark.parametrize("dims", [0, 5])
def test_threshold_is_the_held_out_quantile_in_the_projection(dims: int) -> None:
    """With guide_dims d the bank is the coreset's tokens times the d principal axes (float16), the
    threshold the held-out tokens' quantile of their projected distance, and the guide's distance of a
    feature map = brute force on its projected pooled tokens; d = 0: no projection."""
    gen = torch.Generator().manual_seed(6)
    fit, held = torch.randn(400, 8, generator=gen) * torch.arange(1, 9), torch.randn(150, 8, generator=gen)
    model = dataclasses.replace(GUIDED, guide_quantile=0.9, guide_bank_size=64, guide_dims=dims)
    guide, summary = build_guide(fit, held, model)
    proj = pca_projection(fit, dims).numpy() if dims else np.eye(8, dtype=np.float32)
    bank = (fit[greedy_coreset(fit, 64)].numpy() @ proj).astype(np.float16)
    assert np.array_equal(guide.bank.numpy(), bank) and (guide.projection is None) == (dims == 0)
    assert (summary["dims"], summary["channels"]) == (dims or 8, 8)
    dist = brute_nearest(held.numpy() @ proj, bank)
    assert float(guide.threshold) == pytest.approx(np.quantile(dist, 0.9), rel=1e-5)
    feat = torch.randn(2, 8, 8, 8, generator=gen)
    want = brute_nearest(token_features(feat, 4).numpy() @ proj, bank)
    np.testing.assert_allclose(guide.distance(feat).numpy(), want, rtol=1e-5)


def test_training_builds_the_guide_into_the_bundle(guided: Path, data: Path) -> None:
    config = read_config(guided)
    assert config.model.mask == "nearest_normal"
    summary = config.train["guide"]
    assert summary["bank_tokens"] == 100 and summary["training_tokens"] == 9 * 16  # 9 fit images x 16 tokens
    tensors = load_file(str(guided / read_config(guided).artifacts["weights"]["path"]))
    assert tensors["guide.bank"].shape == (100, 176) and tensors["guide.threshold"].shape == ()
    pipeline, _ = load_pipeline(guided)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, _, mask = pipeline(x)
        tokens = token_features(pipeline.extractor(x), 4)
    dist = brute_nearest(tokens.numpy(), tensors["guide.bank"].float().numpy())
    assert np.array_equal(mask.numpy(), dist > float(tensors["guide.threshold"]))
    assert config.calibration is not None and config.calibration.image_threshold > 0


def test_guide_needs_held_out_images(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="held-out normal images"):
        from aminet_edge.training.trainer import train

        train(data, tmp_path / "run", model=GUIDED, train_cfg=TrainConfig(epochs=1, holdout_fraction=0.0),
              pretrained=False, progress=False)
    assert not (tmp_path / "run").exists()


def test_set_mask_switches_both_ways(data: Path, tmp_path: Path) -> None:
    bundle = run(data, tmp_path / "run", epochs=1)
    before = read_config(bundle)
    from aminet_edge.export.onnx_export import export_onnx

    export_onnx(bundle, split=False)  # a graph of the old mask
    result = CliRunner().invoke(main, ["set-mask", str(bundle), str(data), "--mask", "nearest-normal",
                                       "--guide-bank-size", "40", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    after = read_config(bundle)
    assert after.model.mask == "nearest_normal" and after.model.guide_bank_size == 40
    assert after.train["guide"]["bank_tokens"] == 40 and not (bundle / "model.onnx").exists()
    assert "onnx" not in after.artifacts
    assert after.calibration.image_threshold != before.calibration.image_threshold  # re-calibrated
    before_w, after_w = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"])), None
    set_mask(bundle, [data], "adaptive", device="cpu")
    back = read_config(bundle)
    after_w = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    assert back.model.mask == "adaptive" and "guide" not in back.train and "guide.bank" not in after_w
    assert back.calibration.image_threshold == pytest.approx(before.calibration.image_threshold, rel=1e-6)
    assert all(torch.equal(after_w[k], v) for k, v in before_w.items() if not k.startswith("guide."))


def test_set_mask_refuses_other_data(data: Path, tmp_path: Path) -> None:
    bundle = run(data, tmp_path / "run", epochs=1)
    other = make_synthetic_dataset(tmp_path / "other", n_train=15, n_test_good=1, n_test_defect=1, size=64)
    with pytest.raises(ValueError, match="not the data it was trained on"):
        set_mask(bundle, [other], "nearest_normal", device="cpu")


def test_set_mask_rebuilds_the_guide_for_new_settings(guided: Path, data: Path, tmp_path: Path) -> None:
    """set-mask on a guided bundle with another quantile and bank size rebuilds the bank (of the new size)
    and its threshold (the new quantile of the held-out tokens' distances to the new bank, recomputed
    here by brute force), and re-calibrates the image threshold on them."""
    import shutil

    from aminet_edge.data.batches import load_batches
    from aminet_edge.training.trainer import recorded_split

    bundle = Path(shutil.copytree(guided, tmp_path / "b"))
    before = read_config(bundle)
    old = load_file(str(bundle / before.artifacts["weights"]["path"]))
    set_mask(bundle, [data], "nearest_normal", quantile=0.5, bank_size=30, device="cpu")
    config = read_config(bundle)
    new = load_file(str(bundle / config.artifacts["weights"]["path"]))
    assert old["guide.bank"].shape[0] == 100 and new["guide.bank"].shape == (30, 176)
    assert (config.model.guide_quantile, config.model.guide_bank_size) == (0.5, 30)
    assert config.train["guide"]["bank_tokens"] == 30 and config.train["guide"]["quantile"] == 0.5
    pipeline, _ = load_pipeline(bundle)
    held = recorded_split(bundle, config.train, [data])[1]
    with torch.no_grad():
        tokens = torch.cat([token_features(pipeline.extractor(b), 4).reshape(-1, 176)
                            for b in load_batches([s.path for s in held], 64, config.mean, config.std, 8)])
    dist = brute_nearest(tokens.numpy(), new["guide.bank"].float().numpy())
    assert float(new["guide.threshold"]) == pytest.approx(np.quantile(dist, 0.5), rel=1e-4)
    assert float(new["guide.threshold"]) != pytest.approx(float(old["guide.threshold"]), rel=1e-3)
    assert config.calibration.image_threshold != before.calibration.image_threshold  # type: ignore[union-attr]


def test_set_mask_projects_the_guide(guided: Path, data: Path, tmp_path: Path) -> None:
    """set-mask --guide-dims 16: the weights hold the projection (176, 16) and a (100, 16) bank; the
    pipeline's and the exported graph's masks are the brute-force search of the projected tokens; info
    says so; config.json edited to other dims is refused."""
    import shutil

    from aminet_edge.export.onnx_export import export_onnx
    from aminet_edge.info import mask_info

    bundle = Path(shutil.copytree(guided, tmp_path / "b"))
    result = CliRunner().invoke(main, ["set-mask", str(bundle), str(data), "--mask", "nearest-normal",
                                       "--guide-dims", "16", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    config = read_config(bundle)
    tensors = load_file(str(bundle / config.artifacts["weights"]["path"]))
    proj = tensors["guide.projection"]
    assert proj.shape == (176, 16) and proj.dtype == torch.float32 and tensors["guide.bank"].shape == (100, 16)
    assert config.model.guide_dims == 16
    assert (config.train["guide"]["dims"], config.train["guide"]["channels"]) == (16, 176)
    pipeline, _ = load_pipeline(bundle)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, _, mask = pipeline(x)
        tokens = token_features(pipeline.extractor(x), 4)
    dist = brute_nearest(tokens.double().numpy() @ proj.double().numpy(), tensors["guide.bank"].float().numpy())
    threshold = float(tensors["guide.threshold"])
    sure = np.abs(dist - threshold) > 1e-5 * threshold
    assert sure.mean() > 0.9 and np.array_equal(mask.numpy()[sure], (dist > threshold)[sure])
    assert "x 16 principal axes of 176 channels" in mask_info(config) and "0.0 MiB float16 bank in the weights file" in mask_info(config)
    ort = pytest.importorskip("onnxruntime")
    export_onnx(bundle, split=False)
    export_onnx(bundle)  # the split pair: model_a outputs the projected tokens, searched by the C++ kernel
    (graph_mask,) = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["mask"], {"images": x.numpy(), "guide_bank": tensors["guide.bank"].float().numpy()})
    assert np.array_equal(graph_mask, mask.numpy())
    from aminet_edge.runtime import Detector

    images = sorted((data / "test").rglob("*.png"))
    want = [r.token_mask for r in Detector.load(bundle, backend="torch").predict(images)]
    got = [r.token_mask for r in Detector.load(bundle, backend="onnxruntime-split").predict(images)]
    assert np.array_equal(np.stack(got), np.stack(want))
    raw = json.loads((bundle / "config.json").read_text())
    raw["model"]["guide_dims"] = 8
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="model.guide_dims' is 8 but the stored guide's tokens have 16 of 176"):
        read_config(bundle)


def test_set_mask_identifies_the_split_by_content(data: Path, tmp_path: Path) -> None:
    """Other data of the same image count and names is refused, naming the image whose content differs;
    a bundle trained before the split's checksums were recorded is refused with the reason."""
    import shutil

    bundle = run(data, tmp_path / "run", epochs=1)
    split = read_config(bundle).train["split"]
    assert len(split["fit"]) == 9 and len(split["held_out"]) == 3
    held, fit = split["held_out"][1][0], split["fit"][0][0]
    other = Path(shutil.copytree(data, tmp_path / "other"))
    shutil.copy(other / fit, other / held)  # one held-out image swapped for another normal image
    before = (bundle / "config.json").read_bytes()
    with pytest.raises(ValueError, match=rf"not the data .* 1 image\(s\) differ .*: {held} \(held_out; trained on "
                                         rf"{held}\)"):
        set_mask(bundle, [other], "nearest_normal", device="cpu")
    assert (bundle / "config.json").read_bytes() == before
    raw = json.loads(before)
    del raw["train"]["split"]
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="records no checksums of its training images .* retrain it"):
        set_mask(bundle, [data], "nearest_normal", device="cpu")


def rewrite_weights(bundle: Path, tensors: dict[str, torch.Tensor]) -> None:
    config = read_config(bundle)
    path = bundle / config.artifacts["weights"]["path"]
    save_file(tensors, str(path))
    config.artifacts["weights"] = make_record(bundle, path)
    write_config(bundle, config)


def test_bundle_refuses_a_guide_that_does_not_match(guided: Path, tmp_path: Path) -> None:
    import shutil

    bundle = Path(shutil.copytree(guided, tmp_path / "b"))
    tensors = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    rewrite_weights(bundle, {k: v for k, v in tensors.items() if k != "guide.bank"})
    with pytest.raises(BundleError, match="expected bank, threshold and optionally projection"):
        load_pipeline(bundle)
    rewrite_weights(bundle, tensors | {"guide.bank": tensors["guide.bank"][:, :10].contiguous()})
    with pytest.raises(BundleError, match=r"do not match the config \(expected \(M, 176\)"):
        load_pipeline(bundle)
    rewrite_weights(bundle, tensors)
    raw = json.loads((bundle / "config.json").read_text())
    raw["model"]["mask"] = "adaptive"
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="holds a nearest-normal guide"):
        load_pipeline(bundle)
    raw["model"]["mask"] = "nearest"
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="model.mask"):
        read_config(bundle)


def test_guide_settings_must_describe_the_stored_guide(guided: Path, tmp_path: Path) -> None:
    """model.guide_quantile / guide_bank_size edited in config.json no longer describe the guide the weights
    hold (its threshold is that quantile, its bank that size): refused at read, naming the field."""
    raw = json.loads((guided / "config.json").read_text())
    bundle = tmp_path / "b"
    bundle.mkdir()
    for key, value, message in (("guide_quantile", 0.5, "'model.guide_quantile' is 0.5 but the stored guide's "
                                                        "threshold is the held-out quantile 0.95"),
                                ("guide_bank_size", 50, "'model.guide_bank_size' is 50 but the stored guide's bank "
                                                        "holds 100 of 144 training tokens")):
        (bundle / "config.json").write_text(json.dumps({**raw, "model": {**raw["model"], key: value}}))
        with pytest.raises(BundleError, match=message):
            read_config(bundle)
    (bundle / "config.json").write_text(json.dumps(raw))
    assert read_config(bundle).model.guide_bank_size == 100  # as trained: accepted


def test_graph_records_name_their_mask(guided: Path, tmp_path: Path) -> None:
    """A graph computes the mask it was exported with: config.json edited to the other mask is refused,
    and a record from before the guide (no "mask") counts as the adaptive mask's."""
    import shutil

    from aminet_edge.export.onnx_export import export_onnx

    bundle = Path(shutil.copytree(guided, tmp_path / "b"))
    export_onnx(bundle, split=False)
    raw = json.loads((bundle / "config.json").read_text())
    assert raw["artifacts"]["onnx"]["model"]["mask"] == "nearest_normal"
    raw["model"]["mask"] = "adaptive"
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="artifacts.onnx.model.mask.*computes model.mask = 'nearest_normal'"):
        read_config(bundle)
    del raw["artifacts"]["onnx"]["model"]["mask"]
    (bundle / "config.json").write_text(json.dumps(raw))
    assert read_config(bundle).model.mask == "adaptive"  # an old adaptive-mask record loads
    raw["model"]["mask"] = "nearest_normal"
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="computes model.mask = 'adaptive'"):
        read_config(bundle)
