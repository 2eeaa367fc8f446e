"""Per-sample seeded augmentation (`SeededSamples`): an image file's random crop and flip depend
on the stream seed and the image's index only, not on the loader workers, the batching or the
order, and torch's global generator of the training process is left alone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from relvit.data import registry
from relvit.data.loading import FileSplit, batches, file_transform, sample_seed


TRAIN = file_transform(registry.DATASETS["imagenet100"], 24, train=True)  # RandomResizedCrop + flip


def images_by_index(split: FileSplit, order: torch.Tensor, sizes: int | list[int],
                    workers: int, seed: int | None) -> dict[int, torch.Tensor]:
    loaded = [images for images, _ in batches(split, order, sizes, TRAIN, workers, seed=seed)]
    return dict(zip(order.tolist(), torch.cat(loaded)))


def test_the_same_crops_whatever_the_workers_batches_and_order(photos):
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    reference = images_by_index(photos, order, 4, workers=0, seed=7)
    for sizes, workers in (([3, 3, 4], 2), (10, 2), (1, 1)):
        for shuffled in (order, order.flip(0)):
            again = images_by_index(photos, shuffled, sizes, workers, seed=7)
            for index, image in reference.items():
                assert torch.equal(again[index], image), (sizes, workers, index)


def test_without_a_seed_the_crops_follow_the_workers(photos):
    """What the seeding fixes: unseeded, each worker draws from a stream of its own."""
    order = torch.arange(10)
    one = images_by_index(photos, order, 2, workers=0, seed=None)
    two = images_by_index(photos, order, 2, workers=2, seed=None)
    assert any(not torch.equal(one[i], two[i]) for i in range(10))


def test_other_seeds_give_other_crops(photos):
    order = torch.arange(10)
    first = images_by_index(photos, order, 5, workers=0, seed=7)
    second = images_by_index(photos, order, 5, workers=0, seed=8)
    assert sum(not torch.equal(first[i], second[i]) for i in range(10)) >= 8


def test_the_global_generator_is_left_alone(photos):
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    images_by_index(photos, torch.arange(10), 4, workers=0, seed=7)
    assert torch.equal(torch.rand(5), expected)


def test_every_sample_of_a_stream_has_its_own_seed():
    """Two samples with one seed would draw the same crop and flip; torch's CPU generator keeps a
    seed's low 32 bits, so those must differ too."""
    for stream in (0, 12_345, 2**40 + 3):
        seeds = [sample_seed(stream, index) for index in range(2_000)]
        assert len({seed % 2**32 for seed in seeds}) == len(seeds)


@pytest.mark.parametrize("name", ["flowers102", "imagenet100", "imagenet"])
@pytest.mark.parametrize("train", [True, False])
def test_file_transforms_are_torchvisions_at_224(train, name):
    """ImageNet-style datasets (method spec §5.2): RandomResizedCrop(224) + horizontal flip for
    training, Resize(256) + CenterCrop(224) for evaluation, draw for draw."""
    import torchvision.transforms as T

    image = Image.frombytes("RGB", (300, 200), bytes(range(256)) * (300 * 200 * 3 // 256)
                            + bytes(300 * 200 * 3 % 256))
    ours = file_transform(registry.DATASETS[name], 224, train=train)
    steps = ([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train
             else [T.Resize(256), T.CenterCrop(224)])
    reference = T.Compose([*steps, T.PILToTensor()])
    for seed in range(8):  # both flips among them
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        assert torch.equal(ours(image), expected), seed


def test_the_samples_of_one_pass_draw_their_own_crops(photos):
    """One image listed eight times: seeded per sample, the eight crops differ (one seed shared
    by the samples of a pass had given every image of a batch the same crop and flip)."""
    split = FileSplit([photos.paths[0]] * 8, torch.zeros(8, dtype=torch.long))
    images = torch.cat([b for b, _ in batches(split, torch.arange(8), 4, TRAIN, seed=7)])
    distinct = {images[i].numpy().tobytes() for i in range(8)}
    assert len(distinct) >= 7
