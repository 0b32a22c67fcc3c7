"""Device plumbing of training and evaluation, exercised on the CPU: device and precision choice, where the
feature cache lives, the random generator's device, DataLoader workers, checkpoints recording device and
precision, and the CPU fp32 path equal (bit for bit) to the plain training loop it replaced.

The same behaviour on a GPU is checked by tests/test_train_cuda.py (marked gpu)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aminet_edge.cli import main
from aminet_edge.config import LossConfig, ModelConfig, TrainConfig
from aminet_edge.data.batches import load_batches
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.device import make_generator, math_attention, repeatable, resolve_device
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.training.cache import CACHE_GPU_FRACTION, cache_nbytes, cache_placement
from aminet_edge.training.checkpoint import CHECKPOINT_FILE
from aminet_edge.training.precision import autocast, grad_scaler, resolve_precision
from aminet_edge.training.trainer import load_training_samples, split_holdout, train

SMALL = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=1,
                    num_clusters=4, feature_jitter=True)  # jitter on: the generator drives masks and noise
CFG = TrainConfig(epochs=2, batch_size=4, lr=1e-3)
CUDA0 = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=12, n_test_good=2, n_test_defect=1,
                                  size=64)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# ---- device and precision choice ----------------------------------------------------------------
def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    for bad in ("gpu", "cpu:0", "cuda:", "cuda:x", "auto:1", "", "cuda:-1"):
        with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == resolve_device("cuda") == CUDA0
    assert resolve_device(" CUDA:1 ") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda:7' does not exist: torch sees 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("requested,device,capability,expected", [
    ("auto", "cpu", None, "fp32"),
    ("fp32", "cpu", None, "fp32"),
    ("bf16", "cpu", None, "bf16"),  # CPU autocast
    ("fp16", "cpu", None, "fp16 training needs a CUDA GPU"),
    ("auto", "cuda", (9, 0), "bf16"),  # H100 / H200
    ("auto", "cuda", (8, 7), "bf16"),  # Jetson Orin
    ("auto", "cuda", (7, 5), "fp16"),  # Turing
    ("bf16", "cuda", (7, 5), "sm75: bf16 needs sm80"),
    ("fp16", "cuda", (9, 0), "fp16"),
    ("fp32", "cuda", (7, 0), "fp32"),
    ("amp", "cpu", None, "precision must be one of auto, bf16, fp16, fp32"),
])
def test_resolve_precision(requested: str, device: str, capability: tuple[int, int] | None, expected: str) -> None:
    dev = CUDA0 if device == "cuda" else torch.device("cpu")
    if expected in ("bf16", "fp16", "fp32"):
        assert resolve_precision(requested, dev, capability) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            resolve_precision(requested, dev, capability)


def test_autocast_and_scaler_on_cpu() -> None:
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(cpu, "bf16"):
        low = a @ b
    with autocast(cpu, "fp32"):
        full = a @ b
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, rtol=2e-2, atol=2e-2)  # bf16: 8 mantissa bits
    assert not grad_scaler(cpu, "fp32").is_enabled() and not grad_scaler(cpu, "bf16").is_enabled()


def test_cli_refuses_missing_gpu_and_bad_precision(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "a"), "--device", "cuda:7"])
    assert res.exit_code == 1 and "device 'cuda:7'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "a"), "--device", "cpu",
                               "--precision", "fp16"])
    assert res.exit_code == 1 and "fp16 training needs a CUDA GPU" in res.output
    res = runner.invoke(main, ["evaluate", str(tmp_path), str(data), "--device", "tpu"])
    assert res.exit_code == 1 and "device must be auto, cpu, cuda or cuda:N" in res.output
    res = runner.invoke(main, ["export", str(tmp_path), "--device", "tpu"])
    assert res.exit_code == 1


# ---- feature cache placement --------------------------------------------------------------------
def test_cache_placement_decision() -> None:
    n, c, side = 209, 1792, 64  # the paper preset on a 209-image category
    nbytes = cache_nbytes(n, c, side, "bfloat16")
    assert nbytes == torch.empty(n, c, side, side, dtype=torch.bfloat16, device="meta").nbytes
    cpu = torch.device("cpu")
    assert cache_placement(nbytes, cpu, budget_bytes=10 * nbytes) == cpu  # no GPU, no device cache
    assert cache_placement(nbytes, CUDA0, budget_bytes=nbytes) == CUDA0  # fits exactly
    assert cache_placement(nbytes, CUDA0, budget_bytes=nbytes - 1) == cpu
    assert cache_placement(nbytes, CUDA0, budget_bytes=0) == cpu  # 0 forces host memory
    need_free = int(np.ceil(nbytes / CACHE_GPU_FRACTION))  # default budget: a fraction of free memory
    assert cache_placement(nbytes, CUDA0, free_bytes=need_free) == CUDA0
    assert cache_placement(nbytes, CUDA0, free_bytes=need_free - 4) == cpu


# ---- the random generator follows the device ----------------------------------------------------
def test_generator_device() -> None:
    gen = make_generator(torch.device("cpu"), 3)
    assert gen.device == torch.device("cpu")
    assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=torch.Generator().manual_seed(3)))
    net = AMINet(SMALL, 176)
    feat = torch.empty(2, 176, 16, 16, device="meta")  # features on another device than the generator
    with pytest.raises(ValueError, match="random generator is on cpu but the features on meta"):
        net.losses(feat, LossConfig(), torch.Generator())


# ---- repeatable(): the math attention kernel on CUDA ---------------------------------------------
def sdpa_flags() -> dict[str, bool]:
    cuda = torch.backends.cuda
    return {"flash": cuda.flash_sdp_enabled(), "mem_efficient": cuda.mem_efficient_sdp_enabled(),
            "cudnn": cuda.cudnn_sdp_enabled(), "math": cuda.math_sdp_enabled()}


def test_repeatable_chooses_the_math_attention_kernel_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on CUDA (repeatable) leaves scaled_dot_product_attention the math kernel alone (flash,
    memory-efficient and cuDNN have non-deterministic backward passes); the CPU's flags are left alone, every
    flag comes back on exit, also after an error, and the benchmark's opt-out re-enables the fused kernels.
    Flags only: no GPU is touched (tests/test_train_cuda.py checks the runs themselves at L = 256)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # repeatable sets it; restored after the test
    before = sdpa_flags()
    assert all(before.values())  # torch's defaults
    with repeatable(torch.device("cpu")):
        assert sdpa_flags() == before
    math_only = {"flash": False, "mem_efficient": False, "cudnn": False, "math": True}
    with repeatable(CUDA0):
        assert sdpa_flags() == math_only and torch.are_deterministic_algorithms_enabled()
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 4, 256, 16, generator=g) for _ in range(3))  # L = 256 tokens
        want = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v
        torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v), want)
        with math_attention(only=False):  # bench/train_throughput.py --attention fused
            assert sdpa_flags() == before
        assert sdpa_flags() == math_only
    assert sdpa_flags() == before and not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="inside"), math_attention():
        assert sdpa_flags() == math_only
        raise RuntimeError("inside")
    assert sdpa_flags() == before


# ---- DataLoader workers -------------------------------------------------------------------------
WORKERS_CHECK = """
import sys
from pathlib import Path

