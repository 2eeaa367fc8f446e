"""The numbers a run's metrics.json reports, read out of its layout once, by the names the
tables and the regression guard use: top-1 and the pretext accuracies in percent, mAP in AP
points (COCO's, times 100, as `relvit.detection.evaluate` writes them)."""

from __future__ import annotations

from typing import Any

from relvit.train.columns import VAL_POSITIONS, VAL_RELATIONS

TOP1_NUMBERS = ("best_top1", "last_top1")  # classification, in %
PRETEXT_NUMBERS = ("pretext_rel_acc", "pretext_pos_acc")  # pretraining's held-out accuracies, %
MAP_NUMBERS = ("box_mAP", "mask_mAP")  # detection, in AP points


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def reported_numbers(metrics: dict[str, Any]) -> dict[str, float | None]:
    """best_top1 and last_top1 (classification), pretext_rel_acc and pretext_pos_acc (held-out,
    last epoch: was the pretext task learned?), box_mAP and mask_mAP (the last epoch's); None
    where the run has no such number."""
    last = metrics.get("last", {})
    values = (metrics.get("best_top1"), metrics.get("last_top1"),
              _percent(last.get(VAL_RELATIONS)), _percent(last.get(VAL_POSITIONS)),
              last_map_scores(metrics, "bbox").get("mAP"),
              last_map_scores(metrics, "segm").get("mAP"))
    return dict(zip((*TOP1_NUMBERS, *PRETEXT_NUMBERS, *MAP_NUMBERS), values, strict=True))


def last_map_scores(metrics: dict[str, Any], iou_type: str) -> dict[str, float]:
    """A detection run's last evaluated epoch's COCO scores of one IoU type ("bbox" or "segm"):
    {"mAP", "mAP50", "mAP75", ...} as `relvit.detection.evaluate` names them; {} where the
    record has none."""
    return metrics.get("last_map", {}).get(iou_type, {})
