"""The numbers a run's metrics.json reports, read out of its layout once, by the names the
tables and the regression guard use: top-1 and the pretext accuracies in percent, mAP in AP
points (COCO's, times 100, as `relvit.detection.evaluate` writes them)."""

from __future__ import annotations

from typing import Any


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def reported_numbers(metrics: dict[str, Any]) -> dict[str, float | None]:
    """best_top1 and last_top1 (classification), pretext_rel_acc and pretext_pos_acc (held-out,
    last epoch: was the pretext task learned?), box_mAP and mask_mAP (the last epoch's); None
    where the run has no such number."""
    last = metrics.get("last", {})
    last_map = metrics.get("last_map", {})
    return {"best_top1": metrics.get("best_top1"), "last_top1": metrics.get("last_top1"),
            "pretext_rel_acc": _percent(last.get("val_acc_rel")),
            "pretext_pos_acc": _percent(last.get("val_acc_pos")),
            "box_mAP": last_map.get("bbox", {}).get("mAP"),
            "mask_mAP": last_map.get("segm", {}).get("mAP")}
