"""COCO-style detection evaluation, done the way method spec Q27 asks.

The original evaluated at test time only the last batch (no `synchronize_between_processes`) and
against an unfiltered ground truth. Here `coco_evaluate` scores the predictions of the whole split
with pycocotools' `COCOeval` against a ground-truth dict that the caller builds from exactly the
targets used for training (`relvit.detection.loader.ground_truth`). pycocotools' objects are built
in memory, its progress prints are swallowed, and its numbers are returned unchanged (in percent).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")

# name -> index into COCOeval.stats (the standard 12 numbers of `summarize`)
STAT_NAMES: dict[str, int] = {
    "mAP": 0,  # AP @ IoU 0.50:0.95, all areas, 100 detections
    "mAP50": 1,
    "mAP75": 2,
    "mAP_small": 3,
    "mAP_medium": 4,
    "mAP_large": 5,
    "AR100": 8,  # AR @ IoU 0.50:0.95, all areas, 100 detections
}

MASK_THRESHOLD = 0.5  # mask probabilities > 0.5 are foreground (torchvision references' rule)


@contextlib.contextmanager
def _quiet():
    """Swallow pycocotools' progress prints (they go to stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _ground_truth_api(ground_truth: dict) -> COCO:
    """A pycocotools COCO object over a private copy of the dict (COCOeval mutates annotations)."""
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise ValueError(f"ground truth has no {key!r} list (need a COCO json dict)")
    dataset = copy.deepcopy(ground_truth)
    annotations = dataset["annotations"]
    for ann in annotations:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    ids = [ann.get("id") for ann in annotations]
    # COCOeval marks a match by storing the matched ground truth's id, so an id of 0 would read as
    # "unmatched"; ids are otherwise irrelevant to the numbers: renumber only if needed.
    if any(not isinstance(i, (int, np.integer)) or i <= 0 for i in ids) or len(set(ids)) != len(ids):
        for number, ann in enumerate(annotations, start=1):
            ann["id"] = number
    api = COCO()
    api.dataset = dataset
    with _quiet():
        api.createIndex()
    return api


class _Evaluator(COCOeval):
    """COCOeval for ground truth that may hold VOC's `difficult` objects (iscrowd 1 and
    "difficult": 1). They are ignore regions as crowd ones are: any number of detections may fall
    on one, none counts, and a missed one is not counted either. But a detection falls on one by
    its ordinary IoU, as VOC's evaluation decides. pycocotools' crowd overlap (the intersection
    over the detection's own area) would also ignore a small false positive inside the object."""

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        difficult = [g for g in self._gts[imgId, catId] if g.get("difficult")]
        for g in difficult:  # pycocotools reads the IoU rule from iscrowd ...
            g["iscrowd"] = 0
        try:
            return super().computeIoU(imgId, catId)
        finally:  # ... and the matching's (several detections on one) from it too
            for g in difficult:
                g["iscrowd"] = 1


def _results_api(gt: COCO, predictions: list[dict], iou_type: str) -> COCO:
    """The results object for one IoU type; also for no predictions at all (loadRes fails there)."""
    if iou_type == "segm":
        missing = [i for i, p in enumerate(predictions) if "segmentation" not in p]
        if missing:
            raise ValueError(f"segm evaluation needs a 'segmentation' in every prediction; "
                             f"prediction {missing[0]} has none")
        # without 'bbox' loadRes takes each detection's area from its mask, as COCO defines
        # small/medium/large for masks (detectron2 drops the box for the same reason)
        results = [{k: v for k, v in p.items() if k != "bbox"} for p in predictions]
    else:
        results = [{k: v for k, v in p.items() if k != "segmentation"} for p in predictions]
    if results:
        with _quiet():
            return gt.loadRes(results)
    empty = COCO()
    empty.dataset = {"images": list(gt.dataset["images"]),
                     "categories": copy.deepcopy(gt.dataset["categories"]), "annotations": []}
    with _quiet():
        empty.createIndex()
    return empty


def _check_predictions(gt: COCO, predictions: list[dict]) -> None:
    image_ids = set(gt.getImgIds())
    category_ids = set(gt.getCatIds())
    for i, p in enumerate(predictions):
        if p["image_id"] not in image_ids:
            raise ValueError(f"prediction {i}: image_id {p['image_id']} is not in the ground truth")
        if p["category_id"] not in category_ids:
            raise ValueError(f"prediction {i}: category_id {p['category_id']} is not a ground-truth "
                             f"category ({sorted(category_ids)})")


