"""Batch-level jitter + permutation: chunking changes nothing but speed."""

import pytest
import torch

from relvit.ssl import pipeline
from relvit.ssl.jitter import JitterConfig, apply_jitter
from relvit.ssl.patches import patchify, permute_patches, unpatchify
from relvit.ssl.pipeline import jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets

IDENTITY = JitterConfig(crop=False, color_jitter_p=0.0, grayscale_p=0.0)


@pytest.mark.parametrize("chunk_images", [1, 3, 1000])
@pytest.mark.parametrize("jitter", [None, IDENTITY])
def test_shuffle_moves_patches_whatever_the_chunking(monkeypatch, chunk_images, jitter):
    images = torch.rand(7, 3, 16, 16)
    monkeypatch.setattr(pipeline, "CPU_CHUNK_BYTES", chunk_images * 3 * 16 * 16 * 4)
    out, perm = jitter_and_shuffle(images, 4, jitter, True, torch.Generator().manual_seed(0))
    assert perm.shape == (7, 16)
    assert torch.equal(out, unpatchify(permute_patches(patchify(images, 4), perm), (4, 4)))
    # slot k of image b holds original cell perm[b, k]: undo it and get the image back
    inverse = perm.argsort(dim=1)
    assert torch.equal(unpatchify(permute_patches(patchify(out, 4), inverse), (4, 4)), images)
    assert relation_targets(4, 4, perm).shape == (7, 16, 16)


def test_each_patch_is_jittered_with_its_own_draw_before_it_moves():
    """Spec §2: jitter (step 4), then permutation (step 5): draw k jitters the patch of cell k,
    wherever the permutation puts it. Permuting first gives the same distribution but other
    images for the same draws (a recorded run's numbers); with the identity jitter, as above,
    the order cannot show."""
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = JitterConfig()
    draws = pipeline.draw_ssl_inputs(images, 4, cfg, True, torch.Generator().manual_seed(1))
    patches = patchify(images, 4)
    jittered = apply_jitter(patches.flatten(0, 1), draws.jitter, cfg).view(patches.shape)
    expected = unpatchify(permute_patches(jittered, draws.perm), (4, 4))
    out = pipeline.apply_ssl_inputs(images, 4, draws, cfg)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    moved_first = unpatchify(apply_jitter(permute_patches(patches, draws.perm).flatten(0, 1),
                                          draws.jitter, cfg).view(patches.shape), (4, 4))
    assert (out - moved_first).abs().max() > 0.1  # the test can tell the two orders apart


def test_chunked_jitter_stays_in_range_and_is_reproducible(monkeypatch):
    images = torch.rand(5, 3, 16, 16)
    monkeypatch.setattr(pipeline, "CPU_CHUNK_BYTES", 2 * 3 * 16 * 16 * 4)
    a, none = jitter_and_shuffle(images, 4, JitterConfig(), False, torch.Generator().manual_seed(3))
    b, _ = jitter_and_shuffle(images, 4, JitterConfig(), False, torch.Generator().manual_seed(3))
    assert none is None and torch.equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0 and not torch.equal(a, images)


def test_each_chunk_applies_its_own_draws(monkeypatch):
    """The CPU applies a batch's jitter in chunks: each chunk must take its own images' draws,
    so the result is the one-chunk result (a chunk reusing the first chunk's draws would jitter
    every chunk alike)."""
    images = torch.rand(5, 3, 16, 16)
    draws = pipeline.draw_ssl_inputs(images, 4, JitterConfig(), True,
                                     torch.Generator().manual_seed(4))
    whole = pipeline.apply_ssl_inputs(images, 4, draws, JitterConfig())
    monkeypatch.setattr(pipeline, "CPU_CHUNK_BYTES", 2 * 3 * 16 * 16 * 4)  # 2-image chunks
    assert torch.equal(pipeline.apply_ssl_inputs(images, 4, draws, JitterConfig()), whole)


def test_nothing_to_do_returns_the_input():
    images = torch.rand(2, 3, 8, 8)
    out, perm = jitter_and_shuffle(images, 4, None, False)
    assert out is images and perm is None


@pytest.mark.parametrize("height, width, patch", [(16, 18, 4), (18, 16, 4), (16, 16, 0)])
def test_a_patch_size_that_does_not_divide_the_image_is_named(height, width, patch):
    from relvit.ssl.patches import grid_shape

    with pytest.raises(ValueError, match=f"patch size {patch} does not divide the image size "
                                         f"{height}x{width}"):
        grid_shape(height, width, patch)
    assert grid_shape(16, 12, 4) == (4, 3)  # rows, cols


def test_every_image_draws_its_own_permutation():
    """Spec §2.2: a fresh uniform permutation per sample. A batch sharing one permutation gives
    every image the same targets (one permutation for the batch had passed the other tests)."""
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    draws = pipeline.draw_ssl_inputs(images, 4, None, True, torch.Generator().manual_seed(1))
    perm = draws.perm
    assert perm.shape == (8, 16)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(16).expand(8, -1))
    # 8 independent draws of 16! permutations: all distinct (a collision has chance ~1e-12)
    assert len({tuple(row.tolist()) for row in perm}) == 8
    # and so are the images' targets
    targets = relation_targets(4, 4, perm)
    assert not torch.equal(targets[0], targets[1])
    assert not torch.equal(position_targets(16, perm)[0], position_targets(16, perm)[1])
