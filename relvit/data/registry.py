"""One registry of dataset facts: classes, geometry, augmentation, splits, sources and layout.

Every other module (CLI, training, Snakemake rules, reports) reads dataset facts from here. The
order of DATASETS is the order of the paper's Table 1 (the embedded `digits` first).
Geometry and augmentation follow the method spec §4-5; normalisation constants are the original
code's (`datasets/constants.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relvit.data.download import Resource

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one dataset."""

    name: str
    title: str  # as printed in the paper's Table 1
    num_classes: int | None  # None: as many as the data has (imagefolder)
    image_size: int  # default input side
    patch_size: int  # default ViT patch (method spec §4)
    train_crop: Literal["pad", "resized"]  # RandomCrop(side, padding) | RandomResizedCrop(side)
    crop_padding: int  # for train_crop "pad"
    flip: bool  # training horizontal flip
    eval_center_crop: bool  # eval: Resize(side * 8 / 7) + CenterCrop(side), else Resize(side)
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std); None: from train
    train_split: str
    eval_split: str  # what the reported accuracy is measured on (method spec §5.3)
    extra_eval_splits: tuple[str, ...] = ()  # also evaluated and recorded (Flowers test, Q18)
    folder: str = ""  # under data.root
    resources: tuple[Resource, ...] = ()  # downloadable files; none: embedded or manual
    manual: bool = False  # needs an account: the user puts the files in place
    task: Literal["classification", "detection"] = "classification"
    subfolders: tuple[tuple[str, str], ...] = ()  # (archive, subfolder it is extracted into)

    @property
    def embedded(self) -> bool:
        """Shipped with a dependency or generated here (the smoke and CI tiers' stand-ins)."""
        return not self.resources and not self.manual

    @property
    def resizable(self) -> bool:
        """Image files, each decoded and cropped by RandomResizedCrop in a loader worker: what a
        pre-resized copy speeds up (workflow key `data.resized`, `relvit resize-images`)."""
        return self.task == "classification" and self.train_crop == "resized"


