"""Training and evaluation on a CUDA GPU (all marked gpu; skipped with the reason where torch sees none).

What each proves: one seed gives one result on the GPU (twice the same weights); --resume on the GPU
ends where an uninterrupted run ends; both also at the paper's L = 256 tokens, where the fused attention
kernels' non-deterministic backward passes would show (repeatable training keeps the math kernel); the
host-memory cache (pinned staging, non_blocking copies) trains exactly like the on-GPU cache; bf16 and
fp16 (with gradient scaling) follow the fp32 losses; torch.compile follows eager; evaluation on the GPU
agrees with the CPU; a GPU checkpoint cannot resume on the CPU; the nearest-normal guide builds on the GPU
as on the CPU.
The CPU side of the same plumbing: tests/test_device.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# cuBLAS reads this when it creates its workspace: set before any test of the session touches the GPU
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from safetensors.torch import load_file  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.config import ModelConfig, TrainConfig  # noqa: E402
from aminet_edge.data.synthetic import make_synthetic_dataset  # noqa: E402
from aminet_edge.evaluation.evaluate import evaluate_bundle  # noqa: E402
from aminet_edge.training.checkpoint import CHECKPOINT_FILE  # noqa: E402
from aminet_edge.training.trainer import train  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")]

SMALL = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=64, num_heads=4, inpaint_depth=2,
                    num_clusters=4, feature_jitter=True)
PAPER_TOKENS = dataclasses.replace(SMALL, image_size=256)  # L = (256 / 4 / 4) ** 2 = 256 tokens, as the paper's


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=20, n_test_good=4, n_test_defect=4,
                                  size=64)


def run(data: Path, out: Path, epochs: int = 3, model: ModelConfig = SMALL,  # type: ignore[no-untyped-def]
        **kw) -> Path:
    kw.setdefault("device", "cuda")
    kw.setdefault("precision", "fp32")
    return train(data, out, model=model, train_cfg=TrainConfig(epochs=epochs, batch_size=4, lr=1e-3),
                 pretrained=False, progress=False, **kw)


def weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "weights.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def totals(bundle: Path) -> list[float]:
    return [h["total"] for h in read_config(bundle).train["history"]]


def test_cuda_run_repeats_and_resumes(data: Path, tmp_path: Path) -> None:
    a = run(data, tmp_path / "a")
    config = read_config(a)
    assert config.train["device"].startswith("cuda:0 (") and config.train["cache_on"] == "gpu"
    assert_same_weights(a, run(data, tmp_path / "b"))
    run(data, tmp_path / "c", epochs=1)
    state = torch.load(tmp_path / "c" / CHECKPOINT_FILE, weights_only=True)
    assert state["generator_device"] == "cuda" and state["precision"] == "fp32"
    assert_same_weights(a, run(data, tmp_path / "c", resume=True))
    with pytest.raises(ValueError, match="resume with --device cuda"):
        run(data, tmp_path / "c", device="cpu", resume=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_repeats_and_resumes_at_256_tokens(data: Path, tmp_path: Path, precision: str) -> None:
    """At L = 256 tokens flash / memory-efficient attention would pick backward kernels with atomic adds
    (L = 16 above is too short for them to differ): two runs, and a run resumed after its first epoch,
    must still end with the same weights. bf16 is what `--precision auto` trains with on sm80+."""
    assert PAPER_TOKENS.grid_size ** 2 == 256
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm80+")
    a = run(data, tmp_path / "a", model=PAPER_TOKENS, precision=precision)
    assert_same_weights(a, run(data, tmp_path / "b", model=PAPER_TOKENS, precision=precision))
    run(data, tmp_path / "c", epochs=1, model=PAPER_TOKENS, precision=precision)
    assert_same_weights(a, run(data, tmp_path / "c", model=PAPER_TOKENS, precision=precision, resume=True))


def test_host_cache_with_pinned_copies_equals_gpu_cache(data: Path, tmp_path: Path) -> None:
    host = run(data, tmp_path / "host", gpu_cache_gb=0, workers=2)
    assert read_config(host).train["cache_on"] == "host"
    assert_same_weights(run(data, tmp_path / "gpu"), host)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_follows_fp32(data: Path, tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm80+")
    full = totals(run(data, tmp_path / "fp32"))
    low_bundle = run(data, tmp_path / precision, precision=precision)
    low = totals(low_bundle)
    assert read_config(low_bundle).train["precision"] == precision
    # same masks and noise (one generator stream); only the arithmetic differs: bf16 keeps 8 mantissa
    # bits, so per-step losses move by ~1 %, and 3 epochs of updates drift a little further
    for f, lo in zip(full, low):
        assert abs(lo - f) <= 0.05 * abs(f), (full, low)
    assert all(torch.isfinite(w).all() for w in weights(low_bundle).values())


def test_compile_follows_eager(data: Path, tmp_path: Path) -> None:
    eager, compiled = totals(run(data, tmp_path / "eager")), totals(run(data, tmp_path / "comp", compile=True))
    for e, c in zip(eager, compiled):
        assert abs(c - e) <= 0.02 * abs(e), (eager, compiled)


def test_evaluate_on_cuda_agrees_with_cpu(data: Path, tmp_path: Path) -> None:
    from aminet_edge.data.datasets import load_dataset
    from aminet_edge.model.pipeline import load_pipeline

    bundle = run(data, tmp_path / "run", epochs=2)
    pipeline, config = load_pipeline(bundle)
    paths = [s.path for s in load_dataset(data).test]
    cpu_scores, cpu_maps = pipeline.score_paths(paths, config.mean, config.std)
    gpu_scores, gpu_maps = pipeline.to("cuda").score_paths(paths, config.mean, config.std, workers=2)
    # cuDNN convolutions use TF32 by default (10-bit mantissa): ~1e-3 relative on features, maps and scores
    assert np.allclose(gpu_scores, cpu_scores, rtol=2e-2, atol=0)
    assert np.abs(gpu_maps - cpu_maps).max() <= 2e-2 * np.abs(cpu_maps).max()
    gpu = evaluate_bundle(bundle, data, device="cuda", store_thresholds=False, progress=False)
    cpu = evaluate_bundle(bundle, data, device="cpu", store_thresholds=False, progress=False)
    assert abs(gpu["pixel_auroc"] - cpu["pixel_auroc"]) <= 0.01  # thousands of pixels: rankings hold


def test_nearest_normal_guide_on_cuda_matches_cpu(data: Path, tmp_path: Path) -> None:
    """Training with the guide on the GPU builds it there; set-mask on the GPU and on the CPU build the same
    bank (every training token here) and thresholds within TF32's rounding of the features."""
    import dataclasses
    import shutil

    from aminet_edge.model.pipeline import load_pipeline
    from aminet_edge.training.guide import set_mask

    guided = train(data, tmp_path / "guided", model=dataclasses.replace(SMALL, mask="nearest_normal"),
                   train_cfg=TrainConfig(epochs=1, batch_size=4, lr=1e-3), pretrained=False, progress=False,
                   device="cuda", precision="fp32")
    assert load_pipeline(guided)[0].guide is not None and read_config(guided).train["guide"]["bank_tokens"] > 0
    bundle = run(data, tmp_path / "run", epochs=1)
    on_cpu = Path(shutil.copytree(bundle, tmp_path / "cpu"))
    set_mask(bundle, [data], "nearest_normal", device="cuda")
    set_mask(on_cpu, [data], "nearest_normal", device="cpu")
    g, c = read_config(bundle).train["guide"], read_config(on_cpu).train["guide"]
    assert g["bank_tokens"] == c["bank_tokens"] == g["training_tokens"]
    assert abs(g["threshold"] - c["threshold"]) <= 2e-2 * c["threshold"]