def coco_evaluate(ground_truth: dict, predictions: list[dict],
                  iou_types: tuple[str, ...] = ("bbox",)) -> dict[str, dict[str, float | None]]:
    """COCOeval of `predictions` against `ground_truth` over all its images and categories.

    ground_truth: a COCO json dict (images, annotations, categories; crowd objects with
    iscrowd=1 are ignore regions, VOC's difficult ones too with "difficult": 1, by ordinary IoU:
    `_Evaluator`). predictions: COCO results [{"image_id", "category_id",
    "bbox": [x, y, w, h], "score", optional "segmentation": RLE}] (see `predictions_to_coco`).
    Returns {iou_type: {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR100"}} in percent (COCOeval.stats[0..5, 8] × 100); a number COCOeval reports as -1 (no
    ground truth in that area range) is None. No predictions gives 0.0 wherever there is ground
    truth. Predictions for images or categories absent from the ground truth are an error.
    """
    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}")
    gt = _ground_truth_api(ground_truth)
    _check_predictions(gt, predictions)
    if "segm" in iou_types:
        unmasked = [a["id"] for a in gt.dataset["annotations"] if "segmentation" not in a]
        if unmasked:
            raise ValueError(f"segm evaluation needs a 'segmentation' in every ground-truth "
                             f"annotation; annotation {unmasked[0]} has none")
    metrics: dict[str, dict[str, float | None]] = {}
    for iou_type in iou_types:
        results = _results_api(gt, predictions, iou_type)
        evaluator = _Evaluator(gt, results, iou_type)
        with _quiet():
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats
        metrics[iou_type] = {name: (None if stats[i] < 0 else float(stats[i]) * 100.0)
                             for name, i in STAT_NAMES.items()}
    return metrics


def _encode_masks(masks: torch.Tensor) -> list[dict]:
    """Binary masks [N, H, W] (bool) -> COCO RLEs with str counts (json-serialisable)."""
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).cpu().numpy().transpose(1, 2, 0))
    rles = mask_utils.encode(array)
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in rles]


def predictions_to_coco(outputs: list[dict], image_ids: list[int],
                        scale: Sequence[tuple[float, float]] | None = None) -> list[dict]:
    """torchvision detector outputs -> COCO results, one entry per detection.

    outputs[i] belongs to image_ids[i]: {"boxes" xyxy [N, 4], "labels" [N] (= category ids),
    "scores" [N], optional "masks" [N, 1, H, W] probabilities}. Boxes become [x, y, w, h];
    masks are thresholded at > 0.5 and RLE-encoded. scale[i] = (sx, sy), when given, multiplies
    image i's x and y coordinates (boxes; masks are resized bilinearly to round(H·sy) ×
    round(W·sx) before thresholding), e.g. to map predictions on a resized image back to the
    original; torchvision's R-CNNs already map back to the input size, so usually None.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    if scale is not None and len(scale) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(scale)} scale factors")
    results: list[dict] = []
    for i, (output, image_id) in enumerate(zip(outputs, image_ids)):
        boxes = output["boxes"].detach().to(torch.float64).cpu().reshape(-1, 4)
        labels = output["labels"].detach().cpu().reshape(-1).tolist()
        scores = output["scores"].detach().to(torch.float64).cpu().reshape(-1).tolist()
        if not len(labels) == len(scores) == boxes.shape[0]:
            raise ValueError(f"output {i}: {boxes.shape[0]} boxes, {len(labels)} labels, "
                             f"{len(scores)} scores")
        sx, sy = (1.0, 1.0) if scale is None else (float(scale[i][0]), float(scale[i][1]))
        boxes = boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        rles: list[dict] | None = None
        if "masks" in output:
            masks = output["masks"].detach().cpu().to(torch.float32)
            if masks.ndim == 4:  # torchvision: [N, 1, H, W]
                masks = masks[:, 0]
            if masks.shape[0] != len(labels):
                raise ValueError(f"output {i}: {masks.shape[0]} masks for {len(labels)} boxes")
            if (sx, sy) != (1.0, 1.0) and masks.shape[0]:
                size = (round(masks.shape[1] * sy), round(masks.shape[2] * sx))
                masks = F.interpolate(masks[:, None], size=size, mode="bilinear",
                                      align_corners=False)[:, 0]
            rles = _encode_masks(masks > MASK_THRESHOLD)
        for j in range(len(labels)):
            result: dict[str, Any] = {"image_id": int(image_id), "category_id": int(labels[j]),
                                      "bbox": xywh[j], "score": scores[j]}
            if rles is not None:
                result["segmentation"] = rles[j]
            results.append(result)
    return results
