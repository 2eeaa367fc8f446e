"""Datasets in training form: in-memory tensors or image files, and batches of both.

Array datasets (digits, CIFAR, SVHN) live in memory as tensors and are augmented per batch on the
training device (`relvit.data.augment`). Image-file datasets are decoded by DataLoader workers,
which also apply the per-sample transforms that need the full-resolution image
(RandomResizedCrop, or the eval-time Resize + CenterCrop); images travel as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from relvit.config import DataConfig
from relvit.data import formats
from relvit.data.formats import DatasetLayoutError, decode_image
from relvit.data.registry import DatasetSpec
from relvit.data.resize import resized_copy
from relvit.interrupts import ignore_interrupt


@dataclass(frozen=True)
class TensorSplit:
    """Images [N, C, H, W] (uint8, or float in [0, 1]) and long labels [N], in memory."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class FileSplit:
    """Image files and long labels [N], decoded on demand."""

    paths: list[Path]
    labels: Tensor


Split = TensorSplit | FileSplit


@dataclass(frozen=True)
class Splits:
    """A dataset ready to train: the training split and the evaluation splits, in report order."""

    train: Split
    evals: dict[str, Split]  # the first one is the reported split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


READERS = {
    "cifar10": lambda root, split: formats.read_cifar(root, 10, split),
    "cifar100": lambda root, split: formats.read_cifar(root, 100, split),
    "svhn": formats.read_svhn,
    "flowers102": formats.read_flowers102,
    "tiny_imagenet": formats.read_tiny_imagenet,
    "imagenet100": formats.read_imagenet100,
    "imagenet": formats.read_imagenet1k,
    "imagefolder": formats.read_imagefolder,
}


def dataset_folder(spec: DatasetSpec, data: DataConfig) -> Path:
    """Where the dataset's files are: `data.folder`, else `<data.root>/<spec.folder>`."""
    return Path(data.folder) if data.folder else Path(data.root) / spec.folder


def _to_split(raw: formats.ArraySplit | formats.FileSplit) -> Split:
    labels = torch.from_numpy(np.asarray(raw.labels, dtype=np.int64))
    if isinstance(raw, formats.ArraySplit):
        images = torch.from_numpy(np.ascontiguousarray(raw.images)).permute(0, 3, 1, 2)
        return TensorSplit(images.contiguous(), labels)
    return FileSplit(list(raw.paths), labels)


def _check(spec: DatasetSpec, name: str, split: Split, classes: list[str], folder: Path) -> None:
    expected = spec.num_classes or len(classes)
    if len(classes) != expected:
        raise DatasetLayoutError(
            f"{folder}: {spec.name} should have {expected} classes, found {len(classes)}")
    labels = split.labels
    if len(labels) == 0:
        raise DatasetLayoutError(f"{folder}: the {name} split of {spec.name} is empty")
    if labels.min() < 0 or labels.max() >= expected:
        raise DatasetLayoutError(
            f"{folder}: {spec.name} {name} labels span [{labels.min()}, {labels.max()}], "
            f"expected 0..{expected - 1}")


def load_splits(spec: DatasetSpec, data: DataConfig, image_size: int) -> Splits:
    """Read the training split and every evaluation split of `spec`, checked."""
    if spec.name == "digits":
        from relvit.data.digits import load_digits_splits

        return load_digits_splits(image_size)
    folder = dataset_folder(spec, data)
    resized_copy(folder)  # a resized copy must be complete (ResizeError otherwise)
    if spec.task == "detection":
        return _detection_images(spec, folder)
    read = READERS[spec.name]
    train_raw = read(folder, spec.train_split)
    classes = list(train_raw.classes)
    train = _to_split(train_raw)
    _check(spec, spec.train_split, train, classes, folder)
    evals = {}
    for name in (spec.eval_split, *spec.extra_eval_splits):
        evals[name] = _to_split(read(folder, name))
        _check(spec, name, evals[name], classes, folder)
    mean, std = spec.stats if spec.stats else image_statistics(train)
    return Splits(train, evals, classes, tuple(mean), tuple(std))


def _detection_images(spec: DatasetSpec, folder: Path) -> Splits:
    """The images of a detection dataset, for SSL pretraining (labels unused: all 0)."""
    from relvit.detection.data import read_detection

    def images(ds) -> FileSplit:
        paths = [Path(ds.image_root) / image["file_name"] for image in ds.images]
        return FileSplit(paths, torch.zeros(len(paths), dtype=torch.long))

    train = read_detection(spec, folder, spec.train_split)
    evals = {spec.eval_split: images(read_detection(spec, folder, spec.eval_split))}
    return Splits(images(train), evals, [c["name"] for c in train.categories], *spec.stats)


