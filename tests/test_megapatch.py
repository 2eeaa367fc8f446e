"""Mega-patches: shapes, coverage of the base grid and equality with per-rectangle resizing."""

import pytest
import torch
import torch.nn.functional as F

from relvit.ssl.megapatch import megapatch_images, sample_cuts


@pytest.mark.parametrize("grid,side", [(7, 6), (7, 5), (7, 1), (7, 7), (4, 2)])
def test_cuts_partition_the_grid(grid, side):
    bounds = sample_cuts(200, grid, side, torch.Generator().manual_seed(0))
    assert bounds.shape == (200, side + 1)
    assert (bounds[:, 0] == 0).all() and (bounds[:, -1] == grid).all()
    lengths = bounds.diff(dim=1)
    assert (lengths >= 1).all() and (lengths.sum(dim=1) == grid).all()


def test_cut_positions_are_uniform_over_the_grid():
    bounds = sample_cuts(20000, 7, 6, torch.Generator().manual_seed(0))
    # S = 6 on g = 7: exactly one segment of length 2, equally likely at each of 6 places
    long_segment = (bounds.diff(dim=1) == 2).float().argmax(dim=1)
    freq = torch.bincount(long_segment, minlength=6).float() / 20000
    assert torch.allclose(freq, torch.full((6,), 1 / 6), atol=0.015)


@pytest.mark.parametrize("symmetric", [False, True])
def test_megapatches_equal_resizing_each_rectangle(symmetric):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 3, 28, 28, generator=g)
    out, rows, cols = megapatch_images(images, 4, 5, g, symmetric=symmetric)
    assert out.shape == (4, 3, 20, 20)
    assert torch.equal(rows, cols) == symmetric
    for b in range(4):
        for i in range(5):
            for j in range(5):
                rect = images[b:b + 1, :, rows[b, i] * 4:rows[b, i + 1] * 4,
                              cols[b, j] * 4:cols[b, j + 1] * 4]
                ref = F.interpolate(rect, size=(4, 4), mode="bilinear", align_corners=False)
                cell = out[b, :, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4]
                torch.testing.assert_close(cell, ref[0], atol=1e-5, rtol=1e-5)


def test_side_equal_to_grid_is_the_identity():
    images = torch.rand(2, 3, 16, 16)
    out, _, _ = megapatch_images(images, 4, 4)
    torch.testing.assert_close(out, images)


def test_bad_sides_are_refused():
    with pytest.raises(ValueError, match="between 1 and the base grid side 4"):
        megapatch_images(torch.rand(1, 3, 16, 16), 4, 5)
    with pytest.raises(ValueError, match="square image divisible by 4"):
        megapatch_images(torch.rand(1, 3, 18, 18), 4, 2)