import numpy as np
import torch

from aminet_edge.data.batches import load_batches
from aminet_edge.data.images import preprocess, read_image
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.training.cache import build_feature_cache

data, tmp = Path(sys.argv[1]), Path(sys.argv[2])
paths = sorted(str(p) for p in (data / "train" / "good").glob("*.png"))[:5]
mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
want = np.stack([preprocess(read_image(p), 64, mean, std) for p in paths])  # the numpy reference
for workers in (0, 2):
    got = torch.cat(list(load_batches(paths, 64, mean, std, 2, workers=workers))).numpy()
    assert np.array_equal(got, want), workers
ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
serial = build_feature_cache(ext, paths, 64, ext.mean, ext.std, progress=False)
parallel = build_feature_cache(ext, paths, 64, ext.mean, ext.std, progress=False, workers=2)
assert torch.equal(serial, parallel)
(tmp / "broken.png").write_bytes(b"not a png")
try:
    list(load_batches([paths[0], str(tmp / "broken.png")], 64, mean, std, 2, workers=2))
except ValueError as exc:
    assert "broken.png: not a readable image" in str(exc) and "Traceback" not in str(exc), exc
else:
    raise AssertionError("a broken image in a worker must raise")
"""


def test_workers_give_the_serial_batches(data: Path, tmp_path: Path) -> None:
    """DataLoader workers give the serial path's batches and features, and a broken image is one clear line.

    Run in a fresh interpreter: worker processes forked from this long-lived test process (which by now
    holds onnxruntime, OpenVINO, TensorRT-RTX and Triton) crashed it with SIGSEGV in two of three full
    suite runs; never in a fresh process, nor when the training CLI uses workers. Root cause not found."""
    res = subprocess.run([sys.executable, "-c", WORKERS_CHECK, str(data), str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


# ---- the CPU fp32 path is the plain loop, bit for bit -------------------------------------------
def plain_loop(data: Path, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The training loop as it was before devices and precisions: CPU generator, AdamW, backward, step."""
    fit, _ = split_holdout(load_training_samples([data], None, cfg.seed), cfg.holdout_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    ext = build_feature_extractor(SMALL.backbone, image_size=SMALL.image_size, pretrained=False)
    net = AMINet(SMALL, ext.channels)
    feats = torch.cat([ext(b) for b in load_batches([s.path for s in fit], 64, ext.mean, ext.std, 8)])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(feats), cfg.batch_size):
            loss = net.losses(feats[order[i:i + cfg.batch_size]], cfg.loss, gen)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.state_dict()


