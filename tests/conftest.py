"""Shared fixtures: tiny run configs on the embedded digits."""

from __future__ import annotations

import pytest

from relvit.config import config_from_dict, merge

TINY_RUN = {
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {"backbone": "vit_small", "embed_dim": 36, "depth": 1, "num_heads": 3,
              "drop_path_rate": 0.0},
    "optim": {"epochs": 2, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05},
}


@pytest.fixture
def tiny_config():
    """`tiny_config(mode, **overrides)` -> a validated RunConfig of a tiny ViT on digits."""

    def make(mode: str, **overrides):
        return config_from_dict(merge(merge(TINY_RUN, {"mode": mode}), overrides))

    return make
