"""Run geometry against method spec §4's table and §2.3 (mega-patches): image side, patch,
token stride, SSL grid and the number of position classes of each dataset and backbone."""

from __future__ import annotations

import pytest

from relvit.config import ConfigError, config_from_dict
from relvit.geometry import run_geometry


@pytest.mark.parametrize("dataset, backbone, patch, stride, grid", [
    ("cifar10", "vit_small", 4, 4, 8),  # ViT-S/4 on 32 px: 8x8
    ("cifar100", "vit_small", 4, 4, 8),
    ("svhn", "vit_small", 4, 4, 8),  # Q1: as CIFAR
    ("tiny_imagenet", "vit_small", 8, 8, 8),  # ViT-S/8 on 64 px
    ("imagenet100", "vit_small", 32, 32, 7),  # ViT-S/32 at 224 px: 7x7
    ("imagenet100", "swin_tiny", 4, 32, 7),  # Swin's native 7x7 last stage
    ("imagenet100", "t2t_vit_14", None, 16, 7),  # T2T's 14x14 tokens pooled 2x2
])
def test_each_dataset_and_backbone_has_the_papers_grid(dataset, backbone, patch, stride, grid):
    cfg = config_from_dict({"mode": "pretrain", "data": {"name": dataset},
                            "model": {"backbone": backbone}})
    geo = run_geometry(cfg)
    assert (geo.patch_size, geo.token_stride, geo.ssl_grid) == (patch, stride, grid)
    assert geo.cell == geo.image_size // grid and geo.num_positions == grid * grid
    assert geo.ssl_pool == (2 if backbone == "t2t_vit_14" else 1)


@pytest.mark.parametrize("mode, side, positions", [("pretrain", 6, 36), ("pretrain", 5, 25),
                                                   ("finetune", 0, 49), ("joint", 0, 49)])
def test_megapatches_set_the_position_classes_of_pretraining_only(mode, side, positions):
    """§2.3: S x S mega-patches (S = 6 on ImageNet-100) give S² position classes; fine-tuning
    afterwards uses the normal grid."""
    ssl = {"megapatch_side": 6 if mode == "finetune" else side}
    cfg = config_from_dict({"mode": mode, "data": {"name": "imagenet100"}, "ssl": ssl})
    geo = run_geometry(cfg)
    assert (geo.megapatch_side, geo.num_positions, geo.ssl_grid) == (side, positions, 7)


def test_a_megapatch_side_above_the_grid_is_refused():
    """§2.3: S ≤ g; the config names the key and sizes (its validation derives the geometry;
    the problem had been filed under data.image_size / model.patch_size)."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"mode": "pretrain", "data": {"name": "imagenet100"},
                          "ssl": {"megapatch_side": 8}})
    assert err.value.problems == ["ssl.megapatch_side: 8 is larger than the base grid side 7"]


@pytest.mark.parametrize("raw, key, ok", [
    ({"mode": "pretrain", "ssl": {"megapatch_side": 1}}, "ssl.megapatch_side", False),
    ({"mode": "pretrain", "model": {"backbone": "swin_tiny"}},  # 32 px / stride 32: one token
     "data.image_size / model.patch_size", False),
    ({"mode": "joint", "model": {"backbone": "swin_tiny"}}, "data.image_size / model.patch_size",
     False),
    ({"mode": "supervised", "model": {"backbone": "swin_tiny"}}, None, True),  # no SSL task
    ({"mode": "pretrain", "ssl": {"megapatch_side": 2}}, None, True),
])
def test_a_one_cell_ssl_grid_is_refused(raw, key, ok):
    """One cell leaves no pair to relate and one position class: the relation accuracy had been
    0/0 (NaN) and the pretext task trivial, without a word."""
    raw = {"data": {"name": "cifar10"}, **raw}
    if ok:
        config_from_dict(raw)
        return
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    [problem] = err.value.problems
    assert problem.startswith(f"{key}: the SSL grid would be 1x1") and "at least 2x2" in problem


def test_detection_with_joint_ssl_needs_two_cells_too():
    raw = {"mode": "detect", "data": {"name": "digit_scenes", "image_size": 32},
           "model": {"backbone": "swin_tiny"}}
    config_from_dict(raw)
    with pytest.raises(ConfigError, match="SSL grid would be 1x1"):
        config_from_dict({**raw, "detection": {"ssl_joint": True}})