_CS = "https://www.cs.toronto.edu/~kriz/"
_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"
_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/"  # torchvision's mirror (as of 0.29)
_COCO = "http://images.cocodataset.org/"

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        name="digits", title="Digits (sklearn)", num_classes=10, image_size=16, patch_size=4,
        train_crop="pad", crop_padding=2, flip=False,  # digits are not mirror-symmetric
        eval_center_crop=False, stats=None, train_split="train", eval_split="test",
    ),
    DatasetSpec(
        name="cifar10", title="CIFAR-10", num_classes=10, image_size=32, patch_size=4,
        train_crop="pad", crop_padding=4, flip=True, eval_center_crop=False,
        stats=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        train_split="train", eval_split="test", folder="cifar10",
        resources=(Resource(_CS + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                            md5="c58f30108f718f92721af3b95e74349a", extract=True),),
    ),
    DatasetSpec(
        name="svhn", title="SVHN", num_classes=10, image_size=32, patch_size=4,
        train_crop="pad", crop_padding=4, flip=True, eval_center_crop=False,  # Q1: as CIFAR
        stats=((0.4378, 0.4439, 0.4729), (0.1981, 0.2011, 0.1970)),
        train_split="train", eval_split="test", folder="svhn",
        resources=(
            Resource(_SVHN + "train_32x32.mat", "train_32x32.mat",
                     md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
            Resource(_SVHN + "test_32x32.mat", "test_32x32.mat",
                     md5="eb5a983be6a315427106f1b164d9cef3"),
        ),
    ),
    DatasetSpec(
        name="cifar100", title="CIFAR-100", num_classes=100, image_size=32, patch_size=4,
        train_crop="pad", crop_padding=4, flip=True, eval_center_crop=False,
        stats=((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2761)),
        train_split="train", eval_split="test", folder="cifar100",
        resources=(Resource(_CS + "cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                            md5="eb9058c3a382ffc7106e4002c42a8d85", extract=True),),
    ),
    DatasetSpec(
        name="flowers102", title="Flower-102", num_classes=102, image_size=224, patch_size=32,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        # Q2: [R] has no constants at 224 px; its own statistics of Flowers at 112 px
        stats=((0.5115, 0.4160, 0.3410), (0.2951, 0.2488, 0.2882)),
        train_split="train", eval_split="val", extra_eval_splits=("test",), folder="flowers102",
        resources=(
            Resource(_FLOWERS + "102flowers.tgz", "102flowers.tgz",
                     md5="52808999861908f626f3c1f4e79d11fa", extract=True),
            Resource(_FLOWERS + "imagelabels.mat", "imagelabels.mat",
                     md5="e0620be6f572b9609742df49c70aed4d"),
            Resource(_FLOWERS + "setid.mat", "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c"),
        ),
    ),
    DatasetSpec(
        name="tiny_imagenet", title="TinyImagenet", num_classes=200, image_size=64, patch_size=8,
        train_crop="pad", crop_padding=4, flip=True, eval_center_crop=False,
        stats=((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
        train_split="train", eval_split="val", folder="tiny_imagenet",
        resources=(Resource("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                            "tiny-imagenet-200.zip", md5="90528d7ca1a48142e341f4ef8d21d0de",
                            extract=True),),
    ),
    DatasetSpec(
        name="imagenet100", title="Imagenet100", num_classes=100, image_size=224, patch_size=32,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=((0.4595, 0.4520, 0.3900), (0.2547, 0.2385, 0.2548)),
        train_split="train", eval_split="val", folder="imagenet100", manual=True,
    ),
    DatasetSpec(
        name="imagenet", title="Imagenet", num_classes=1000, image_size=224, patch_size=32,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="train", eval_split="val", folder="imagenet",
        manual=True,
    ),
    # Detection (Tables 2-3, method spec §6): images for SSL pretraining and the detectors.
    # Geometry of the follow-up: ViT-S/16 at 224 px; its SSL pretraining crops like ImageNet.
    DatasetSpec(
        name="digit_scenes", title="Digit scenes", num_classes=10, image_size=64, patch_size=8,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=False,
        stats=IMAGENET_STATS, train_split="train", eval_split="val", folder="digit_scenes",
        task="detection",
    ),
    DatasetSpec(
        name="voc2007", title="VOC-2007", num_classes=20, image_size=224, patch_size=16,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="trainval", eval_split="test", folder="voc2007",
        task="detection",
        resources=(
            Resource(_VOC + "VOCtrainval_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar",
                     md5="c52e279531787c972589f7e41ab4ae64", extract=True),
            Resource(_VOC + "VOCtest_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar",
                     md5="b6e924de25625d8de591ea690078ad9f", extract=True),
        ),
        # both archives hold VOCdevkit/VOC2007/: one folder per split keeps them apart
        subfolders=(("VOCtrainval_06-Nov-2007.tar", "trainval"),
                    ("VOCtest_06-Nov-2007.tar", "test")),
    ),
    DatasetSpec(
        name="coco2017", title="COCO mini-val", num_classes=80, image_size=224, patch_size=16,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="train", eval_split="val", folder="coco2017",
        task="detection",
        resources=(
            Resource(_COCO + "zips/train2017.zip", "train2017.zip",
                     md5="cced6f7f71b7629ddf16f17bbcfab6b2", extract=True),
            Resource(_COCO + "zips/val2017.zip", "val2017.zip",
                     md5="442b8da7639aecaf257c1dceb8ba8c80", extract=True),
            Resource(_COCO + "annotations/annotations_trainval2017.zip",
                     "annotations_trainval2017.zip", md5="f4bbac642086de4f52a3fdda2de5fa2c",
                     extract=True),
        ),
    ),
    DatasetSpec(
        name="kitti", title="KITTI", num_classes=8, image_size=224, patch_size=16,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="train", eval_split="val", folder="kitti",
        task="detection", manual=True,  # the KITTI terms ask for a registration
    ),
    DatasetSpec(
        name="svhn_detection", title="SVHN", num_classes=10, image_size=224, patch_size=16,
        train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="train", eval_split="test", folder="svhn_detection",
        task="detection",
        resources=(
            Resource(_SVHN + "train.tar.gz", "train.tar.gz", sha256="4b17bb33b6cd8f963493168f8014"
                     "3da956f28ec406cc12f8e5745a9f91a51898", extract=True),
            Resource(_SVHN + "test.tar.gz", "test.tar.gz", sha256="57ac9ceb530e4aa85b55d991be8f"
                     "c49c695b3d71c6f6a88afea86549efde7fb5", extract=True),
        ),
    ),
    DatasetSpec(
        name="imagefolder", title="Image folder", num_classes=None, image_size=224,
        patch_size=32, train_crop="resized", crop_padding=0, flip=True, eval_center_crop=True,
        stats=IMAGENET_STATS, train_split="train", eval_split="val", folder="imagefolder",
        manual=True,
    ),
)}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
