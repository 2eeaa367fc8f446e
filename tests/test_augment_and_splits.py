"""Batched augmentation against torchvision's semantics, the embedded digits' fixed train/test
split, and evaluation batches that are never augmented."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from relvit.data import registry
from relvit.data.augment import normalize, random_crop, random_hflip
from relvit.data.digits import load_digits_splits
from relvit.data.loading import TensorSplit, image_statistics
from relvit.train.loop import Run


# ------------------------------------------------------------------------------- augmentation
def test_the_registry_holds_the_method_specs_augmentation_splits_and_statistics():
    """Method spec §5.2-5.3: the 32- and 64-px datasets pad-crop by 4 and flip, no dataset is
    evaluated on its training split, and CIFAR-10 and ImageNet are normalised with the original
    code's statistics."""
    for name in ("cifar10", "cifar100", "svhn", "tiny_imagenet"):
        spec = registry.DATASETS[name]
        assert (spec.train_crop, spec.crop_padding, spec.flip) == ("pad", 4, True), name
    for spec in registry.DATASETS.values():
        assert spec.train_split not in (spec.eval_split, *spec.extra_eval_splits), spec.name
    assert registry.DATASETS["cifar10"].stats == ((0.4914, 0.4822, 0.4465),
                                                  (0.2470, 0.2435, 0.2616))
    assert registry.DATASETS["imagenet"].stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _windows(image: torch.Tensor, padding: int) -> dict[tuple[int, int], torch.Tensor]:
    """Every crop torchvision's RandomCrop(size, padding) can return: zero-pad, then crop."""
    h, w = image.shape[-2:]
    padded = TF.pad(image, [padding], fill=0)
    return {(top, left): TF.crop(padded, top, left, h, w)
            for top in range(2 * padding + 1) for left in range(2 * padding + 1)}


@pytest.mark.parametrize("padding", [1, 2, 4])  # 1: a no-op below 2 had passed
def test_random_crop_is_a_zero_padded_window_at_offsets_spanning_0_to_2p(padding):
    """Guards random_crop: each output is one of RandomCrop(size, padding)'s windows of its own
    input, and over many draws the offsets reach both extremes 0 and 2p on each axis."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(256, 3, 10, 12, generator=gen) + 0.5  # no zeros: windows are unique
    out = random_crop(images, padding, torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    tops, lefts, offsets = set(), set(), set()
    for image, crop in zip(images, out):
        found = [offset for offset, window in _windows(image, padding).items()
                 if torch.equal(window, crop)]
        assert len(found) == 1, "not a zero-padded window of its own input"
        tops.add(found[0][0])
        lefts.add(found[0][1])
        offsets.add(found[0])
    everything = set(range(2 * padding + 1))
    assert tops == everything and lefts == everything
    # top and left drawn apart: most of the (2p + 1)² windows, not the 2p + 1 diagonal ones
    assert len(offsets) > 0.8 * len(everything) ** 2
    assert torch.equal(random_crop(images, 0, gen), images)


def test_random_crop_is_seeded_by_its_generator():
    """Guards the explicit generator: the same seed gives the same crops, another seed others."""
    images = torch.rand(64, 3, 8, 8)
    a = random_crop(images, 2, torch.Generator().manual_seed(5))
    b = random_crop(images, 2, torch.Generator().manual_seed(5))
    c = random_crop(images, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_hflip_flips_horizontally_or_not_at_all():
    """Guards random_hflip: each image is itself or RandomHorizontalFlip's mirror (x.flip(-1)),
    never a vertical flip, and both outcomes occur about half of the time."""
    images = torch.rand(400, 3, 6, 7)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = 0
    for image, result in zip(images, out):
        mirror = TF.hflip(image)
        assert torch.equal(mirror, image.flip(-1))
        same, mirrored = torch.equal(result, image), torch.equal(result, mirror)
        assert same or mirrored, "neither the image nor its horizontal mirror"
        flipped += mirrored
    assert 180 < flipped < 220  # 201 with this seed; 400 draws of p = 0.5: std 10


def test_normalize_matches_torchvision_normalize():
    """Guards normalize: (x - mean) / std per channel, as torchvision's Normalize."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    images = torch.rand(5, 3, 8, 8)
    expected = T.Normalize(mean, std)(images)
    torch.testing.assert_close(normalize(images, mean, std), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- digits split
def _sklearn_index(images: torch.Tensor) -> list[int]:
    """Index in sklearn's digits of each 8x8 image (the 1,797 images are all distinct)."""
    digits = load_digits()
    full = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    where = {full[i].numpy().tobytes(): i for i in range(len(full))}
    assert len(where) == len(full)
    return [where[image[0].numpy().tobytes()] for image in images]


def test_digits_split_is_a_stratified_disjoint_80_20_partition():
    """Guards the digits split (docs/deviations.md): 1,437 train / 360 test images, disjoint,
    together all 1,797, stratified by class, normalised with the training split's statistics."""
    # at 8x8 the bilinear upscale is the identity: images can be traced to sklearn's indices
    splits = load_digits_splits(8)
    train, test = splits.train, splits.evals["test"]
    assert list(splits.evals) == ["test"]
    sizes = len(train.labels), len(test.labels)
    assert sizes == (1437, 360)
    train_idx, test_idx = _sklearn_index(train.images), _sklearn_index(test.images)
    assert not set(train_idx) & set(test_idx)
    assert sorted(train_idx + test_idx) == list(range(1797))
    target = load_digits().target
    assert train.labels.tolist() == target[train_idx].tolist()
    assert test.labels.tolist() == target[test_idx].tolist()
    per_class = np.bincount(target, minlength=10)
    test_per_class = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_per_class - 0.2 * per_class) <= 1)
    assert (splits.mean, splits.std) == image_statistics(train)

    at16 = load_digits_splits(16)  # the default size: same split, upscaled
    assert at16.train.images.shape == (1437, 3, 16, 16)
    same_labels = (torch.equal(at16.train.labels, train.labels)
                   and torch.equal(at16.evals["test"].labels, test.labels))
    assert same_labels, "another split at 16x16 than at 8x8"
    seen = {image.numpy().tobytes() for image in at16.train.images}
    assert not any(image.numpy().tobytes() in seen for image in at16.evals["test"].images)


