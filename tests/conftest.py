"""Shared fixtures: tiny run configs on the embedded digits, and a few image files."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fixtures.runs import TINY_RUN

from relvit.config import config_from_dict, merge
from relvit.data.loading import FileSplit


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


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> FileSplit:
    """Ten random-noise JPEGs of mixed sizes: any two crops of one differ."""
    root = tmp_path_factory.mktemp("photos")
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(10):
        h, w = 40 + 3 * i, 60 - 2 * i
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
        paths.append(root / f"{i}.jpg")
        Image.fromarray(pixels.numpy()).save(paths[-1], quality=90)
    return FileSplit(paths, torch.arange(10))
