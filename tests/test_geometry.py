"""Run geometry against method spec §4's table and §2.3 (mega-patches): image side, patch,
token stride, SSL grid and the number of position classes of each dataset and backbone."""

from __future__ import annotations

import pytest

from relvit.config import ConfigError, config_from_dict
from relvit.geometry import run_geometry, run_identity


@pytest.mark.parametrize("dataset, backbone, patch, stride, grid", [
    ("cifar10", "vit_small", 4, 4, 8),  # ViT-S/4 on 32 px: 8x8
    ("cifar100", "vit_small", 4, 4, 8),
    ("svhn", "vit_small", 4, 4, 8),  # Q1: as CIFAR
    ("tiny_imagenet", "vit_small", 8, 8, 8),  # ViT-S/8 on 64 px
    ("imagenet100", "vit_small", 32, 32, 7),  # ViT-S/32 at 224 px: 7x7
    ("imagenet100", "swin_tiny", 4, 32, 7),  # Swin's native 7x7 last stage
    ("imagenet100", "t2t_vit_14", None, 16, 7),  # T2T's 14x14 tokens pooled 2x2
    # a resized Swin: stride patch * 2^(stages - 1), with the configured patch and depth
    ("imagenet100", {"backbone": "swin_tiny", "patch_size": 2}, 2, 16, 14),
    ("imagenet100", {"backbone": "swin_tiny", "depth": 3}, 4, 16, 14),  # two mergings
])
def test_each_dataset_and_backbone_has_the_papers_grid(dataset, backbone, patch, stride, grid):
    """Each preset's grid, and a Swin's with its patch or depth overridden (the stride had been
    computed from the preset's patch and four stages without a test noticing)."""
    model = backbone if isinstance(backbone, dict) else {"backbone": backbone}
    cfg = config_from_dict({"mode": "pretrain", "data": {"name": dataset}, "model": model})
    geo = run_geometry(cfg)
    assert (geo.patch_size, geo.token_stride, geo.ssl_grid) == (patch, stride, grid)
    assert geo.cell == geo.image_size // grid and geo.num_positions == grid * grid
    assert geo.ssl_pool == (2 if model["backbone"] == "t2t_vit_14" else 1)


@pytest.mark.parametrize("mode, side, positions", [("pretrain", 6, 36), ("pretrain", 5, 25),
                                                   ("pretrain", 7, 49),  # S = g is allowed
                                                   ("finetune", 0, 49), ("supervised", 0, 49),
                                                   ("joint", 0, 49)])
def test_megapatches_set_the_position_classes_of_pretraining_only(mode, side, positions):
    """§2.3: S x S mega-patches (S = 6 on ImageNet-100) give S² position classes; fine-tuning
    and supervised runs use the normal grid whatever the config's S; S equal to the grid side
    (S <= g) is accepted (refusing it, or mega-patches in a supervised run, had passed)."""
    ssl = {"megapatch_side": 6 if mode in ("finetune", "supervised") else side}
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


def test_run_identity_records_the_configs_own_values():
    """Each identity key holds its own config value (seed, epochs, dataset title...): only its
    subset relation to a failed run's metrics had been checked, so a swapped value passed."""
    cfg = config_from_dict({"mode": "supervised", "seed": 7, "label": "lbl",
                            "data": {"name": "cifar10"}, "optim": {"epochs": 3}})
    assert run_identity(cfg) == {
        "mode": "supervised", "label": "lbl", "seed": 7, "dataset": "cifar10",
        "dataset_title": "CIFAR-10", "backbone": "vit_small", "backbone_label": "ViT-S/4",
        "epochs": 3}