def test_cpu_training_equals_the_plain_loop(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import load_file

    device = "cpu" if torch.cuda.is_available() else "auto"  # without a GPU, auto must be the CPU
    with caplog.at_level("INFO", logger="aminet_edge.training"):
        bundle = train(data, tmp_path / "run", model=SMALL, train_cfg=CFG, pretrained=False, progress=False,
                       device=device)
    assert "training on cpu, precision fp32" in caplog.text
    got = load_file(str(bundle / "weights.safetensors"))
    for key, want in plain_loop(data, CFG).items():
        assert torch.equal(got[f"aminet.{key}"], want), key


# ---- checkpoints record device type and precision -----------------------------------------------
def test_resume_checks_device_and_precision(data: Path, tmp_path: Path) -> None:
    def run(out: Path, epochs: int, **kw) -> Path:  # type: ignore[no-untyped-def]
        return train(data, out, model=SMALL, train_cfg=TrainConfig(epochs=epochs, batch_size=4, lr=1e-3),
                     pretrained=False, progress=False, device="cpu", **kw)

    run(tmp_path / "part", 1, precision="bf16")
    ckpt = tmp_path / "part" / CHECKPOINT_FILE
    state = torch.load(ckpt, weights_only=True)
    assert (state["precision"], state["generator_device"], state["device"]) == ("bf16", "cpu", "cpu")
    with pytest.raises(ValueError, match="written by a bf16 run; this run is fp32: resume with --precision bf16"):
        run(tmp_path / "part", 2, precision="fp32", resume=True)
    torch.save(state | {"generator_device": "cuda", "device": "cuda:0 (NVIDIA H200)"}, ckpt)
    with pytest.raises(ValueError, match=r"run on cuda:0 \(NVIDIA H200\).*resume with --device cuda"):
        run(tmp_path / "part", 2, precision="bf16", resume=True)
    old = {k: v for k, v in state.items() if k not in ("generator_device", "device", "precision", "scaler")}
    torch.save(old, ckpt)  # a checkpoint of the previous version: CPU fp32
    with pytest.raises(ValueError, match="written by a fp32 run"):
        run(tmp_path / "part", 2, precision="bf16", resume=True)
