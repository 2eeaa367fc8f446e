"""One registry of dataset facts: classes, geometry, augmentation, splits and how to load them.

Every other module (CLI, training, Snakemake rules, reports) reads dataset facts from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor


@dataclass(frozen=True)
class Splits:
    """A dataset in memory: float images in [0, 1], [N, C, H, W], and long labels [N]."""

    train_images: Tensor
    train_labels: Tensor
    eval_images: Tensor
    eval_labels: Tensor
    eval_split: str  # what the reported accuracy is measured on, recorded in metrics.json
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one dataset."""

    name: str
    title: str  # as printed in the paper's tables
    num_classes: int
    image_size: int  # default input side
    patch_size: int  # default ViT patch (method spec §4)
    crop_padding: int  # training RandomCrop padding in pixels (0: no crop)
    flip: bool  # training horizontal flip
    load: Callable[[int, str], Splits]  # (image_size, root) -> Splits


def _load_digits(image_size: int, root: str) -> Splits:
    from relvit.data.digits import load_digits_splits

    return load_digits_splits(image_size)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="digits",
            title="Digits (sklearn)",
            num_classes=10,
            image_size=16,
            patch_size=4,
            crop_padding=2,
            flip=False,  # digits are not mirror-symmetric
            load=_load_digits,
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
