"""A COCO-format detection dataset in the form torchvision's R-CNNs take, and its evaluation truth.

One function (`_image_objects`) decides which annotations of an image are objects and converts
their boxes; the training targets (`DetectionImages`) and the evaluation ground truth
(`ground_truth`) both come from it, so evaluation scores exactly what training was taught
(method spec Q27): the same categories, the same xywh -> xyxy conversion (clamped to the image,
degenerate boxes dropped, as torchvision's reference `ConvertCocoPolysToMask`), and crowd
regions left out of the targets but kept in the ground truth with iscrowd=1, where COCOeval
treats them as ignore regions.

Training augmentation uses torchvision.transforms.v2, which moves boxes and masks together:
RandomHorizontalFlip(0.5), preceded by the SSD RandomIoUCrop when `iou_crop` (the original's
"ssdlite" preset, spec §6.4 / Q22: min scale 0.3, aspect 0.5-2, IoU options
{0, .1, .3, .5, .7, .9, 1}, 40 trials) and followed by SanitizeBoundingBoxes. Random draws come
from torch's global CPU generator, which the training loader seeds per image
(`relvit.data.loading.SeededSamples`).
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from relvit.data.formats import DatasetLayoutError, decode_image

if TYPE_CHECKING:
    from relvit.detection.coco import CocoDataset


def _objects_by_image(dataset: CocoDataset) -> dict[int, list[dict]]:
    """Annotations grouped by image id, in dataset order; unknown image/category ids are errors."""
    image_ids = {image["id"] for image in dataset.images}
    category_ids = {category["id"] for category in dataset.categories}
    grouped: dict[int, list[dict]] = defaultdict(list)
    for ann in dataset.annotations:
        if ann["image_id"] not in image_ids:
            raise ValueError(f"annotation {ann.get('id')}: image_id {ann['image_id']} is not "
                             f"an image of the dataset")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"annotation {ann.get('id')}: category_id {ann['category_id']} is "
                             f"not a category of the dataset")
        grouped[ann["image_id"]].append(ann)
    return grouped


def _has_masks(dataset: CocoDataset) -> bool:
    """Every non-crowd annotation has a segmentation, and there is one (`CocoDataset.has_masks`)."""
    plain = [a for a in dataset.annotations if not a.get("iscrowd", 0)]
    return bool(plain) and all("segmentation" in a for a in plain)


def _image_objects(image: dict, annotations: list[dict]) -> list[tuple[dict, list[float]]]:
    """(annotation, clamped xyxy box) for every annotation with a non-degenerate box.

    xyxy = (x, y, x + w, y + h), clamped to [0, width] × [0, height]; kept iff x2 > x1 and
    y2 > y1. Crowd annotations are included (the caller decides); the box is in float64.
    """
    width, height = float(image["width"]), float(image["height"])
    kept = []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, x2 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
        y1, y2 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
        if x2 > x1 and y2 > y1:
            kept.append((ann, [x1, y1, x2, y2]))
    return kept


def _to_rle(ann: dict, height: int, width: int) -> dict:
    """The annotation's segmentation (RLE, uncompressed RLE or polygons) as a compressed RLE."""
    seg = ann.get("segmentation")
    if seg is None:
        raise ValueError(f"annotation {ann.get('id')} has no segmentation, but the dataset has "
                         f"masks (every annotation needs one)")
    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    if [int(s) for s in rle["size"]] != [height, width]:
        raise ValueError(f"annotation {ann.get('id')}: mask size {list(rle['size'])} is not the "
                         f"image size [{height}, {width}]")
    return rle