def image_statistics(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(split, TensorSplit):
        raise ValueError("dataset statistics are only computed for in-memory datasets")
    images = split.images.float()
    if split.images.dtype == torch.uint8:
        images = images / 255
    return tuple(images.mean(dim=(0, 2, 3)).tolist()), tuple(images.std(dim=(0, 2, 3)).tolist())


def file_transform(spec: DatasetSpec, image_size: int, train: bool) -> T.Compose:
    """Per-sample transform run by the loader workers; returns uint8 [3, side, side]."""
    side = image_size
    if train and spec.train_crop == "resized":
        steps = [T.RandomResizedCrop(side)] + ([T.RandomHorizontalFlip()] if spec.flip else [])
    elif not train and spec.eval_center_crop:
        steps = [T.Resize(round(side * 256 / 224)), T.CenterCrop(side)]
    else:  # pad-crop datasets are augmented per batch, after this
        steps = [T.Resize((side, side))]
    return T.Compose([*steps, T.PILToTensor()])


class _Files(Dataset):
    """A file split's (uint8 image after `transform`, label) by sample index."""

    def __init__(self, split: FileSplit, transform: T.Compose):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(decode_image(self.split.paths[index])), self.split.labels[index]


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index`'s random draws in the stream seeded `seed`. torch's CPU generator
    keeps a seed's low 32 bits, (index - 5 * seed) mod 2**32: distinct for the samples of one
    stream (index < 2**32). Another stream's seeds are the same ones shifted (the next epoch's by
    -5 * 7919): image i + 39,595 of epoch e + 1 draws what image i of epoch e drew, another image
    than itself, so every image's augmentation still changes from epoch to epoch."""
    return (seed * 4_294_967_291 + index) % 2**63


class SeededSamples(Dataset):
    """`dataset` keyed by (seed, index): item `index` is made with torch's global CPU generator
    seeded by `sample_seed(seed, index)`, and the generator's state restored after.

    torchvision's random transforms draw from that generator. Seeded per sample, an image's
    augmentation depends on the seed and its index only: not on the number of DataLoader workers,
    which worker loads it, the batch it falls in or the number of processes, and with workers = 0
    the training process's own stream (dropout, drop-path) is left as it was. The seed travels
    with the index, so that workers started once serve every epoch (`EpochLoader`).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        generator = torch.default_generator  # torch.manual_seed would also seed every GPU: 60 us
        state = generator.get_state()
        generator.manual_seed(sample_seed(seed, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class _BatchPlan(Sampler[list[Any]]):
    """The batches of sample keys a loader gives next: set before each pass over it."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochLoader:
    """A DataLoader over `dataset` whose worker processes serve every pass, each pass the
    batches of indices it is given (`persistent_workers`).

    Workers started anew for every epoch and every evaluation fork the training process each
    time: about 0.15 s per worker for a process of 4.8 GiB on the development CPU, twice an
    epoch (docs/performance.md). With `seeded`, a pass takes a seed and each sample's random
    transform is seeded by (seed, its index): `SeededSamples`. `persistent=False` stops the
    workers after each pass (a loader used once). A worker's `DatasetLayoutError` is raised
    again with its own message (torch's wrapping adds the worker's traceback to it).
    """

    def __init__(self, dataset: Dataset, workers: int, pin_memory: bool = False,
                 seeded: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
                 persistent: bool = True):
        self.seeded, self._plan, self._passes = seeded, _BatchPlan(), 0
        # the workers' base seed comes from a generator of its own: none of the run's streams
        # is drawn from (the seeded transforms do not use it)
        self.loader = DataLoader(SeededSamples(dataset) if seeded else dataset,
                                 batch_sampler=self._plan, num_workers=workers,
                                 persistent_workers=persistent and workers > 0,
                                 pin_memory=pin_memory, collate_fn=collate_fn,
                                 worker_init_fn=ignore_interrupt, generator=torch.Generator())

    def batches(self, indices: list[list[int]], seed: int | None = None) -> Iterator[Any]:
        """The loaded batches of `indices` (a list per batch), in order (`seed`: that of a
        seeded loader). One pass at a time: a pass started while another is unfinished ends
        that one (its next batch raises), as the two share the workers."""
        if (seed is not None) != self.seeded:
            raise ValueError(f"a {'seeded' if self.seeded else 'plain'} loader given seed {seed}")
        keys: list[list[Any]] = indices
        if seed is not None:
            keys = [[(seed, index) for index in batch] for batch in indices]
        self._passes += 1
        this_pass = self._passes
        self._plan.batches = keys
        try:
            loaded = iter(self.loader)
            while True:
                if self._passes != this_pass:
                    raise RuntimeError("this pass of the loader was ended (by a later one, or "
                                       "by closing the loader)")
                try:
                    batch = next(loaded)
                except StopIteration:
                    return
                yield batch
        except DatasetLayoutError as err:  # from a worker: its message carries its traceback
            marker = f"{DatasetLayoutError.__name__}: "
            lines = [line for line in str(err).splitlines() if marker in line]
            if not lines:
                raise
            raise DatasetLayoutError(lines[-1].split(marker, 1)[1]) from err

    def close(self) -> None:
        """Stop the workers now (else when the loader is garbage-collected or the process
        ends), ending an unfinished pass; a later pass starts new ones."""
        self._passes += 1
        iterator, self.loader._iterator = self.loader._iterator, None
        if iterator is not None:
            try:
                iterator._shutdown_workers()
            except RuntimeError as err:  # a worker killed: a process group's SIGTERM, say
                if not is_worker_death(err):
                    raise


def is_worker_death(err: BaseException) -> bool:
    """Whether `err` is torch's report of a DataLoader worker killed or gone: raised by its
    SIGCHLD handler wherever the main thread is, or when the workers are stopped."""
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker")


# An in-memory split within this share of a GPU's memory is copied there once and batched there:
# no host-to-device copy per batch (CIFAR-10's 50k training images are 150 MB as uint8).
DEVICE_SPLIT_SHARE = 0.25


def on_device(split: Split, device: torch.device) -> Split:
    """`split` copied to a CUDA `device` when it is a `TensorSplit` within `DEVICE_SPLIT_SHARE` of
    the device's memory; otherwise `split` itself (batches are then copied one at a time)."""
    if not isinstance(split, TensorSplit) or device.type != "cuda":
        return split
    size = split.images.nbytes + split.labels.nbytes
    if size > DEVICE_SPLIT_SHARE * torch.cuda.get_device_properties(device).total_memory:
        return split
    return TensorSplit(split.images.to(device), split.labels.to(device))


def file_loader(split: FileSplit, transform: T.Compose | None, workers: int = 0,
                pin_memory: bool = False, seeded: bool = False,
                persistent: bool = True) -> EpochLoader:
    """An `EpochLoader` of a file split's (uint8 image after `transform`, label)."""
    return EpochLoader(_Files(split, transform), workers, pin_memory, seeded,
                       persistent=persistent)


def index_batches(order: Tensor, batch_size: int | list[int]) -> list[list[int]]:
    """`order` cut into batches of `batch_size` (one size, or each batch's in turn); none for an
    empty `order` (Tensor.split would give one empty batch)."""
    return [idx.tolist() for idx in order.split(batch_size)] if len(order) else []


def tensor_batches(split: TensorSplit, order: Tensor, batch_size: int | list[int],
                   pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of an in-memory split's (images, labels) in `order` (see `batches`)."""
    if not len(order):  # Tensor.split gives one empty chunk
        return
    for idx in order.to(split.images.device).split(batch_size):
        images, labels = split.images[idx], split.labels[idx]
        if pin_memory and not images.is_cuda:  # so that the copy to the GPU is asynchronous
            images, labels = images.pin_memory(), labels.pin_memory()
        yield images, labels


def batches(split: Split, order: Tensor, batch_size: int | list[int],
            transform: T.Compose | None, workers: int = 0, pin_memory: bool = False,
            seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of (images, labels) in `order`; a file split goes through DataLoader workers
    started for this pass (a run keeps its `file_loader`s instead).

    `batch_size` is one size, or the size of each batch in turn (summing to `len(order)`). With
    `seed`, the random transform of a file sample is seeded by (`seed`, its index): see
    `SeededSamples`. No batch for an empty `order` (a process's share of a split smaller
    than the process count).
    """
    if isinstance(split, TensorSplit):
        yield from tensor_batches(split, order, batch_size, pin_memory)
        return
    loader = file_loader(split, transform, workers, pin_memory, seed is not None,
                         persistent=False)
    yield from loader.batches(index_batches(order, batch_size), seed)


def to_float_images(images: Tensor, image_size: int) -> Tensor:
    """uint8 or float images -> float in [0, 1] at `image_size` (bilinear when resizing)."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               antialias=True, align_corners=False).clamp_(0, 1)
    return images