def test_digits_split_does_not_depend_on_the_global_random_state():
    """Guards the fixed split seed: the split is the same whatever torch's and numpy's global
    generators (a run's seed) were when it was made."""
    made = []
    for seed in (0, 1):
        load_digits_splits.cache_clear()
        torch.manual_seed(seed)
        np.random.seed(seed)
        made.append(load_digits_splits(8))
    load_digits_splits.cache_clear()
    a, b = made
    same_train = torch.equal(a.train.images, b.train.images)
    same_test = torch.equal(a.evals["test"].images, b.evals["test"].images)
    assert same_train and same_test, "the split changed with the global random state"


# ------------------------------------------------------------------------------- evaluation
def _twin_runs(tiny_config, tmp_path, mode, augmented, plain):
    """Two Runs with the same weights: one with `augmented` overrides, one with `plain`."""
    a = Run(tiny_config(mode, **augmented), tmp_path / "a", progress=False)
    b = Run(tiny_config(mode, **plain), tmp_path / "b", progress=False)
    b.model.load_state_dict(a.model.state_dict())
    return a, b


def test_supervised_evaluation_is_the_plain_normalised_forward_pass(tiny_config, tmp_path):
    """Guards Run.evaluate's eval-mode batches: the loss and accuracy are those of the
    un-augmented, normalised test images, whatever the global random state, and equal to a run
    with data.augment false."""
    run, plain = _twin_runs(tiny_config, tmp_path, "supervised", {"data": {"augment": True}},
                            {"data": {"augment": False}})
    test = run.splits.evals["test"]
    torch.manual_seed(123)
    first = run.evaluate(test)
    torch.manual_seed(456)
    assert run.evaluate(test) == first
    assert plain.evaluate(test) == first

    with torch.no_grad():
        run.model.eval()
        inputs = normalize(test.images, run.splits.mean, run.splits.std)
        logits = run.model(inputs)["logits"].float()
    loss = F.cross_entropy(logits, test.labels).item()
    acc = (logits.argmax(-1) == test.labels).float().mean().item()
    assert first["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert first["loss_clf"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert first["acc_clf"] == pytest.approx(acc, abs=1e-6)


def test_pretrain_evaluation_has_no_crop_jitter_or_shuffle(tiny_config, tmp_path):
    """Guards Run.evaluate in pretraining: the training-only draws (crop, patch jitter, patch
    shuffle) are off, so switching them all off in the config changes nothing."""
    on = {"data": {"augment": True}, "ssl": {"jitter": True, "shuffle": True}}
    off = {"data": {"augment": False}, "ssl": {"jitter": False, "shuffle": False}}
    run, plain = _twin_runs(tiny_config, tmp_path, "pretrain", on, off)
    test = run.splits.evals["test"]
    torch.manual_seed(7)
    first = run.evaluate(test)
    assert "acc_pos" in first or "acc_rel" in first
    torch.manual_seed(8)
    assert plain.evaluate(test) == first


def test_image_statistics_are_per_channel_in_unit_range():
    """uint8 pixels count as /255, and each channel gets its own mean and std."""
    images = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    images[:, 1] = 255
    images[0, 2] = 255  # channel 2: half 0, half 255
    labels = torch.zeros(2, dtype=torch.long)
    mean, std = image_statistics(TensorSplit(images, labels))
    assert mean == pytest.approx((0.0, 1.0, 0.5))
    assert std[:2] == pytest.approx((0.0, 0.0)) and std[2] == pytest.approx(0.5, rel=0.05)
    as_float = image_statistics(TensorSplit(images.float() / 255, labels))
    assert as_float[0] == pytest.approx(mean)
