"""The published model's hyper-parameters, pinned to the paper / the authors' code (see aminet_edge/config.py
for the provenance of each): a changed default fails here, not silently in accuracy."""

from __future__ import annotations

import math

import pytest

from aminet_edge.config import PRESETS, LossConfig, ModelConfig, ScoreConfig, TrainConfig, from_dict, to_dict


def test_paper_defaults() -> None:
    m = ModelConfig()
    assert (m.backbone, m.image_size, m.patch_size, m.embed_dim, m.num_heads, m.mlp_ratio) == (
        "wide_resnet50_2", 256, 4, 768, 12, 4.0)
    assert (m.inpaint_depth, m.aggregation_depth, m.num_clusters) == (8, 1, 8)
    assert m.mask_lambda == 0.5  # the authors' test-time sigma (config.py) and the paper's lambda
    assert (m.feature_jitter, m.jitter_scale) == (False, 20.0)
    assert (m.feature_size, m.grid_size) == (64, 16)  # 16 x 16 = 256 tokens
    assert to_dict(LossConfig()) == {"w_mse": 1.0, "w_cos": 5.0, "w_intra": 1.0, "w_inter": 0.1}
    t = TrainConfig()
    assert (t.epochs, t.batch_size, t.lr, t.betas, t.weight_decay) == (300, 8, 1e-4, (0.9, 0.95), 0.01)
    assert t.holdout_fraction == 0.1
    assert (ScoreConfig().sigma, ScoreConfig().image_score) == (4.0, "std")
    assert PRESETS["paper"] == m
    for preset in PRESETS.values():  # the small presets change capacity only, never the method
        assert (preset.mask_lambda, preset.num_clusters, preset.patch_size) == (0.5, 8, 4)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", -1), ("epochs", 1.5), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-4),
    ("lr", math.nan), ("lr", math.inf), ("lr", 1e300), ("betas", (0.9, 1.0)), ("weight_decay", -0.1),
    ("holdout_fraction", 1.0), ("holdout_fraction", -0.1), ("cache_dtype", "int8"),
])
def test_train_config_ranges(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value}).validate()  # type: ignore[arg-type]
    TrainConfig().validate()


def test_model_config_rejects_non_positive_size() -> None:
    for size in (0, -16):
        with pytest.raises(ValueError, match="image_size"):
            ModelConfig(image_size=size).validate()
    # a mistyped size (25600 for 256) must be an error, not a training killed out of memory
    with pytest.raises(ValueError, match="image_size=25600 is above the maximum 1024"):
        ModelConfig(image_size=25600).validate()
    ModelConfig(image_size=1024).validate()
    with pytest.raises(ValueError, match="w_cos"):
        from_dict(TrainConfig, {"loss": {"w_cos": -1.0}}).validate()
