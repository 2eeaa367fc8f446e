"""Shared fixtures: tiny run configs on the embedded digits."""

from __future__ import annotations

import pytest
import torch

from fixtures.runs import TINY_RUN

from relvit.config import config_from_dict, merge


@pytest.fixture
def tiny_config():
    """`tiny_config(mode, **overrides)` -> a validated RunConfig of a tiny ViT on digits."""

    def make(mode: str, **overrides):
        return config_from_dict(merge(merge(TINY_RUN, {"mode": mode}), overrides))

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of many tiny ops: threads add only contention on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