def _decode_masks(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """The annotations' masks as uint8 [N, H, W] (one pycocotools call per image)."""
    if not annotations:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [_to_rle(ann, height, width) for ann in annotations]
    with warnings.catch_warnings():  # pycocotools' own numpy-2 copy= deprecation, per call
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        masks = mask_utils.decode(rles)  # [H, W, N], Fortran order
    return np.ascontiguousarray(masks.transpose(2, 0, 1))


def _labels_and_crowd(inputs: Any) -> tuple[Tensor, Tensor]:
    """SanitizeBoundingBoxes' labels_getter: the per-box tensors to filter with the boxes."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def training_transform(flip: bool = True, iou_crop: bool = False) -> v2.Transform | None:
    """The training augmentation (None when there is none); applied to (image, target)."""
    steps: list[v2.Transform] = []
    if iou_crop:
        steps.append(v2.RandomIoUCrop())
    if flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if iou_crop:
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd))
    return v2.Compose(steps) if steps else None


class DetectionImages(Dataset):
    """(image uint8 [3, H, W] as a torchvision.tv_tensors.Image, target dict) per image.

    target = {"boxes": BoundingBoxes XYXY float32 [N, 4], "labels": int64 [N] (the category ids),
    "image_id": int, "masks": Mask uint8 [N, H, W] when the dataset has masks, "iscrowd": int64
    [N] (all 0)}. Crowd annotations and degenerate boxes are excluded from the targets (crowd
    regions stay in `ground_truth` for evaluation). With train=True, images left without any
    object are skipped (as torchvision's reference does for training) and the augmentation of
    `training_transform(flip, iou_crop)` is applied; with train=False every image is kept, in
    dataset order, unaugmented. A corrupt image raises DatasetLayoutError naming the file.
    """

    def __init__(self, dataset: CocoDataset, train: bool, flip: bool = True,
                 iou_crop: bool = False):
        self.dataset = dataset
        self.train = train
        self.image_root = Path(dataset.image_root)
        self.has_masks = _has_masks(dataset)
        grouped = _objects_by_image(dataset)
        self.images: list[dict] = []
        self.objects: list[list[tuple[dict, list[float]]]] = []
        for image in dataset.images:
            objects = [(ann, box) for ann, box in _image_objects(image, grouped[image["id"]])
                       if not ann.get("iscrowd", 0)]
            if train and not objects:
                continue
            self.images.append(image)
            self.objects.append(objects)
        self.transform = training_transform(flip, iou_crop) if train else None
        # RandomIoUCrop needs a box to aim at; an image without any is only flipped
        self.transform_no_boxes = training_transform(flip, False) if train else None

    def __len__(self) -> int:
        return len(self.images)

    def _load_image(self, image: dict) -> tv_tensors.Image:
        path = self.image_root / image["file_name"]
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: image file missing")
        picture = decode_image(path)
        if picture.size != (int(image["width"]), int(image["height"])):
            raise DatasetLayoutError(
                f"{path}: image is {picture.size[0]}x{picture.size[1]} but the annotation file "
                f"says {image['width']}x{image['height']}")
        return tv_tensors.Image(TF.pil_to_tensor(picture))

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image = self.images[index]
        objects = self.objects[index]
        height, width = int(image["height"]), int(image["width"])
        picture = self._load_image(image)
        boxes = torch.tensor([box for _, box in objects], dtype=torch.float64).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes.to(torch.float32), format="XYXY",
                                              canvas_size=(height, width)),
            "labels": torch.tensor([ann["category_id"] for ann, _ in objects], dtype=torch.int64),
            "image_id": int(image["id"]),
            "iscrowd": torch.zeros(len(objects), dtype=torch.int64),
        }
        if self.has_masks:
            masks = _decode_masks([ann for ann, _ in objects], height, width)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        transform = self.transform if objects else self.transform_no_boxes
        if transform is not None:
            picture, target = transform(picture, target)
        return picture, target


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """A batch as torchvision's detection models take it: (list of images, list of targets)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def ground_truth(dataset: CocoDataset) -> dict:
    """The COCO dict evaluation uses: exactly the training-target filter applied (Q27).

    Every image of the dataset (the whole split), its categories unchanged, and per image the
    objects of `_image_objects`: boxes converted and clamped as for training (written back as
    [x1, y1, x2 - x1, y2 - y1]), degenerate ones dropped, crowd ones kept with iscrowd=1: COCOeval
    ignores detections on them and does not count them as missed. VOC's `difficult` ones (trained
    on as ordinary objects, as the original) are kept as iscrowd=1 and "difficult": 1, which
    `coco_evaluate` measures by ordinary IoU, as VOC's own evaluation does. "area"
    (COCOeval's small/medium/large) is the annotation's own area, else its mask area, else the
    clamped box area; "id" is the annotation's own.
    """
    grouped = _objects_by_image(dataset)
    annotations = []
    for image in dataset.images:
        height, width = int(image["height"]), int(image["width"])
        for ann, (x1, y1, x2, y2) in _image_objects(image, grouped[image["id"]]):
            entry = {"id": ann["id"], "image_id": image["id"], "category_id": ann["category_id"],
                     "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "iscrowd": 1 if ann.get("iscrowd", 0) or ann.get("difficult", 0) else 0}
            if ann.get("difficult", 0) and not ann.get("iscrowd", 0):
                entry["difficult"] = 1
            if "segmentation" in ann:
                entry["segmentation"] = copy.deepcopy(ann["segmentation"])
            if "area" in ann:
                entry["area"] = float(ann["area"])
            elif "segmentation" in ann:
                entry["area"] = float(mask_utils.area(_to_rle(ann, height, width)))
            else:
                entry["area"] = (x2 - x1) * (y2 - y1)
            annotations.append(entry)
    images = [{"id": im["id"], "file_name": im["file_name"], "width": im["width"],
               "height": im["height"]} for im in dataset.images]
    categories = [dict(category) for category in dataset.categories]
    return {"images": images, "annotations": annotations, "categories": categories}
